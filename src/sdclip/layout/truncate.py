"""`truncate`: one row; what does not fit is dropped and reported (diffusers' default). `long` is the same
at Long-CLIP's 248 positions."""

from __future__ import annotations

from dataclasses import replace

from sdclip.layout.builder import RowBuilder, dropped_text, run_lengths
from sdclip.layout.rows import Rows
from sdclip.layout.spec import LONG_CLIP_LENGTH, LayoutSpec
from sdclip.tokenizer.stream import TokenStream


def truncate(stream: TokenStream, spec: LayoutSpec) -> Rows:
    b = RowBuilder(stream, spec)
    if stream.runs:  # token by token: an embedding's vector run is kept or dropped whole
        members: list[int] = []
        runs = run_lengths(stream)
        i = 0
        while i < len(stream):
            n = runs.get(i, 1)
            if len(members) + n > spec.capacity:
                break
            members.extend(range(i, i + n))
            i += n
        b.emit(members)
    else:  # what the loop keeps where no run is: the first `capacity` tokens, without a step per token
        i = min(len(stream), spec.capacity)
        b.emit(range(i))
    dropped = list(range(i, len(stream)))
    notes = (f"truncated: {len(dropped)} of {len(stream)} tokens dropped",) if dropped else ()
    return b.finish(len(stream), dropped_text(stream, dropped), notes)


def long(stream: TokenStream, spec: LayoutSpec) -> Rows:
    """Long-CLIP: one row of 248 positions (truncate at 248)."""
    return truncate(stream, replace(spec, mode="truncate", length=LONG_CLIP_LENGTH))
