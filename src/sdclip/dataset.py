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
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset

from sdclip.jobs.manifest import Manifest


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
        self._indices: list[torch.Tensor] = []
        total = 0
        for rec in self.shards:
            with safe_open(str(self.folder / rec["file"]), framework="pt") as f:
                self._indices.append(f.get_tensor("index"))
            self._starts.append(total)
            total += rec["rows"]
        self._len = total
        self._handles: dict[int, object] = {}
        self.family: str | None = self.manifest.info.get("family") if isinstance(self.manifest.info.get("family"), str) else None
        self._offsets: dict[int, torch.Tensor] = {}  # varlen shards: each row's first position

    @property
    def complete(self) -> bool:
        return self.manifest.complete

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
        for s, rec in enumerate(self.shards):
            if rec["start"] <= index < rec["stop"]:
                pos = torch.searchsorted(self._indices[s], index).item()
                if pos < len(self._indices[s]) and int(self._indices[s][pos]) == index:
                    return self._row(s, int(pos))
        raise KeyError(f"input index {index} is not in {self.folder}")

    def __iter__(self) -> Iterator[dict]:
        for i in range(self._len):
            yield self[i]

    def _row(self, s: int, j: int) -> dict:
        from safetensors import safe_open

        f = self._handles.get(s)
        if f is None:
            f = self._handles[s] = safe_open(str(self.folder / self.shards[s]["file"]), framework="pt")
        return self._item(f, s, j, int(self._indices[s][j]))

    def _item(self, f, s: int, j: int, index: int) -> dict:  # noqa: ANN001
        from sdclip.jobs.varlen import KEY, LENGTHS, unpack

        out: dict = {"index": index}
        names = list(f.keys())
        for name in names:
            if name not in ("index", KEY):
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
