"""One traced generation of an SD3 / Flux / Chroma pipeline, for `sdclip attention --model <MM-DiT folder>`.

SD3, Flux and Chroma are conditioned by sdclip (the flags' preset and options, as for UNet models; Chroma's
T5 padding mask included). Guidance defaults to each pipeline's own: SD3 7.0, Flux's distilled guidance 3.5,
Chroma 3.0.

How each pipeline reads the negative prompt is a table (sdclip.attention.negatives): SD3 and Chroma through
CFG, Flux only with true CFG, when the transformer runs twice per step, the conditional pass first (diffusers
0.42.1 pipeline_flux.py lines 900-929). The maps are read from the conditional pass
only (sdclip.attention.mmdit: the second call of a step repeats its timestep and is not read).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from sdclip.attention.maps import AttentionMaps
from sdclip.attention.mmdit import check_request, mmdit_kind, trace_mmdit
from sdclip.attention.negatives import negative_read, true_cfg_kwargs

#: each pipeline's own default guidance_scale (diffusers 0.42)
GUIDANCE = {"sd3": 7.0, "flux": 3.5, "chroma": 3.0}


def default_size(pipe: object) -> tuple[int, int]:
    """The pipeline's own default image size (W, H): its default_sample_size (or the transformer's sample
    size) × the VAE factor."""
    side = getattr(pipe, "default_sample_size", None) or pipe.transformer.config.sample_size  # type: ignore[attr-defined]
    side = int(side) * int(getattr(pipe, "vae_scale_factor", 8))
    return side, side


def generate(
    pipe: object,
    *,
    prompt: str,
    negative: str | None,
    steps: int,
    seed: int,
    size: tuple[int, int] | None = None,
    guidance: float | None = None,
    true_cfg: float | None = None,
    conditioner: object = None,
    conditioner_options: dict | None = None,
    trace_steps: Collection[int] | None = None,
    blocks: str = "both",
    reading: str = "softmax",
    callback: Callable | None = None,
    started: Callable[[], object] | None = None,
) -> tuple[AttentionMaps, object, tuple[int, int]]:
    """(maps of `reading`, the PIL image, (W, H)) of one traced generation; one-line errors for what cannot be
    traced (checked before the prompt is encoded). true_cfg: FluxPipeline's true_cfg_scale (with `negative`;
    maps from the conditional pass). conditioner: sdclip's Conditioner to encode with (default: one over the
    pipeline's own encoders, with conditioner_options). callback: diffusers' callback_on_step_end; started(): called once the
    prompt is encoded, as denoising begins."""
    import torch

    kind = mmdit_kind(pipe)
    width, height = size or default_size(pipe)
    check_request(pipe, steps=steps, width=width, height=height)
    extra = true_cfg_kwargs(kind, true_cfg, negative)
    readings = ("softmax",) if reading == "softmax" else ("softmax", reading)
    # entered before the encoders are read and the prompt encoded (the transformer takes no part in either),
    # so that a bad block choice is refused before that work
    with trace_mmdit(pipe, prompt=prompt, negative=negative, blocks=blocks, steps=trace_steps, readings=readings) as tc:
        tc.conditioner = cond = conditioner or _conditioner(pipe, kind, conditioner_options)
        kwargs = _prompt_kwargs(pipe, cond, prompt, negative, read=negative_read(kind, true_cfg))
        if started is not None:
            started()
        image = pipe(  # type: ignore[operator]
            **kwargs,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE[kind] if guidance is None else guidance,
            generator=torch.Generator().manual_seed(seed),
            width=width,
            height=height,
            output_type="pil",
            callback_on_step_end=callback,
            **extra,
        ).images[0]
    return tc.maps(reading=reading), image, (width, height)


def _conditioner(pipe: object, kind: str, options: dict | None) -> object:
    """sdclip's Conditioner over the pipeline's encoders."""
    from sdclip.pipelines import conditioner_from_pipeline

    return conditioner_from_pipeline(pipe, **(options or {}))


def _prompt_kwargs(pipe: object, cond: object, prompt: str, negative: str | None, *, read: bool) -> dict:
    """sdclip's prompt_embeds, and the negative_* ones where the pipeline reads them (`read`)."""
    if cond is None:
        return {"prompt": prompt, "negative_prompt": negative or ""}
    from sdclip.pipelines import pipeline_kwargs

    kwargs = pipeline_kwargs(pipe, prompt, negative, conditioner=cond)  # type: ignore[arg-type]
    if not read:  # Flux without true CFG: a negative there would switch nothing on, so it is not handed over
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("negative_")}
    return kwargs
