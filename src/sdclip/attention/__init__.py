"""Cross-attention maps of diffusers UNet pipelines (SD1 / SD2 / SDXL) with sdclip's conditioning:
one map per slot of the (long) conditioning sequence, mapped back to tokens, words and rows.

Needs torch and diffusers (the `attention` extra)."""

from sdclip.attention.maps import AttentionMaps, UnknownWordError
from sdclip.attention.slots import KINDS, Slot, slot_table
from sdclip.attention.trace import Trace, trace

__all__ = ["KINDS", "AttentionMaps", "Slot", "Trace", "UnknownWordError", "slot_table", "trace"]
