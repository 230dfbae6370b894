"""The encoders' finiteness check: one error, raised by the runners themselves (CLIP and T5), so every entry
point — the Python API, `pipeline_kwargs`, `encode`, `embed`, `serve` — refuses a NaN/inf encoding with the
same line naming the encoder, the first block where it happens and the dtype (issue 24, 0c).

Cost: one `isfinite().all()` of the output per pass (a read of [rows, tokens, width]: < 0.5% of a pass); only
when it fails are the layers run again, one by one, to name the first block that went non-finite.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sdclip.encoder.loading.checkpoint import CheckpointError

__all__ = ["NonFiniteError", "dtype_advice", "first_non_finite", "non_finite_message"]

#: dtype → (the library's word, the CLI's --dtype value)
_NAMES = {torch.float32: ("float32", "fp32"), torch.bfloat16: ("bfloat16", "bf16"), torch.float16: ("float16", "fp16")}


class NonFiniteError(CheckpointError):
    """An encoder's output turned NaN or infinite; nothing was returned. A CheckpointError (a ValueError):
    the weights, or an embedding's vectors, cannot be computed with in the dtype asked for."""


def dtype_advice(dtype: torch.dtype, cli: bool = False) -> str:
    """What to try instead of `dtype` — never the dtype already in use. cli: name `--dtype` values."""

    def name(d: torch.dtype) -> str:
        return f"--dtype {_NAMES[d][1]}" if cli else _NAMES[d][0]

    if dtype == torch.float16:
        return f"float16 holds only ±65,504: try {name(torch.bfloat16)} or {name(torch.float32)}"
    if dtype == torch.bfloat16:
        return f"try {name(torch.float32)}"
    return ("the values are too large even in float32: the weights (or an embedding's vectors) are damaged or not "
            "made for this encoder")


def first_non_finite(states: Sequence[torch.Tensor]) -> int | None:
    """Index of the first tensor holding NaN or inf (None: all finite)."""
    return next((i for i, h in enumerate(states) if not bool(torch.isfinite(h).all())), None)


def non_finite_message(encoder: str, where: str, dtype: torch.dtype) -> str:
    name = _NAMES.get(dtype, (str(dtype).removeprefix("torch."),))[0]
    return f"{encoder}: the encoding turns NaN/inf at {where} in {name}; {dtype_advice(dtype)}. Nothing was returned"
