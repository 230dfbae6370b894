"""What a trainer format is: per family a table of the keys its files hold (`FamilyTable`), and one writer
path (`write_rows`) that reads the table — a format module is data (keys, shapes, flags, file naming) plus
the few functions only its trainer needs (a cache name's hash). Atomic files, masks and dtypes live here."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are made: `sdclip --help` and inspect stay torch-free
    import torch

from sdclip.conventions.family import FAMILIES
from sdclip.jobs.formats.owned import claim
from sdclip.jobs.manifest import JobError
from sdclip.jobs.shards import write_bytes_atomic


def refuse(message: str) -> None:
    raise JobError(message)


@dataclass
class RowContext:
    """One shard's rows as a format sees them."""

    family: str
    widths: list[int]  #: each role's feature width (sdclip.jobs.encode.CaptionEncoder.widths)
    targets: tuple[int, ...]  #: slots of each token block
    images: Path  #: --captions (an image folder for the per-image formats)
    out: Path  #: --out
    wheres: list[str]  #: each row's `where` (an image's relative path, "line 7")
    texts: list[str]  #: each row's caption
    tensors: dict[str, torch.Tensor]  #: the rows (sdclip.jobs.encode keys), [n, …]
    written: dict[str, str] = field(default_factory=dict)  #: relative path → sha256

    def save(self, root: Path, rel: str, data: bytes) -> None:
        """Write one file atomically under root and record its sha256."""
        write_bytes_atomic(root / rel, data)
        self.written[rel] = hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Key:
    """One entry of a trainer's file: its name and what it holds (a `SOURCES` entry) for one caption."""

    name: str  #: the key in the file; `{dtype}` is replaced by the tensor's dtype name (musubi-tuner)
    source: str  #: embeds | features | first_block | last_block | pooled | mask | text_ids | varlen | flag
    role: int = 0  #: the role a per-role source reads (its feature columns, its tokenizer mask)
    batch: bool = False  #: keeps a batch axis of 1 ([1, …]: `encode_prompt` of one caption)
    value: bool = False  #: a flag's value (source "flag")


#: a metadata value standing for the row's caption
CAPTION = "{caption}"


@dataclass(frozen=True)
class RowJoin:
    """How a trainer holds a caption of K CLIP rows (a `FamilyTable` option; without one: a single row).

    sdclip's layout named `chunk_style` already makes the trainer's rows and joins them into `slots(K)`
    (sdclip.layout); a job's row holds that sequence first, then the empty caption's encoding up to 77·K
    (sdclip.jobs.encode), which the trainer's file does not have: the writer keeps the first `slots(K)`."""

    flag: str  #: the trainer's own option (named in refusals)
    max_rows: int  #: the most rows the trainer holds
    chunk_style: str  #: the sdclip layout whose rows and join are the trainer's (conventions.presets)
    preset: str  #: the preset that selects that layout (named in refusals)
    per_row: int  #: slots each row adds to the joined sequence
    once: int  #: slots added once

    def slots(self, rows: int) -> int:
        return rows * self.per_row + self.once


@dataclass(frozen=True)
class FamilyTable:
    """What one trainer's file holds for one family."""

    tag: str  #: the family's part of the file name (kohya `_sd3_te.npz`, musubi `fk`, SimpleTuner `sd3`)
    keys: tuple[Key, ...]  #: in the order they are written (npz / pickle order is the bytes' order)
    #: the file's metadata (musubi-tuner's), in order; a value `CAPTION` is replaced by the caption
    meta: Mapping[str, str] | None = None
    #: the trainer tokenizes T5 padded to max_sequence_length (diffusers' layout), as sdclip must store it
    fixed_t5: bool = False
    #: the one max_sequence_length the trainer encodes (musubi-tuner's FLUX.1 Kontext: 512); None: any
    t5_positions: int | None = None
    #: how it holds a caption of several CLIP rows (`--max-rows K`); None: one row only
    join: RowJoin | None = None


@dataclass(frozen=True)
class Row:
    """One caption's tensors, as every source reads them."""

    family: str
    widths: list[int]
    targets: tuple[int, ...]
    tensors: dict  #: sdclip.jobs.encode keys, [n, …]
    i: int
    slots: int | None = None  #: the trainer's sequence is the row's first `slots` (a `RowJoin`); None: all

    @property
    def embeds(self):  # noqa: ANN201 (torch.Tensor)
        return self.tensors["prompt_embeds"][self.i][: self.slots]

    def block(self, b: int) -> tuple[int, int]:
        """Slots [start, stop) of token block b in this row (the last block runs to the row's end)."""
        start = sum(self.targets[:b])
        stop = self.embeds.shape[0] if b == len(self.targets) - 1 else start + self.targets[b]
        return start, stop

    def block_of(self, role: int) -> int:
        return next(b for b, roles in enumerate(FAMILIES[self.family].sequence_blocks) if role in roles)


def _embeds(row: Row, key: Key):  # noqa: ANN202
    return row.embeds


def _pooled(row: Row, key: Key):  # noqa: ANN202
    return row.tensors["pooled_prompt_embeds"][row.i]


def _flag(row: Row, key: Key) -> bool:
    return key.value


def _features(row: Row, key: Key):  # noqa: ANN202
    """Role `key.role`'s feature columns of the whole sequence (sd-scripts' SDXL hidden_state1 / 2)."""
    a = sum(row.widths[: key.role])
    return row.embeds[:, a : a + row.widths[key.role]]


def _first_block(row: Row, key: Key):  # noqa: ANN202
    """The first token block, its roles' features side by side (sd-scripts' SD3 `lg_out`: L ‖ G)."""
    start, stop = row.block(0)
    width = sum(row.widths[r] for r in FAMILIES[row.family].sequence_blocks[0])
    return row.embeds[start:stop, :width]


def _last_block(row: Row, key: Key):  # noqa: ANN202
    start, stop = row.block(len(row.targets) - 1)
    return row.embeds[start:stop]


def _mask(row: Row, key: Key):  # noqa: ANN202
    """The tokenizer's mask of role `key.role` over its block's slots (int64)."""
    start, stop = row.block(row.block_of(key.role))
    return mask(int(row.tensors["token_counts"][row.i][key.role]), stop - start)


def _text_ids(row: Row, key: Key):  # noqa: ANN202
    """Flux's text position ids: zeros [N, 3] float32."""
    import torch

    return torch.zeros(row.embeds.shape[0], 3, dtype=torch.float32)


def _varlen(row: Row, key: Key):  # noqa: ANN202
    """The caption's states without padding: the mask's length, else the first role's token count."""
    t = row.tensors
    n = int(t["attention_mask"][row.i].sum()) if "attention_mask" in t else int(t["token_counts"][row.i][0])
    return row.embeds[:n]


#: what a key can hold, by name
SOURCES: dict[str, Callable[[Row, Key], object]] = {
    "embeds": _embeds,
    "features": _features,
    "first_block": _first_block,
    "last_block": _last_block,
    "pooled": _pooled,
    "mask": _mask,
    "text_ids": _text_ids,
    "varlen": _varlen,
    "flag": _flag,
}


def dtype_to_str(dtype: torch.dtype) -> str:
    """musubi-tuner's `utils.model_utils.dtype_to_str` (its keys end with it)."""
    return str(dtype).split(".")[-1]


def row_items(table: FamilyTable, row: Row) -> dict:
    """A caption's entries, named and shaped as the table says, in its order."""
    out = {}
    for key in table.keys:
        value = SOURCES[key.source](row, key)
        if key.batch:
            value = value[None]  # type: ignore[index]
        name = key.name.format(dtype=dtype_to_str(value.dtype)) if "{dtype}" in key.name else key.name  # type: ignore[attr-defined]
        out[name] = value
    return out


@dataclass(frozen=True)
class Format:
    name: str
    #: family → what its files hold (the families it can hold are this table's keys)
    tables: Mapping[str, FamilyTable]
    #: name endings of its files (what --overwrite / --verify may touch)
    suffixes: tuple[str, ...]
    #: "images": files under the image folder; "out": in --out
    root: str
    #: (image's relative path or `where`, caption, family, its table) → the file's path under the root
    naming: Callable[[str, str, str, FamilyTable], str]
    #: (entries, metadata or None) → the file's bytes
    encode: Callable[[dict, dict | None], bytes]
    #: a check of the job beyond the family (rows per caption, source kind, options)
    checker: Callable[[str, str, int, dict], None] | None = None
    #: it names files after images (needs an image folder)
    per_image: bool = True
    #: two captions named alike: "write" (each its own write), "once" (content-addressed: the first),
    #: "refuse" (the trainer would read one file for both)
    repeats: str = "write"
    #: who reads the files (its one-line refusals name it)
    trainer: str = ""

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.tables)

    def check(self, family: str, source_format: str, rows: int, options: dict) -> None:
        if self.per_image and source_format != "images":
            refuse(f"--format {self.name} names its files after the images: --captions must be an image folder")
        if self.checker is not None:
            self.checker(family, source_format, rows, options)
        table = self.tables[family]
        if table.fixed_t5:
            fixed_t5(options, self.name)
        n = table.t5_positions
        if n is not None and options.get("max_sequence_length") not in (None, n):
            refuse(f"--format {self.name}: {self.trainer} encodes {family}'s T5 at {n} positions only "
                   f"(--max-sequence-length {n})")

    def root_of(self, images: Path, out: Path) -> Path:
        return images if self.root == "images" else out

    def write(self, ctx: RowContext) -> dict[str, str]:
        if ctx.texts:
            write_rows(self, ctx)
        return ctx.written


def write_rows(fmt: Format, ctx: RowContext) -> None:
    """The one writer path: each caption's file, named and filled as the format's table for the family says."""
    table = fmt.tables[ctx.family]
    root = fmt.root_of(ctx.images, ctx.out)
    slots = None if table.join is None else table.join.slots(ctx.targets[0] // FAMILIES[ctx.family].length)
    seen: dict[str, str] = {}
    for i, (where, caption) in enumerate(zip(ctx.wheres, ctx.texts)):
        name = fmt.naming(where, caption, ctx.family, table)
        if name in seen and fmt.repeats == "once":
            continue
        if name in seen and fmt.repeats == "refuse":
            refuse(f"--format {fmt.name}: {seen[name]} and {where} both cache as {name} ({fmt.trainer} names caches "
                   "by file name only): rename one")
        seen[name] = where
        meta = None if table.meta is None else {k: caption if v == CAPTION else v for k, v in table.meta.items()}
        row = Row(ctx.family, ctx.widths, ctx.targets, ctx.tensors, i, slots)
        data = fmt.encode(row_items(table, row), meta)
        claim(ctx.out, root, name)  # journaled before it is written; a file sdclip did not write is refused
        ctx.save(root, name, data)


def one_row(family: str, rows: int, trainer: str) -> None:
    if rows != 1:
        refuse(f"--format {trainer} needs 77 CLIP slots per caption (--max-rows 1), as {trainer} encodes {family}")


def fixed_t5(options: dict, trainer: str) -> None:
    """The T5 block must be padded to max_sequence_length (diffusers' layout), as the trainers tokenize it."""
    if options.get("t5_length", "max") != "max":
        refuse(f"--format {trainer} stores T5 padded to max_sequence_length: use --preset diffusers "
               "(its T5 length is max_sequence_length)")


def mask(count: int, length: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tokenizer's attention mask: ones over the text's positions, zeros after (int64 by default)."""
    import torch

    return (torch.arange(length) < count).to(dtype or torch.int64)


def numpy_of(t: torch.Tensor):  # noqa: ANN201
    """sd-scripts stores bf16 outputs as float32 (numpy has no bfloat16); other dtypes as they are."""
    import torch

    return (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy()


def npz_bytes(items: dict, metadata: dict | None = None) -> bytes:
    """`np.savez` (uncompressed) of the entries, tensors through `numpy_of` (sd-scripts' files)."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **{k: v if isinstance(v, bool) else numpy_of(v) for k, v in items.items()})
    return buf.getvalue()


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def torch_bytes(items: dict, metadata: dict | None = None) -> bytes:
    """`torch.save` of the entries, each cloned so a row never carries its whole batch's storage."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.clone() for k, v in items.items()}, buf)
    return buf.getvalue()


def stem(rel: str) -> str:
    import os

    return os.path.splitext(rel)[0]
