"""One batch per encoder for a whole request, and the slot table that says where everything sits in it.

A request's rows — every part of every prompt and negative, the masked re-encodings a weighting formula
asks for, and the empty prompt where a weighting or padding rule needs it (else it is encoded on first use,
`Encoded.empty`) — go through each encoder in one batched call (`RowEncoder` dedupes identical rows and serves repeats from its cache). The plan is data: nobody
slices results back by index arithmetic; `Encoded` answers "the rows of part k" from the slot table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import torch
from torch import Tensor

from sdclip.layout.rows import Rows
from sdclip.tokenizer.stream import BOS, EOS

#: (embedding name, vector index): how a textual-inversion vector is named across a request
VectorName = tuple[str, int]


@dataclass(frozen=True)
class PartSlots:
    """Where one part's rows sit in an encoder's batch: `count` rows from `start`, then `masks` × `count`
    masked re-encodings (re-encoding k of row r at start + count·(1 + k) + r)."""

    start: int
    count: int
    masks: int = 0


@dataclass(frozen=True)
class EncoderPlan:
    """Rows for one encoder (ids past the encoder's table are textual-inversion vectors), their attention
    masks (None = attend everything), and the slot table."""

    ids: tuple[tuple[int, ...], ...]
    masks: tuple[tuple[int, ...] | None, ...]
    slots: dict[int, VectorName]  #: vector id in these rows → its name (cache keys outlive the numbering)
    parts: tuple[PartSlots, ...]
    empty: int | None  #: row of the empty prompt (None: not planned; `Encoded.empty` encodes it on first use)
    empty_ids: tuple[int, ...] = ()  #: the empty prompt's row


def vector_table(streams_vectors: Sequence[Mapping[int, VectorName]]) -> dict[VectorName, int]:
    """One number per distinct textual-inversion vector across a request (row k of its vector matrix)."""
    table: dict[VectorName, int] = {}
    for vectors in streams_vectors:
        for name in vectors.values():
            table.setdefault(name, len(table))
    return table


def empty_row(length: int, pad_id: int) -> tuple[int, ...]:
    """The empty prompt: [BOS, EOS, pad…]."""
    return (BOS, EOS) + (pad_id,) * (length - 2)


class Reencoding(Protocol):
    """What a weighting formula asks to be encoded besides a part's rows (compel: the rows with a fragment
    masked out of attention; ADV_CLIP_emb: the rows with some tokens replaced): K re-encodings of the rows."""

    def __len__(self) -> int: ...

    def rows(self, ids: Sequence[Sequence[int]], k: int) -> tuple[list[tuple[int, ...]], list[tuple[int, ...] | None]]:
        """Re-encoding k of these rows: (ids, attention mask per row or None)."""
        ...


def plan_batch(
    rows: Sequence[Rows],
    vectors: Sequence[Mapping[int, VectorName]],
    reencode: Sequence[Reencoding | None],
    table: Mapping[VectorName, int],
    *,
    vocab: int,
    pad_id: int,
    length: int,
    empty_ids: Sequence[int] | None = None,
    with_empty: bool = True,
) -> EncoderPlan:
    """The batch of one encoder: part k's rows (its stream's vector ids renumbered to `vocab + table[name]`),
    then the K re-encodings `reencode[k]` asks for, then the empty row. A re-encoded row identical to a row
    (nothing masked or replaced) dedupes in the encoder.
    empty_ids: the empty prompt's row where it is not CLIP's [BOS, EOS, pad…] (T5: [</s>, pad…]).
    with_empty: put the empty row in the batch (a batch with no rows always has it)."""
    slots = {vocab + g: name for name, g in table.items()}
    ids: list[tuple[int, ...]] = []
    masks: list[tuple[int, ...] | None] = []
    parts = []
    for part_rows, part_vectors, plan in zip(rows, vectors, reencode):
        renumbered = [tuple(vocab + table[part_vectors[t]] if t in part_vectors else t for t in row) for row in part_rows.ids]
        k = 0 if plan is None else len(plan)
        parts.append(PartSlots(len(ids), len(renumbered), k))
        ids.extend(renumbered)
        masks.extend([None] * len(renumbered))
        for j in range(k):
            again, again_masks = plan.rows(renumbered, j)  # type: ignore[union-attr]
            ids.extend(again)
            masks.extend(again_masks)
    empty_ids = tuple(empty_ids) if empty_ids is not None else empty_row(length, pad_id)
    empty = None
    if with_empty or not ids:
        empty = len(ids)
        ids.append(empty_ids)
        masks.append(None)
    return EncoderPlan(tuple(ids), tuple(masks), slots, tuple(parts), empty, empty_ids)


@dataclass(frozen=True)
class Encoded:
    """One encoder's output for a request: hidden [R, L, D], pooled [R, P] or None, and the plan's slot
    table. Read it by part, never by index arithmetic."""

    hidden: Tensor
    pooled: Tensor | None
    plan: EncoderPlan
    constant: bool = False  #: not an encoding (SD3 without its T5: zeros, as diffusers): never weighted
    #: encodes the empty row where the plan left it out (through the same runner and cache)
    encode_empty: Callable[[], Tensor] | None = field(default=None, compare=False, repr=False)

    @cached_property
    def empty(self) -> Tensor:
        """The empty prompt's encoding [L, D]: from the batch, or encoded now where it was not planned."""
        if self.plan.empty is not None:
            return self.hidden[self.plan.empty]
        if self.encode_empty is None:
            raise ValueError("this batch has no empty row and no way to encode one")
        return self.encode_empty()

    def rows(self, part: int) -> Tensor:
        """Part's rows [n, L, D]."""
        s = self.plan.parts[part]
        return self.hidden[s.start : s.start + s.count]

    def reencoded(self, part: int) -> Tensor | None:
        """Part's masked re-encodings [K, n, L, D], or None."""
        s = self.plan.parts[part]
        if not s.masks:
            return None
        block = self.hidden[s.start + s.count : s.start + s.count * (1 + s.masks)]
        return block.reshape(s.masks, s.count, *block.shape[1:])

    def pooled_rows(self, part: int) -> Tensor | None:
        """Part's pooled vectors [n, P], or None for an encoder whose pooled vector is not used."""
        if self.pooled is None:
            return None
        s = self.plan.parts[part]
        return self.pooled[s.start : s.start + s.count]


def vector_matrix(table: Mapping[VectorName, int], lookup, width: int, dtype: torch.dtype, device) -> Tensor | None:  # noqa: ANN001
    """[K, D] textual-inversion vectors of a request for one encoder: row table[name] = lookup(name)."""
    if not table:
        return None
    out = torch.empty(len(table), width, dtype=dtype)
    for name, g in table.items():
        out[g] = lookup(name)
    return out.to(device)
