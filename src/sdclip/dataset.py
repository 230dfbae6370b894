"""Read an `sdclip embed` output folder: `sdclip.dataset.open(DIR)`.

>>> ds = sdclip.dataset.open("embeds/")
>>> len(ds), ds[0]["prompt_embeds"].shape        # rows in input order; skipped (invalid) captions absent
>>> ds.get(41)                                   # by input index (line 42 of a .txt)
>>> torch.utils.data.DataLoader(ds, batch_size=32, num_workers=4)

Rows are read lazily from memory-mapped safetensors shards, so a dataset far larger than memory is fine;
the open file handles are not pickled, so DataLoader workers reopen them.

An item is what a training step of its family reads: `prompt_embeds` [N, D] (rebuilt with zeros after its
length from a `--varlen` job, sdclip.jobs.varlen), `pooled_prompt_embeds` [P] where the family has one,
`attention_mask` [N] where its pipeline takes one, `txt_ids` zeros [N, 3] for Flux (FluxPipeline's text
ids), `token_counts`, `caption_sha256`. `ds.empty` is the dataset's cached empty caption (caption dropout).

A repeated caption is stored once (sdclip.jobs.shards.SHARD_VERSION): a reference row's item is its source
row's tensors with its own `index`, `caption_sha256` (checked equal to the source's: a stale reference is an
error, never another caption's tensors) and, with `--caption-lines`, its own `image_index` / `caption_line`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset

from sdclip.jobs.manifest import Manifest
from sdclip.jobs.shards import REF, ROW_KEYS, SOURCE


class EmbeddingDataset(Dataset):
    """A torch Dataset of {"index", "prompt_embeds" [N, D], "pooled_prompt_embeds" [P] (where the family has one)}."""

    def __init__(self, folder: str | Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        if self.manifest.config.get("format") != "safetensors":
            raise ValueError(f"{self.folder}: a --format {self.manifest.config.get('format')} job has no shards to read")
        from sdclip.jobs.shards import shard_name

        # the manifest is untrusted: a shard is read only under its own name in this folder
        self.shards = [r for r in sorted(self.manifest.shards.values(), key=lambda r: r["start"])
                       if r.get("file") and r["file"] == shard_name(int(r["shard"]))]
        self._starts: list[int] = []
        #: per shard: every row's input index, sorted; the stored rows' (`index`); and, where the shard has
        #: reference rows, each sorted row's place: j ≥ 0 stored row j, −1 − r reference row r (None: stored)
        self._indices: list[torch.Tensor] = []
        self._stored: list[torch.Tensor] = []
        self._slots: list[torch.Tensor | None] = []
        refs_of: list[tuple[torch.Tensor, torch.Tensor]] = []
        for rec in self.shards:
            with safe_open(str(self.folder / rec["file"]), framework="pt") as f:
                stored = f.get_tensor("index")
                refs = f.get_tensor(REF + "index") if REF + "index" in f.keys() else stored[:0]
                sources = f.get_tensor(SOURCE) if len(refs) else stored[:0]
            self._stored.append(stored)
            refs_of.append((refs, sources))
        self._ranges = [int(rec["start"]) for rec in self.shards]
        #: reference rows whose source row is not written yet (an unfinished job: killed, or Ray's shards out
        #: of order): index → source. Not rows of this dataset until a re-run writes their source.
        self.waiting: dict[int, int] = {}
        total = 0
        for stored, (refs, sources) in zip(self._stored, refs_of):
            if len(refs):
                ready = self._stored_rows(sources)
                self.waiting.update(zip(refs[~ready].tolist(), sources[~ready].tolist()))
                slot = -1 - torch.arange(len(refs))
                every = torch.cat([stored, refs[ready]])
                order = torch.argsort(every)
                self._indices.append(every[order])
                self._slots.append(torch.cat([torch.arange(len(stored)), slot[ready]])[order])
            else:
                self._indices.append(stored)
                self._slots.append(None)
            self._starts.append(total)
            total += len(self._indices[-1])
        self._len = total
        self._handles: dict[int, object] = {}
        self.family: str | None = self.manifest.info.get("family") if isinstance(self.manifest.info.get("family"), str) else None
        self._offsets: dict[int, torch.Tensor] = {}  # varlen shards: each row's first position

    def _stored_rows(self, sources: torch.Tensor) -> torch.Tensor:
        """bool [r]: which input indices are stored rows of the shards read (a reference's source written)."""
        found = torch.zeros(len(sources), dtype=torch.bool)
        if not self.shards:
            return found
        starts = torch.tensor(self._ranges, dtype=torch.int64)
        stops = torch.tensor([int(rec["stop"]) for rec in self.shards], dtype=torch.int64)
        shard = torch.searchsorted(starts, sources, right=True) - 1
        inside = (shard >= 0) & (sources < stops[shard.clamp(min=0)])
        for t in torch.unique(shard[inside]).tolist():
            here = inside & (shard == t)
            found[here] = torch.isin(sources[here], self._stored[t])
        return found

    @property
    def complete(self) -> bool:
        """The job finished: every valid caption is a row. An unfinished job's dataset holds the rows written
        so far (a repeated caption's row once its first row's shard is written too: `waiting` lists the rest)."""
        return self.manifest.complete and not self.waiting

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"row {i} out of range for {self._len} rows")
        s = bisect.bisect_right(self._starts, i) - 1
        return self._row(s, i - self._starts[s])

    def get(self, index: int) -> dict:
        """The row of input index `index` (KeyError if that caption was skipped or is not written yet)."""
        s = self._shard_of(index)
        if s is not None:
            pos = int(torch.searchsorted(self._indices[s], index))
            if pos < len(self._indices[s]) and int(self._indices[s][pos]) == index:
                return self._row(s, pos)
        if index in self.waiting:
            raise KeyError(self._unwritten(index, self.waiting[index]))
        raise KeyError(f"input index {index} is not in {self.folder}")

    def _unwritten(self, index: int, source: int) -> str:
        return (f"input index {index} repeats the caption of index {source}, which is not in {self.folder} "
                "(yet: re-run the job to finish it)")

    def _shard_of(self, index: int) -> int | None:
        s = bisect.bisect_right(self._ranges, index) - 1
        return s if s >= 0 and index < int(self.shards[s]["stop"]) else None

    def __iter__(self) -> Iterator[dict]:
        for i in range(self._len):
            yield self[i]

    def _handle(self, s: int):  # noqa: ANN202
        from safetensors import safe_open

        f = self._handles.get(s)
        if f is None:
            f = self._handles[s] = safe_open(str(self.folder / self.shards[s]["file"]), framework="pt")
        return f

    def _row(self, s: int, j: int) -> dict:
        """Row j (in index order) of shard s: stored, or a reference to a stored row."""
        slot = j if self._slots[s] is None else int(self._slots[s][j])  # type: ignore[index]
        f = self._handle(s)
        if slot >= 0:
            return self._item(f, s, slot, int(self._stored[s][slot]))
        r = -1 - slot
        index, source = int(self._indices[s][j]), int(f.get_slice(SOURCE)[r : r + 1][0])
        own = {key: f.get_slice(REF + key)[r : r + 1][0] for key in ROW_KEYS[1:] if REF + key in f.keys()}
        t = self._shard_of(source)
        pos = int(torch.searchsorted(self._stored[t], source)) if t is not None else 0
        if t is None or pos >= len(self._stored[t]) or int(self._stored[t][pos]) != source:
            raise KeyError(self._unwritten(index, source))
        item = self._item(self._handle(t), t, pos, source)
        if "caption_sha256" in own and not torch.equal(own["caption_sha256"], item.get("caption_sha256")):
            raise ValueError(f"{self.folder}: input index {index} refers to index {source}, which now holds "
                             "another caption: re-run the job (it re-encodes both)")
        item.update(own, index=index)
        return item

    def _item(self, f, s: int, j: int, index: int) -> dict:  # noqa: ANN001
        from sdclip.jobs.varlen import KEY, LENGTHS, unpack

        out: dict = {"index": index}
        names = list(f.keys())
        for name in names:
            if name not in ("index", KEY) and not name.startswith(REF):
                out[name] = f.get_slice(name)[j : j + 1][0]
        if KEY in names:  # --varlen: the padded row, rebuilt
            if s not in self._offsets:
                lengths = f.get_tensor(LENGTHS).to(torch.int64)
                self._offsets[s] = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
            lo, hi = int(self._offsets[s][j]), int(self._offsets[s][j + 1])
            slots = int(f.metadata()["slots"])
            out["prompt_embeds"] = unpack(f.get_slice(KEY)[lo:hi], hi - lo, slots)
        if self._flux():
            out["txt_ids"] = torch.zeros(out["prompt_embeds"].shape[0], 3)
        return out

    def _flux(self) -> bool:
        """FluxPipeline's text ids go with each row (the family table's Flux recipe)."""
        from sdclip.conventions.family import FAMILIES

        fam = FAMILIES.get(self.family or "")
        return fam is not None and fam.recipe == "flux"

    @property
    def empty(self) -> dict | None:
        """The dataset's cached empty caption (one item, `index` −1) for caption dropout, or None."""
        from safetensors import safe_open

        from sdclip.jobs.driver import EMPTY

        rec = self.manifest.info.get("empty")
        if not isinstance(rec, dict) or rec.get("file") != EMPTY or not (self.folder / EMPTY).is_file():
            return None
        with safe_open(str(self.folder / EMPTY), framework="pt") as f:
            return self._item(f, -1, 0, -1)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state


def open(folder: str | Path) -> EmbeddingDataset:  # noqa: A001 - `sdclip.dataset.open(DIR)` reads naturally
    """Open an `sdclip embed` output folder for reading."""
    return EmbeddingDataset(folder)
