"""What a trainer format is, and the helpers its writers share (atomic files, masks, dtypes)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are made: `sdclip --help` and inspect stay torch-free
    import torch

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
class Format:
    name: str
    families: tuple[str, ...]
    #: name endings of its files (what --overwrite / --verify may touch)
    suffixes: tuple[str, ...]
    #: "images": files under the image folder; "out": in --out
    root: str
    writer: Callable[[RowContext], None]
    #: a check of the job beyond the family (rows per caption, source kind, options)
    checker: Callable[[str, str, int, dict], None] | None = None
    #: it names files after images (needs an image folder)
    per_image: bool = True

    def check(self, family: str, source_format: str, rows: int, options: dict) -> None:
        if self.per_image and source_format != "images":
            refuse(f"--format {self.name} names its files after the images: --captions must be an image folder")
        if self.checker is not None:
            self.checker(family, source_format, rows, options)

    def root_of(self, images: Path, out: Path) -> Path:
        return images if self.root == "images" else out

    def write(self, ctx: RowContext) -> dict[str, str]:
        if ctx.texts:
            self.writer(ctx)
        return ctx.written


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


def npz_bytes(**arrays) -> bytes:  # noqa: ANN003
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def stem(rel: str) -> str:
    import os

    return os.path.splitext(rel)[0]
