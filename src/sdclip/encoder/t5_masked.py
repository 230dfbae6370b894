"""Rows through a T5 with the tokenizer's attention mask (the T5-only families: Chroma, Wan, PixArt-Σ,
AuraFlow; `EncoderRole.masking`), and only as many positions as the result needs.

Each row is [tokens…, `</s>`, pad…]: its real length n is where the pads start. T5 with the mask passed
hides pad keys (the relative bias depends on distance only), so a real position's state depends on the
real tokens alone, however many pads follow:
- `zero_after` (Wan: states cut to the prompt's length then zero-padded, pipeline_wan.py:188-191; AuraFlow:
  states times the mask, pipeline_aura_flow.py:310-311): only the first n positions run; rows are grouped
  by length (a batch of 20-token captions runs 24 positions, not 512) and the rest is zeros;
- otherwise (Chroma, PixArt-Σ: every position's state is returned): a pad query attends only to the real
  keys, through the bias of its distance to them; once every such distance is past the last relative
  bucket's start (`saturation`: 91 positions for T5's 32 buckets / 128 max distance), every further pad has
  the same bias, the same input (the pad embedding), hence the same state. So a row runs up to its real
  length + that distance and the last state computed is copied to the rest: a 20-token Chroma caption runs
  ≈ 112 positions of its 512.
compel's down-weighting masks (RowBatch.masks) are combined with the real-token mask.

The real length a pass runs to is rounded up to one of ≈ 20 lengths (`bucket`; the extra positions are
masked keys, so the real states do not change): oneDNN keeps a compiled kernel per input shape, and passes at every real
length made a job's memory grow with its captions (Wan `--varlen`, 1,000 → 4,000 captions: +24% peak RSS).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sdclip.conventions.family import T5Masking
from sdclip.encoder.batching import RowBatch, RowCache, T5RowEncoder
from sdclip.encoder.t5 import T5Config, relative_buckets

#: rows of one pass differ in real length by at most this factor (plus `_SLACK` positions)
_GROUP = 1.25
_SLACK = 8
#: the finest step of the encoded lengths (`bucket`): lengths up to 64 run in multiples of 8
_STEP = 8


def real_lengths(ids: Tensor, pad_id: int) -> Tensor:
    """[R] positions up to and including the last non-pad id of each row (at least 1)."""
    L = ids.shape[1]
    real = ids != pad_id
    pos = torch.arange(1, L + 1, device=ids.device).expand_as(ids)
    return (pos * real).amax(dim=1).clamp(min=1)


def saturation(cfg: T5Config) -> int:
    """The smallest distance d from which every key d or more positions before a query falls in the same
    relative bucket (the last one): past it, the position bias no longer changes."""
    n = cfg.relative_attention_max_distance + 2
    row = relative_buckets(n, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)[-1].flip(0)
    last = int(row[-1])  # row[d]: bucket of a key d positions before the query
    return int((row != last).nonzero().max()) + 1 if bool((row != last).any()) else 0


def bucket(n: int, limit: int) -> int:
    """The positions a pass of rows up to n real positions runs: n rounded up to a multiple of an eighth of
    the next power of two (8 up to 64, then 16, 32, 64: 20 lengths up to 512; fewer than n/4 positions more
    than n, fewer than 8 up to 64), at most `limit`. A fixed small set of shapes, whatever the captions."""
    step = max(_STEP, (1 << max(0, n - 1).bit_length()) // 8)
    return min(limit, -(-n // step) * step)


def _groups(lengths: list[int]) -> list[list[int]]:
    """Row indices grouped by similar real length (sorted), so padding inside a pass stays small."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and lengths[i] <= _GROUP * lengths[out[-1][0]] + _SLACK:
            out[-1].append(i)
        else:
            out.append([i])
    return out


class MaskedT5RowEncoder(T5RowEncoder):
    """T5RowEncoder with the real-token mask passed to T5 and, where states after the prompt are zeros,
    only the real positions computed (length-bucketed)."""

    def __init__(self, encoder, masking: T5Masking, *, pad_id: int, key: tuple, cache: RowCache,  # noqa: ANN001
                 batch_size: int = 8):
        super().__init__(encoder, key=(*key, "masked", masking.zero_after), cache=cache, batch_size=batch_size)
        self.masking = masking
        self.pad_id = pad_id

    def _order(self, pending: list, batch: RowBatch) -> list:
        """Shortest rows first: a pass of `batch_size` rows then holds rows of one length, mostly, so passes
        are few and of few shapes (rows × positions), not split by length into passes of 1 … 8 rows."""
        def real(item: tuple) -> int:
            ids = batch.ids[item[1]]
            return next((len(ids) - i for i, t in enumerate(reversed(ids)) if t != self.pad_id), 1)

        return sorted(pending, key=real)

    def _pass(self, ids: Tensor, vectors: Tensor | None, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        R, L = ids.shape
        n = real_lengths(ids, self.pad_id)
        real = torch.arange(L, device=ids.device)[None, :] < n[:, None]
        full = real if mask is None else real & mask.to(device=ids.device, dtype=torch.bool)
        if not self.masking.zero_after:
            m = min(L, bucket(int(n.max()), L) + saturation(self.encoder.config))
            hidden = self.encoder(ids[:, :m], attention_mask=full[:, :m].long())
            if m == L:
                return hidden, None
            return torch.cat([hidden, hidden[:, -1:].expand(R, L - m, hidden.shape[-1])], dim=1), None
        out: Tensor | None = None
        for group in _groups(n.tolist()):
            rows = torch.tensor(group, device=ids.device)
            m = bucket(int(n[rows].max()), L)
            hidden = self.encoder(ids[rows, :m], attention_mask=full[rows, :m].long())
            if out is None:
                out = hidden.new_zeros(R, L, hidden.shape[-1])
            out[rows, :m] = hidden * real[rows, :m, None].to(hidden.dtype)
        return out, None
