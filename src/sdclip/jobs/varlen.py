"""`--varlen`: sdclip shards without padding, lengths kept; `sdclip.dataset` rebuilds the padded rows.

A row keeps its first `length` positions: where the family's pipeline returns an attention mask (Chroma,
PixArt-Σ, AuraFlow, Qwen-Image, Z-Image, Lumina 2: the consumer masks padding), the mask's length; else up
to its last non-zero position (Wan's states are zero after the prompt; SD1/SDXL/SD3/Flux rows keep every
position, their padding is attended). Reading puts zeros after `length`: bitwise the stored row wherever the
padding was zeros, and equal on every position the mask covers elsewhere (the `attention_mask` is kept).

Shard keys: `prompt_embeds_varlen` [Σ length, D] (rows one after another, in index order) and
`prompt_lengths` int32 [n] in place of `prompt_embeds`; metadata `slots` = N.
"""

from __future__ import annotations

import torch

KEY = "prompt_embeds_varlen"
LENGTHS = "prompt_lengths"


#: rows looked at together by `kept`: its temporaries are a few rows, not a shard (1,024 × 512 × D for Wan)
CHUNK = 32


def kept(embeds: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """int32 [n]: positions each row keeps."""
    if mask is not None:
        return mask.to(torch.float32).sum(1).round().to(torch.int32)
    n = embeds.shape[1]
    steps = torch.arange(1, n + 1)
    last = [torch.where((e != 0).any(-1), steps, 0).amax(1) for e in torch.split(embeds, CHUNK)]
    return torch.cat(last).to(torch.int32) if last else torch.zeros(0, dtype=torch.int32)


def pack(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The shard's tensors with `prompt_embeds` [n, N, D] replaced by the varlen pair."""
    e = tensors["prompt_embeds"]
    lengths = kept(e, tensors.get("attention_mask"))
    rows = [e[i, : int(lengths[i])] for i in range(e.shape[0])]
    flat = torch.cat(rows) if rows else e.new_zeros(0, e.shape[2])
    out = {k: v for k, v in tensors.items() if k != "prompt_embeds"}
    out[KEY] = flat.contiguous()
    out[LENGTHS] = lengths
    return out


def unpack(flat: torch.Tensor, length: int, slots: int) -> torch.Tensor:
    """One padded row [slots, D] from its kept positions [length, D] (zeros after)."""
    return torch.cat([flat, flat.new_zeros(slots - length, flat.shape[1])]) if length < slots else flat
