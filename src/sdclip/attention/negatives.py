"""How each MM-DiT pipeline reads a negative prompt, and the `--true-cfg-scale` checks (torch-free: the
command checks before loading a pipeline, without importing the tracers).

SD3 and Chroma run real CFG through `guidance_scale`; FluxPipeline reads a negative only with true CFG,
`true_cfg_scale > 1` beside a negative (diffusers 0.42.1 pipeline_flux.py lines 768-771:
`do_true_cfg = true_cfg_scale > 1 and has_neg_prompt`); its guidance_scale is distilled guidance.
"""

from __future__ import annotations

#: the pipeline argument through which each kind reads a negative prompt: its CFG scale (SD3, Chroma) or
#: FluxPipeline's true CFG, off unless true_cfg_scale > 1 (its guidance_scale is the distilled guidance)
NEGATIVE_READ = {"sd3": "guidance_scale", "chroma": "guidance_scale", "flux": "true_cfg_scale"}


def check_true_cfg(true_cfg: float | None, negative: str | None) -> None:
    """A true CFG scale without a negative prompt is refused (diffusers would then silently run none); a check
    that needs no pipeline, so the command makes it before loading one."""
    if true_cfg is not None and negative is None:
        raise ValueError("--true-cfg-scale needs --negative (true CFG runs only beside a negative prompt; an empty "
                         "one is --negative '')")


def true_cfg_kwargs(kind: str, true_cfg: float | None, negative: str | None) -> dict:
    """`{"true_cfg_scale": x}` for a pipeline that has true CFG, {} without one; a one-line error for a scale
    given to a pipeline without it, or without a negative prompt."""
    check_true_cfg(true_cfg, negative)
    if true_cfg is None:
        return {}
    if NEGATIVE_READ[kind] != "true_cfg_scale":
        raise ValueError(f"--true-cfg-scale is FluxPipeline's true CFG; this {kind} pipeline runs CFG through "
                         "--guidance (its negative is read whenever guidance > 1)")
    return {"true_cfg_scale": true_cfg}


def negative_read(kind: str, true_cfg: float | None) -> bool:
    """Whether the pipeline reads a negative prompt in this generation."""
    if NEGATIVE_READ[kind] == "true_cfg_scale":
        return true_cfg is not None and true_cfg > 1
    return True
