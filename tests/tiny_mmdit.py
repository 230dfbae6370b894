"""Tiny random MM-DiT pipelines for the attention-map tests: SD3.5-like (2×2 patches, RMS q/k norms, a dual
attention layer, the last block context_pre_only), Flux (joint + single-stream blocks, RoPE) and Chroma
(Flux's attention with a T5 padding mask, CFG as two calls). Built from configs, no files, no network.

Text encoders and tokenizers are tests/tiny_pipelines' (real CLIP BPE, the tiny T5 vocabulary); the VAE
halves the image once, so a 32×32 image is a 16×16 latent: SD3's 2×2 patches and Flux's 2×2 packing make
an 8×8 grid of image tokens.
"""

from __future__ import annotations

import torch

from tiny_models import tiny_family
from tiny_pipelines import T5_SIZES, T5_WIDTH, _flow_scheduler, _flow_vae, clip_tokenizer, clip_with_projection, t5_tokenizer

IMAGE = 32
HEADS, HEAD_DIM = 2, 8


def sd3(seed: int = 0, layers: int = 2):  # noqa: ANN201
    """StableDiffusion3Pipeline: CLIP-L (projected), CLIP-G, T5; an SD3.5-shaped transformer."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from tiny_t5 import tiny_t5

    l = clip_with_projection("clip-vit-l-14", seed, 128)
    (g,) = tiny_family("sdxl", seed=seed + 1).models[1:]
    t5 = tiny_t5(seed=seed + 2, **T5_SIZES)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=IMAGE // 2, patch_size=2, in_channels=4, num_layers=layers, attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS, caption_projection_dim=HEADS * HEAD_DIM, joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=l.config.projection_dim + g.config.projection_dim, out_channels=4,
        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=_flow_scheduler(), vae=_flow_vae(),
        text_encoder=l, tokenizer=clip_tokenizer(), text_encoder_2=g, tokenizer_2=clip_tokenizer("!"),
        text_encoder_3=t5, tokenizer_3=t5_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux(seed: int = 0, layers: int = 2, single: int = 2):  # noqa: ANN201
    """FluxPipeline: CLIP-L (pooled), T5 (512 slots); joint and single-stream blocks."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from tiny_t5 import tiny_t5

    (l,) = tiny_family("sd1", seed=seed).models
    t5 = tiny_t5(seed=seed + 2, **T5_SIZES)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=layers, num_single_layers=single, attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS, joint_attention_dim=T5_WIDTH, pooled_projection_dim=l.config.hidden_size,
        axes_dims_rope=[2, 2, 4],
    )
    pipe = FluxPipeline(
        transformer=transformer, scheduler=_flow_scheduler(), vae=_flow_vae(),
        text_encoder=l, tokenizer=clip_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer(512),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def chroma(seed: int = 0, layers: int = 1, single: int = 2):  # noqa: ANN201
    """ChromaPipeline: T5 only (masked past the first pad), its own prompt encoding, CFG as two calls."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    from tiny_t5 import tiny_t5

    t5 = tiny_t5(seed=seed + 2, **T5_SIZES)
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=layers, num_single_layers=single, attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS, joint_attention_dim=T5_WIDTH, axes_dims_rope=(2, 2, 4),
        approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=1,
    )
    pipe = ChromaPipeline(
        scheduler=_flow_scheduler(), vae=_flow_vae(), text_encoder=t5, tokenizer=t5_tokenizer(512), transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, seed: int = 0, steps: int = 2, size: int = IMAGE, **kwargs):  # noqa: ANN001, ANN201
    """`steps` denoising steps at size², latent output (the exact numbers the tests compare), fixed seed."""
    return pipe(
        num_inference_steps=steps, height=size, width=size, output_type="latent",
        generator=torch.Generator().manual_seed(seed), **kwargs,
    ).images
