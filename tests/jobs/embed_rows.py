"""Every row of an `sdclip embed` folder as `sdclip.dataset.open` reads it (a repeated caption's reference row
resolved to its source's tensors), stacked per key in input order: what the tests compare with their oracles."""

from __future__ import annotations

from pathlib import Path

import torch

import sdclip.dataset


def read_rows(out: Path) -> dict[str, torch.Tensor]:
    items = list(sdclip.dataset.open(out))
    return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in items[0]}
