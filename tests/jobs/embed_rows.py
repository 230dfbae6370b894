"""What the embed tests share: every row of an `sdclip embed` folder as `sdclip.dataset.open` reads it (a
repeated caption's reference row resolved to its source's tensors), stacked per key in input order, which the
tests compare with their oracles; a captions file; the kernel's file-size limit a child process writes under."""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import torch

import sdclip.dataset


def read_rows(out: Path) -> dict[str, torch.Tensor]:
    items = list(sdclip.dataset.open(out))
    return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in items[0]}


def write_txt(path: Path, captions: list[str]) -> Path:
    path.write_text("".join(c + "\n" for c in captions), encoding="utf-8")
    return path


def file_size_limit(limit: int):  # noqa: ANN201
    """A `preexec_fn`: the child's writes past `limit` bytes fail with EFBIG (a full disk, really refused)."""
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre
