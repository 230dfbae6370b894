"""Cross-attention maps of diffusers UNet pipelines (SD1 / SD2 / SDXL) with sdclip's conditioning:
one map per slot of the (long) conditioning sequence, mapped back to tokens, words and rows; and the
image → text attention of MM-DiT pipelines (SD3 / SD3.5, Flux, Chroma: `trace_mmdit`).

Needs torch and diffusers (the `attention` extra)."""

from sdclip.attention.maps import AttentionMaps, UnknownWordError
from sdclip.attention.slots import KINDS, Slot, slot_table
from sdclip.attention.trace import Trace, trace

__all__ = ["KINDS", "AttentionMaps", "MMDiTTrace", "Slot", "Trace", "UnknownWordError", "slot_table", "trace", "trace_mmdit"]


def __getattr__(name: str) -> object:
    """trace_mmdit / MMDiTTrace on first use: they import diffusers' transformer models (seconds), which UNet
    tracing never needs."""
    if name in ("MMDiTTrace", "trace_mmdit"):
        from sdclip.attention import mmdit

        return getattr(mmdit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
