"""One traced generation of an SD3 / Flux / Chroma pipeline, for `sdclip attention --model <MM-DiT folder>`.

SD3, Flux and Chroma are conditioned by sdclip (the flags' preset and options, as for UNet models; Chroma's
T5 padding mask included). Guidance defaults to each pipeline's own: SD3 7.0, Flux's distilled guidance 3.5
(Flux reads no negative prompt without true CFG, which this command leaves off), Chroma 3.0.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from sdclip.attention.maps import AttentionMaps
from sdclip.attention.mmdit import check_request, mmdit_kind, trace_mmdit

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
    conditioner_options: dict | None = None,
    trace_steps: Collection[int] | None = None,
    blocks: str = "both",
    reading: str = "softmax",
    callback: Callable | None = None,
    started: Callable[[], object] | None = None,
) -> tuple[AttentionMaps, object, tuple[int, int]]:
    """(maps of `reading`, the PIL image, (W, H)) of one traced generation; one-line errors for what cannot be
    traced (checked before the prompt is encoded). callback: diffusers' callback_on_step_end; started():
    called once the prompt is encoded, as denoising begins."""
    import torch

    kind = mmdit_kind(pipe)
    width, height = size or default_size(pipe)
    check_request(pipe, steps=steps, width=width, height=height)
    readings = ("softmax",) if reading == "softmax" else ("softmax", reading)
    # entered before the encoders are read and the prompt encoded (the transformer takes no part in either),
    # so that a bad block choice is refused before that work
    with trace_mmdit(pipe, prompt=prompt, negative=negative, blocks=blocks, steps=trace_steps, readings=readings) as tc:
        tc.conditioner = cond = _conditioner(pipe, kind, conditioner_options)
        kwargs = _prompt_kwargs(pipe, kind, cond, prompt, negative)
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
        ).images[0]
    return tc.maps(reading=reading), image, (width, height)


def _conditioner(pipe: object, kind: str, options: dict | None) -> object:
    """sdclip's Conditioner over the pipeline's encoders."""
    from sdclip.pipelines import conditioner_from_pipeline

    return conditioner_from_pipeline(pipe, **(options or {}))


def _prompt_kwargs(pipe: object, kind: str, cond: object, prompt: str, negative: str | None) -> dict:
    if cond is None:
        return {"prompt": prompt, "negative_prompt": negative or ""}
    from sdclip.pipelines import pipeline_kwargs

    kwargs = pipeline_kwargs(pipe, prompt, negative, conditioner=cond)  # type: ignore[arg-type]
    if kind == "flux":  # no true CFG: the negative is not read
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("negative_")}
    return kwargs
