"""Rows → hidden states: batched, deduplicated and cached encoder calls.

Every row of a request (positive, negative, the empty prompt, compel's masked re-encodings) goes through
one encoder in as few batched passes as possible; identical rows are encoded once; an LRU cache keyed by
the model's fingerprint, the encoder, the layer, the row's ids (textual-inversion slots by name, vector index
and a digest of the vector itself: `EmbeddingLibrary.add(replace=True)` may give a name new vectors) and its
attention mask makes a repeated negative prompt nearly free.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sdclip.conventions.clip_skip import LayerSelect
from sdclip.encoder.model import CLIPTextEncoder
from sdclip.encoder.plan import Encoded, EncoderPlan

Key = tuple


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class RowCache:
    """A bounded LRU of encoded rows: key → (hidden [L, D], pooled [P] | None).

    Rows served again (the empty prompt's, a repeated negative) are evicted after rows never served: a small
    cache (a job's, sdclip.jobs.work.JOB_ROW_CACHE) filled by each batch's new rows kept re-encoding the
    empty row every batch (5 extra passes in 8 Wan batches). At most half the rows are held that way.
    Shared by every call of a Conditioner, so by every thread that calls it: each operation holds one lock
    (an OrderedDict's move_to_end / popitem are not safe under contention). Values are never mutated."""

    def __init__(self, max_rows: int = 1024):
        self.max_rows = max_rows
        self._data: OrderedDict[Key, tuple[Tensor, Tensor | None]] = OrderedDict()
        #: keys served at least once, least recently served first (a subset of _data's)
        self._hot: OrderedDict[Key, None] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def get(self, key: Key) -> tuple[Tensor, Tensor | None] | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.stats.misses += 1
                return None
            self._data.move_to_end(key)
            self._hot[key] = None
            self._hot.move_to_end(key)
            while len(self._hot) > self.max_rows // 2:  # the least recently served ones age like the rest
                self._hot.popitem(last=False)
            self.stats.hits += 1
            return value

    def put(self, key: Key, value: tuple[Tensor, Tensor | None]) -> None:
        if self.max_rows <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_rows:
                self._evict()

    def _evict(self) -> None:
        """Drop the least recently used row never served again (the oldest row if every row was)."""
        for key in self._data:
            if key not in self._hot:
                del self._data[key]
                return
        key, _ = self._data.popitem(last=False)
        self._hot.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._hot.clear()

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class RowBatch:
    """Rows for one encoder: ids from the encoder's table size on are row (id − size) of `vectors`,
    named (embedding, vector index) by `slots` so that cache keys outlive this request's numbering."""

    ids: Sequence[Sequence[int]]
    slots: dict[int, tuple[str, int]]
    vectors: Tensor | None = None
    masks: Sequence[Sequence[int] | None] | None = None


class RowEncoder:
    """Encodes rows with one text encoder at one layer, through the cache."""

    def __init__(
        self,
        encoder: CLIPTextEncoder,
        select: LayerSelect,
        *,
        pooled: bool,
        key: tuple,
        cache: RowCache,
        batch_size: int = 32,
    ):
        self.encoder = encoder
        self.select = select
        self.pooled = pooled
        self.key = key  #: (model fingerprint, encoder index): what makes this encoder's rows distinct
        self.cache = cache
        self.batch_size = batch_size

    def _row_key(self, ids: Sequence[int], slots: dict[int, tuple[str, int]], mask: Sequence[int] | None) -> Key:
        named = tuple(slots.get(t, t) for t in ids) if slots else tuple(ids)
        return (*self.key, self.select.skip, self.select.final_norm, self.pooled, named, tuple(mask) if mask else None)

    @torch.no_grad()
    def encode(self, batch: RowBatch) -> tuple[Tensor, Tensor | None]:
        """hidden [R, L, D] and pooled [R, P] (or None) for every row of the batch, in order."""
        masks = batch.masks or [None] * len(batch.ids)
        keys = [self._row_key(ids, batch.slots, m) for ids, m in zip(batch.ids, masks)]
        todo: dict[Key, int] = {}
        found: dict[Key, tuple[Tensor, Tensor | None]] = {}
        for i, k in enumerate(keys):
            if k in found or k in todo:
                continue
            hit = self.cache.get(k)
            if hit is None:
                todo[k] = i
            else:
                found[k] = hit
        pending = self._order(list(todo.items()), batch)
        # masked rows (compel's re-encodings) share the pass: the others get an all-ones mask, which
        # encodes exactly like none (causal attention either way)
        device = self._device()
        for lo in range(0, len(pending), self.batch_size):
            chunk = pending[lo : lo + self.batch_size]
            ids = torch.tensor([list(batch.ids[i]) for _, i in chunk], dtype=torch.long, device=device)
            kwargs = {}
            if any(masks[i] is not None for _, i in chunk):
                rows = [list(masks[i]) if masks[i] is not None else [1] * ids.shape[1] for _, i in chunk]
                kwargs["attention_mask"] = torch.tensor(rows, device=device)
            hidden_out, pooled_out = self._pass(ids, batch.vectors, kwargs.get("attention_mask"))
            for j, (k, _) in enumerate(chunk):
                value = (hidden_out[j], pooled_out[j] if pooled_out is not None else None)
                found[k] = value
                self.cache.put(k, value)
        hidden = torch.stack([found[k][0] for k in keys])
        pooled = torch.stack([found[k][1] for k in keys]) if self.pooled else None  # type: ignore[misc]
        return hidden, pooled

    def _device(self) -> torch.device:
        return self.encoder.token_embedding.weight.device

    def _order(self, pending: list[tuple[Key, int]], batch: RowBatch) -> list[tuple[Key, int]]:
        """The order rows to encode are cut into passes of `batch_size` (results are found by key)."""
        return pending

    def _pass(self, ids: Tensor, vectors: Tensor | None, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        kwargs = {} if mask is None else {"attention_mask": mask}
        out = self.encoder(ids, self.select, vectors=vectors, pooled=self.pooled, **kwargs)
        return out.hidden, out.pooled

    def run(self, plan: EncoderPlan, vectors: Tensor | None = None) -> Encoded:
        """Encode a planned batch (sdclip.encoder.plan) in one pass; the result is read by part."""
        masks = plan.masks if any(m is not None for m in plan.masks) else None
        hidden, pooled = self.encode(RowBatch(plan.ids, content_slots(plan.slots, vectors), vectors, masks))
        return Encoded(hidden, pooled, plan, encode_empty=lambda: self.encode(RowBatch([plan.empty_ids], {}))[0][0])


def content_slots(slots: dict[int, tuple], vectors: Tensor | None) -> dict[int, tuple]:
    """Each vector slot named by (embedding, index, digest of the vector's values): a cached row is found
    again only while its vectors are the same, whatever the library did to the name in between. Slot ids
    count up from the first vector id, row (id − first) of `vectors`."""
    if not slots or vectors is None:
        return slots
    first = min(slots)
    rows = vectors.detach().to("cpu", torch.float32).contiguous()
    return {t: (*name, hashlib.blake2b(rows[t - first].numpy().tobytes(), digest_size=16).hexdigest())
            for t, name in slots.items()}


class T5RowEncoder(RowEncoder):
    """Rows through a T5 encoder (sdclip.encoder.t5): the last hidden state [R, N, D], no pooled vector,
    no layer choice, no textual-inversion vectors; batched, deduplicated and cached like CLIP rows. An
    attention mask (compel's down-weighting) hides keys, as transformers' T5 does."""

    def __init__(self, encoder, *, key: tuple, cache: RowCache, batch_size: int = 8):  # noqa: ANN001
        super().__init__(encoder, LayerSelect(), pooled=False, key=key, cache=cache, batch_size=batch_size)

    def _device(self) -> torch.device:
        return self.encoder.final_norm.device

    def _pass(self, ids: Tensor, vectors: Tensor | None, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return self.encoder(ids, attention_mask=mask), None


class ZeroRows(RowEncoder):
    """A missing encoder that diffusers replaces by zeros (SD3 without text_encoder_3: [B, N, 4096])."""

    def __init__(self, width: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        self.width, self.dtype, self.device = width, dtype, torch.device(device)
        self.pooled = False

    def run(self, plan: EncoderPlan, vectors: Tensor | None = None) -> Encoded:
        R, L = len(plan.ids), len(plan.ids[0])
        zeros = torch.zeros(R, L, self.width, dtype=self.dtype, device=self.device)
        return Encoded(zeros, None, plan, constant=True, encode_empty=lambda: zeros.new_zeros(L, self.width))
