"""The layout stage's output: fixed-size rows of slots, ready for the encoder."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rows:
    """R rows of L slots each (L = 77, or 248 for Long-CLIP), BOS/EOS/pad included. Frozen: a layout
    builds it once (`RowBuilder.finish`) and every later stage only reads it.

    - tokens[r][s]: index into the TokenStream of the token in that slot, -1 for BOS/EOS/pad.
    - keep[r][s]: whether the assembled sequence keeps that slot (False only where sliding windows
      overlap: see layout.window); chunk/truncate keep every slot.
    - eos[r]: slot of the row's first EOS (where the pooled vector is read).
    - token_count: the prompt's tokens as AUTOMATIC1111's counter counts them.
    - dropped: the source text that did not make it into any row ("" if nothing was dropped).
    - notes: human-readable reports (what compress removed, where a comma backtrack moved text).
    """

    ids: list[list[int]] = field(default_factory=list)
    weights: list[list[float]] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    keep: list[list[bool]] = field(default_factory=list)
    eos: list[int] = field(default_factory=list)
    length: int = 77
    token_count: int = 0
    dropped: str = ""
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)
