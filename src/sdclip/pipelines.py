"""diffusers integration: conditioning for a loaded StableDiffusionPipeline / StableDiffusionXLPipeline.

    from sdclip.pipelines import pipeline_kwargs
    image = pipe(**pipeline_kwargs(pipe, "a (red:1.3) fox, BREAK forest", "blurry", preset="a1111")).images[0]

The pipeline's own text encoders are read into sdclip's encoder (weights mapped and checked as a saved
file would be), so clip skip, long prompts, weighting and caching work the same as everywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from sdclip.conditioner import Conditioner
from sdclip.encoder import encoders_from_modules
from sdclip.conventions.presets import Options


def conditioner_from_pipeline(
    pipe: object = None,
    *,
    text_encoder: object = None,
    text_encoder_2: object = None,
    preset: str = "diffusers",
    **overrides: object,
) -> Conditioner:
    """A Conditioner over a pipeline's text encoder(s) (or the encoders passed by name)."""
    if pipe is not None:
        text_encoder = getattr(pipe, "text_encoder", None)
        text_encoder_2 = getattr(pipe, "text_encoder_2", None)
    models = tuple(m for m in (text_encoder, text_encoder_2) if m is not None)
    if not models:
        raise ValueError("no text encoder: pass a diffusers pipeline or text_encoder=")
    loaded = encoders_from_modules(models)
    return Conditioner(loaded.encoders, loaded.family, Options.preset(preset, **overrides), fingerprint=loaded.fingerprint)


def pipeline_kwargs(
    pipe: object,
    prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None = None,
    *,
    conditioner: Conditioner | None = None,
    preset: str = "diffusers",
    **overrides: object,
) -> dict[str, Tensor]:
    """`prompt_embeds`, `negative_prompt_embeds` (and SDXL's pooled pair) for `pipe(...)`, in the
    pipeline's dtype and device. Reuse `conditioner=` across calls to keep its cache warm."""
    cond = conditioner or conditioner_from_pipeline(pipe, preset=preset, **overrides)
    kwargs = cond(prompt, negative_prompt).diffusers_kwargs()
    dtype = getattr(pipe, "dtype", None)
    device = getattr(pipe, "device", None)
    return {k: v.to(device=device, dtype=dtype) for k, v in kwargs.items()}
