"""Rows of hidden states → one sequence per prompt: window merge, padding, pooled source, part combination."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sdclip.conventions.presets import POOLED_SOURCES


def merge_rows(hidden: Tensor, keep: Sequence[Sequence[bool]]) -> Tensor:
    """[R, L, D] → [N, D]: the kept slots of every row, in order (all of them except in window layouts)."""
    R, L, D = hidden.shape
    mask = torch.tensor([k for row in keep for k in row], dtype=torch.bool, device=hidden.device)
    flat = hidden.reshape(R * L, D)
    return flat if bool(mask.all()) else flat[mask]


def pad_with_empty(seq: Tensor, length: int, empty: Tensor) -> Tensor:
    """Extend [N, D] to [length, D] with the empty prompt's encoding [L, D]: whole empty rows first (as
    AUTOMATIC1111 pads the shorter of positive/negative with empty chunks), then its last slots (padding)."""
    missing = length - seq.shape[0]
    if missing < 0:
        raise ValueError(f"cannot pad a sequence of {seq.shape[0]} slots down to {length}")
    if missing == 0:
        return seq
    L = empty.shape[0]
    whole, rest = divmod(missing, L)
    parts = [seq] + [empty] * whole + ([empty[L - rest :]] if rest else [])
    return torch.cat(parts, dim=0)


def pick_pooled(pooled: Tensor, source: str) -> Tensor:
    """[R, P] → [P]: the pooled vector of the first row (AUTOMATIC1111, ComfyUI, diffusers), the last row
    (sd_embed, LPW-XL) or the mean of all rows (Flux-style)."""
    if source == "first":
        return pooled[0]
    if source == "last":
        return pooled[-1]
    if source == "mean":
        return pooled.mean(dim=0)
    raise ValueError(f"unknown pooled source {source!r}; choose one of {', '.join(POOLED_SOURCES)}")


def blend(items: Sequence[Tensor], weights: Sequence[float], normalize: bool) -> Tensor:
    """compel `.blend()`: Σ wᵢ·xᵢ, with the weights divided by their sum unless `normalize` is False."""
    w = torch.tensor(list(weights), dtype=torch.float32, device=items[0].device)
    if normalize:
        total = float(w.sum())
        if total == 0.0:
            raise ValueError("blend weights sum to 0: nothing to normalise by (use no_normalize)")
        w = w / total
    stacked = torch.stack([x.to(torch.float32) for x in items])
    return (stacked * w.view(-1, *([1] * (stacked.dim() - 1)))).sum(0).to(items[0].dtype)
