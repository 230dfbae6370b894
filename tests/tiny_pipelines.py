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


# ---- SD3 and Flux ---------------------------------------------------------------------------------
#: the tiny T5 of SD3 / Flux pipelines: wider than tiny L ‖ G (128 + 192 = 320) so SD3 zero-pads them
T5_WIDTH = 384
T5_SIZES = dict(d_model=T5_WIDTH, d_kv=32, num_heads=4, d_ff=256, num_layers=2)


@functools.lru_cache(maxsize=None)
def t5_tokenizer_dir() -> Path:
    """A transformers-saved T5 tokenizer folder (tokenizer.json), trained once per test session."""
    from tiny_t5 import build_tokenizer

    root = Path(tempfile.mkdtemp(prefix="sdclip-t5tok-"))
    return build_tokenizer(root)["json"]


def t5_tokenizer(model_max_length: int | None = None):  # noqa: ANN201
    """transformers' T5TokenizerFast over the tiny vocabulary (FLUX.1's tokenizer_2 says model_max_length 512)."""
    from transformers import T5TokenizerFast

    tok = T5TokenizerFast.from_pretrained(str(t5_tokenizer_dir()))
    if model_max_length is not None:
        tok.model_max_length = model_max_length
    return tok


def clip_with_projection(role: str, seed: int, projection_dim: int):  # noqa: ANN201
    """A random tiny CLIPTextModelWithProjection (SD3's CLIP-L has a projection, unlike SDXL's)."""
    from transformers import CLIPTextModelWithProjection

    from tiny_models import randomize_, tiny_config

    torch.manual_seed(seed)
    return randomize_(CLIPTextModelWithProjection(tiny_config(role, projection_dim=projection_dim)).eval(), seed)


def _flow_vae() -> AutoencoderKL:
    """The tiny VAE with SD3 / Flux's latent shift (their pipelines read `shift_factor`)."""
    vae = _vae()
    vae.register_to_config(shift_factor=0.0609, scaling_factor=1.5035)
    return vae


def _flow_scheduler():  # noqa: ANN202
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler()


def sd3_pipeline(seed: int = 0, t5: bool = True):  # noqa: ANN201
    """StableDiffusion3Pipeline: random tiny CLIP-L (with projection), CLIP-G, T5 (384 wide) or none."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from tiny_t5 import tiny_t5

    l = clip_with_projection("clip-vit-l-14", seed, 128)
    (g,) = tiny_family("sdxl", seed=seed + 1).models[1:]
    text_encoder_3 = tiny_t5(seed=seed + 2, **T5_SIZES) if t5 else None
    pooled = l.config.projection_dim + g.config.projection_dim
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=IMAGE_SIZE // 2, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=pooled, out_channels=4,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=_flow_scheduler(), vae=_flow_vae(),
        text_encoder=l, tokenizer=clip_tokenizer(), text_encoder_2=g, tokenizer_2=clip_tokenizer("!"),
        text_encoder_3=text_encoder_3, tokenizer_3=t5_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_pipeline(seed: int = 0):  # noqa: ANN201
    """FluxPipeline: random tiny CLIP-L (pooled only, no projection) and T5 (384 wide)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from tiny_t5 import tiny_t5

    (l,) = tiny_family("sd1", seed=seed).models
    text_encoder_2 = tiny_t5(seed=seed + 2, **T5_SIZES)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=T5_WIDTH, pooled_projection_dim=l.config.hidden_size,
        axes_dims_rope=[2, 2, 4],
    )
    pipe = FluxPipeline(
        transformer=transformer, scheduler=_flow_scheduler(), vae=_flow_vae(),
        text_encoder=l, tokenizer=clip_tokenizer(), text_encoder_2=text_encoder_2, tokenizer_2=t5_tokenizer(512),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
