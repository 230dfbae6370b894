"""Tiny random-weight diffusers pipelines (SD1 and SDXL), built from configs: no network, no files kept.

The text encoders are tests/tiny_models' random transformers CLIP models; the tokenizers are real CLIP BPE
tokenizers written from the packaged vocabulary (SDXL's tokenizer_2 pads with "!" as the real one does).
UNet and VAE are the smallest configs diffusers accepts (a few thousand parameters), so a 2-step 16×16
generation takes well under a second on CPU.

Widths follow the text encoders: the UNet's cross-attention width is the conditioning width (SD1: 128;
SDXL: 128 + 192 = 320) and SDXL's added-condition input is the pooled width (80) + 6 time ids × 8.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTokenizer

from tiny_models import tiny_family

#: image side in pixels; the VAE below halves it once, the UNet once more
IMAGE_SIZE = 16
TIME_EMBED_DIM = 8


@functools.lru_cache(maxsize=None)
def clip_tokenizer(pad: str = "<|endoftext|>") -> CLIPTokenizer:
    """A real CLIP BPE tokenizer (transformers' own class, as diffusers loads it); built once per pad."""
    from clip_files import write_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(str(write_tokenizer(Path(tmp) / "tok", pad)))


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=IMAGE_SIZE,
    )


def _unet(cross_attention_dim: int, pooled_dim: int | None = None) -> UNet2DConditionModel:
    sdxl = {}
    if pooled_dim is not None:
        sdxl = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=pooled_dim + 6 * TIME_EMBED_DIM,
            use_linear_projection=True,
        )
    return UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
        **sdxl,
    )


def _scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


def sd1_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """StableDiffusionPipeline with a random tiny CLIP-L stand-in (pads with EOS, like the real one)."""
    fam = tiny_family("sd1", seed=seed)
    (text_encoder,) = fam.models
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=_unet(text_encoder.config.hidden_size),
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """StableDiffusionXLPipeline with random tiny L (pad EOS) and G (pad "!" = id 0, with projection)."""
    fam = tiny_family("sdxl", seed=seed)
    text_encoder, text_encoder_2 = fam.models
    width = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
    torch.manual_seed(seed)
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer("!"),
        unet=_unet(width, text_encoder_2.config.projection_dim),
        scheduler=_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, seed: int = 0, **kwargs):  # noqa: ANN001, ANN201
    """2 denoising steps at IMAGE_SIZE², numpy output, fixed seed."""
    return pipe(
        num_inference_steps=2,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    ).images
