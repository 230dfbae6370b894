"""diffusers integration: conditioning for a loaded StableDiffusion(XL)Pipeline, StableDiffusion3Pipeline
or FluxPipeline.

    from sdclip.pipelines import pipeline_kwargs
    image = pipe(**pipeline_kwargs(pipe, "a (red:1.3) fox, BREAK forest", "blurry", preset="a1111")).images[0]

The pipeline's own text encoders are read into sdclip's encoders (weights mapped and checked as a saved
file would be), so clip skip, long prompts, weighting and caching work the same as everywhere else. SD3 /
Flux: the T5 tokenizer is the pipeline's own (tokenizer_3 / tokenizer_2); an SD3 pipeline without
text_encoder_3 gets zeros [B, N, joint_attention_dim] for T5, as diffusers does. Chroma / Wan / PixArt-Σ /
AuraFlow pipelines (by class): their `text_encoder` (T5 or umT5) and `tokenizer`; the kwargs carry the
attention masks where the pipeline takes them (sdclip.assemble.t5_masks).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

from torch import Tensor

from sdclip.conditioner import Conditioner
from sdclip.conventions.presets import Options
from sdclip.encoder import encoders_from_modules

#: the LLM families' pipelines (sdclip.encoder.loading.llm.PIPELINES; transformers only where one is used)
LLM_PIPELINES = ("QwenImagePipeline", "ZImagePipeline", "Lumina2Pipeline", "Lumina2Text2ImgPipeline", "Flux2Pipeline",
                 "Flux2KleinPipeline")


def t5_family(pipe: object) -> str | None:
    """"sd3" / "flux" for a pipeline with a T5 prompt path (by its components), else None."""
    if pipe is None:
        return None
    if hasattr(pipe, "text_encoder_3") or hasattr(pipe, "tokenizer_3"):
        return "sd3"
    for name in ("text_encoder_2", "tokenizer_2"):
        part = getattr(pipe, name, None)
        if part is not None and type(part).__name__.startswith("T5"):
            return "flux"
    return None


def _t5_tokenizer(tok: object):  # noqa: ANN202
    """sdclip's T5 tokenizer from a transformers one (saved and read back: the same files, the same ids)."""
    from sdclip.tokenizer.t5 import T5Tokenizer

    if tok is None:
        raise ValueError("the pipeline has no T5 tokenizer (tokenizer_3 / tokenizer_2)")
    with tempfile.TemporaryDirectory(prefix="sdclip-t5tok-") as tmp:
        tok.save_pretrained(tmp)
        return T5Tokenizer.from_folder(tmp)


def conditioner_from_pipeline(
    pipe: object = None,
    *,
    text_encoder: object = None,
    text_encoder_2: object = None,
    preset: str = "diffusers",
    **overrides: object,
) -> Conditioner:
    """A Conditioner over a pipeline's text encoder(s) (or the CLIP encoders passed by name)."""
    if pipe is not None and type(pipe).__name__ in LLM_PIPELINES:  # Qwen-Image, Z-Image, Lumina 2
        from sdclip.encoder.loading.llm import from_pipeline

        llm = from_pipeline(pipe)
        return Conditioner(llm.encoders, llm.family, Options.preset(preset, **overrides),  # type: ignore[union-attr]
                           fingerprint=llm.fingerprint, tokenizers=llm.tokenizers)  # type: ignore[union-attr]
    from sdclip.encoder.loading import t5_families

    only = t5_families.pipeline_object_family(pipe)  # Chroma, Wan, PixArt-Σ, AuraFlow: text_encoder + tokenizer
    if only is not None:
        loaded = t5_families.encoders_from_pipeline(pipe, only)
        return Conditioner(loaded.encoders, only, Options.preset(preset, **overrides),
                           t5_tokenizer=_t5_tokenizer(getattr(pipe, "tokenizer", None)), fingerprint=loaded.fingerprint)
    fam = t5_family(pipe)
    if fam is not None:
        from sdclip.encoder.loading.sd3_flux import encoders_from_pipeline

        loaded = encoders_from_pipeline(pipe, fam)
        tok = getattr(pipe, "tokenizer_3" if fam == "sd3" else "tokenizer_2", None)
        transformer = getattr(pipe, "transformer", None)
        width = getattr(getattr(transformer, "config", None), "joint_attention_dim", None)
        return Conditioner(loaded.encoders, fam, Options.preset(preset, **overrides), t5_tokenizer=_t5_tokenizer(tok),
                           fingerprint=loaded.fingerprint, t5_width=width)
    if pipe is not None:
        text_encoder = getattr(pipe, "text_encoder", None)
        text_encoder_2 = getattr(pipe, "text_encoder_2", None)
    models = tuple(m for m in (text_encoder, text_encoder_2) if m is not None)
    if not models:
        raise ValueError("no text encoder: pass a diffusers pipeline or text_encoder=")
    loaded = encoders_from_modules(models)
    return Conditioner(loaded.encoders, loaded.family, Options.preset(preset, **overrides), fingerprint=loaded.fingerprint)


def _takes(pipe: object, name: str) -> bool:
    """Whether `pipe(...)` has a `name` argument (any name where its call takes **kwargs, or it is not a callable
    with a signature)."""
    import inspect

    call = getattr(type(pipe), "__call__", None)
    try:
        params = inspect.signature(call).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def pipeline_kwargs(
    pipe: object,
    prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None = None,
    *,
    prompt_2: str | Sequence[str] | None = None,
    prompt_3: str | Sequence[str] | None = None,
    negative_prompt_2: str | Sequence[str] | None = None,
    negative_prompt_3: str | Sequence[str] | None = None,
    conditioner: Conditioner | None = None,
    preset: str = "diffusers",
    **overrides: object,
) -> dict[str, Tensor]:
    """`prompt_embeds`, `negative_prompt_embeds` (and the pooled pair of SDXL / SD3 / Flux) for `pipe(...)`,
    in the pipeline's dtype and device. Reuse `conditioner=` across calls to keep its cache warm. Flux uses
    the negative only with `true_cfg_scale > 1`."""
    cond = conditioner or conditioner_from_pipeline(pipe, preset=preset, **overrides)
    kwargs = cond(prompt, negative_prompt, prompt_2=prompt_2, prompt_3=prompt_3, negative_2=negative_prompt_2,
                  negative_3=negative_prompt_3).diffusers_kwargs()
    kwargs = {k: v for k, v in kwargs.items() if _takes(pipe, k)}  # Flux.2 [dev] takes no negative
    dtype = getattr(pipe, "dtype", None)
    device = getattr(pipe, "device", None)
    # an integer mask (PixArt-Σ's, AuraFlow's) keeps its dtype, as the pipeline's own encode_prompt returns it
    def moved(v: Tensor) -> Tensor:
        return v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)

    # Z-Image takes a list of [n_i, D] tensors: each one moved
    return {k: [moved(t) for t in v] if isinstance(v, list) else moved(v) for k, v in kwargs.items()}
