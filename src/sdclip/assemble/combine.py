"""Encoded rows → one sequence per prompt: weighting, window merge, the family's recipe that joins its
encoders, the pooled source, part combination (AND / blend / concat), and padding to a common length.

A sequence is made of token blocks (`Family.sequence_blocks`): SD1/SD2/SDXL one (CLIP, 77·k slots), SD3
two (CLIP-L ‖ CLIP-G zero-padded to T5's width, then T5's N), Flux one (T5). Padding positive and negative
to one length works per block, each with its own empty-prompt encoding."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from sdclip.assemble.conditioning import Conditioning
from sdclip.assemble.weighting import CompelPlan, Weighting, WeightingInputs, checked_weights, slot_fragments
from sdclip.conventions.family import Family
from sdclip.encoder.plan import Encoded
from sdclip.prepare import Prepared, PreparedPart


def merge_rows(hidden: Tensor, keep: Sequence[Sequence[bool]]) -> Tensor:
    """[R, L, D] → [N, D]: the kept slots of every row, in order (all of them except in window layouts)."""
    R, L, D = hidden.shape
    mask = torch.tensor([k for row in keep for k in row], dtype=torch.bool, device=hidden.device)
    flat = hidden.reshape(R * L, D)
    return flat if bool(mask.all()) else flat[mask]


def pad_with_empty(seq: Tensor, length: int, empty: Tensor) -> Tensor:
    """Extend [N, D] to [length, D] with the empty prompt's encoding [L, D]: whole empty rows first (as
    AUTOMATIC1111 pads the shorter of positive/negative with empty chunks), then the empty row's *last*
    slots — padding slots, as a window layout's last row ends with (never its BOS)."""
    missing = length - seq.shape[0]
    if missing < 0:
        raise ValueError(f"cannot pad a sequence of {seq.shape[0]} slots down to {length}")
    if missing == 0:
        return seq
    L = empty.shape[0]
    whole, rest = divmod(missing, L)
    parts = [seq] + [empty] * whole + ([empty[L - rest :]] if rest else [])
    return torch.cat(parts, dim=0)


#: pooled source → [R, P] rows of a prompt → [P]: the first row (AUTOMATIC1111, ComfyUI, diffusers), the last
#: (sd_embed, LPW-XL) or the mean of all rows (Flux-style)
POOLED_PICKS: dict[str, Callable[[Tensor], Tensor]] = {
    "first": lambda pooled: pooled[0],
    "last": lambda pooled: pooled[-1],
    "mean": lambda pooled: pooled.mean(dim=0),
}


def pick_pooled(pooled: Tensor, source: str) -> Tensor:
    try:
        return POOLED_PICKS[source](pooled)
    except KeyError:
        raise ValueError(f"unknown pooled source {source!r}; choose one of {', '.join(POOLED_PICKS)}") from None


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


def _features(blocks: Sequence[Sequence[Tensor]]) -> tuple[Tensor, ...]:
    """Each block's encoders side by side on the feature axis (SDXL: ViT-L ‖ bigG)."""
    return tuple(torch.cat(list(b), dim=-1) for b in blocks)


def _padded_blocks(blocks: Sequence[Sequence[Tensor]]) -> tuple[Tensor, ...]:
    """diffusers' SD3: each block's encoders side by side, zero-padded on features to the widest block
    (L ‖ G [77k, 2048] → T5's 4096); the blocks then follow each other on the token axis. Flux: T5 alone."""
    joined = _features(blocks)
    width = max(b.shape[-1] for b in joined)
    return tuple(torch.nn.functional.pad(b, (0, width - b.shape[-1])) if b.shape[-1] < width else b for b in joined)


#: how a family joins its encoders' sequences [N, D_e], grouped by token block, into blocks [N_b, D]
RECIPES: dict[str, Callable[[Sequence[Sequence[Tensor]]], tuple[Tensor, ...]]] = {
    "features": _features,
    "sd3": _padded_blocks,
    "flux": _padded_blocks,
}


def reencodings(weighting: Weighting, part: PreparedPart, e: int) -> CompelPlan | None:
    """The masked re-encodings `weighting` needs for part's rows through encoder e (compel's down-weights)."""
    if not weighting.reencodes:
        return None
    rows = part.rows[e]
    spans = [(f.start, f.end) for f in part.sequence_for(e).fragments if f.kind != "break"]
    return weighting.reencodings(rows.weights, slot_fragments(rows.tokens, part.stream_for(e).spans, spans))


@dataclass(frozen=True)
class EncodedPart:
    """One sub-prompt after weighting: its token blocks [N_b, D], pooled [P] or None, and its weight."""

    blocks: tuple[Tensor, ...]
    pooled: Tensor | None
    weight: float

    @property
    def seq(self) -> Tensor:
        """The whole sequence [N, D]: the blocks one after the other."""
        return self.blocks[0] if len(self.blocks) == 1 else torch.cat(self.blocks, dim=0)


def encoded_part(
    encoded: Sequence[Encoded],
    k: int,
    part: PreparedPart,
    plans: Sequence[CompelPlan | None],
    weighting: Weighting | Sequence[Weighting],
    family: Family,
    pooled_source: str,
) -> EncodedPart:
    """Part k of a request: each encoder's rows weighted (`weighting`: one, or one per encoder) and merged,
    joined by the family's recipe; the pooled vector(s) of the pooled roles, concatenated, never weighted."""
    per_encoder = [weighting] * len(encoded) if isinstance(weighting, Weighting) else list(weighting)
    seqs: dict[int, Tensor] = {}
    for e, enc in enumerate(encoded):
        if not family.roles[e].sequence:
            continue  # pooled only (Flux CLIP-L)
        rows = part.rows[e]
        h = enc.rows(k)
        if not enc.constant:
            w = torch.tensor(rows.weights, dtype=torch.float32)
            empty = enc.empty if per_encoder[e].needs_empty else None  # read (and maybe encoded) only if used
            inputs = WeightingInputs(empty=empty, eos=rows.eos, downweighted=enc.reencoded(k), plan=plans[e])
            h = per_encoder[e].apply(h, checked_weights(h, w), inputs)
        seqs[e] = merge_rows(h, rows.keep)
    pooled = None
    if family.pooled_roles:
        picks = [pick_pooled(encoded[i].pooled_rows(k), pooled_source) for i in family.pooled_roles]
        pooled = picks[0] if len(picks) == 1 else torch.cat([p.to(picks[0].dtype) for p in picks], dim=-1)
    return EncodedPart(join_blocks(family, seqs), pooled, part.weight)


def join_blocks(family: Family, seqs: dict[int, Tensor]) -> tuple[Tensor, ...]:
    """Encoder sequences (by role index) → the family's token blocks, in the first sequence's dtype."""
    dtype = next(iter(seqs.values())).dtype
    grouped = [[seqs[i].to(dtype) for i in block] for block in family.sequence_blocks]
    return RECIPES[family.recipe](grouped)


class EmptyBlocks:
    """The empty prompt's encoding of each token block [L_b, D], joined by the family's recipe when first
    read: an encoder whose empty row no rule needs is never asked for it (`Encoded.empty` is lazy)."""

    def __init__(self, family: Family, encoded: Sequence[Encoded]):
        self.family, self.encoded = family, encoded
        self._blocks: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.family.sequence_blocks)

    def __getitem__(self, b: int) -> Tensor:
        if not 0 <= b < len(self):
            raise IndexError(b)
        if b not in self._blocks:
            # the other blocks as one-slot zeros of their widths: the recipe pads features across blocks
            blocks = self.family.sequence_blocks
            dtype = self.encoded[blocks[0][0]].hidden.dtype
            seqs = {i: self.encoded[i].empty if j == b else self.encoded[i].hidden.new_zeros(1, self.encoded[i].hidden.shape[-1])
                    for j, block in enumerate(blocks) for i in block}
            self._blocks[b] = join_blocks(self.family, {i: seqs[i].to(dtype) for i in seqs})[b]
        return self._blocks[b]

    def __iter__(self):  # noqa: ANN204
        return (self[b] for b in range(len(self)))


def part_block_slots(part: PreparedPart, family: Family) -> tuple[int, ...]:
    """Slots of each token block of one part (the kept slots of the block's first role)."""
    return tuple(sum(sum(row) for row in part.rows[block[0]].keep) for block in family.sequence_blocks)


def empty_needed(prepared: Sequence[Prepared], family: Family, lengths: Sequence[int]) -> tuple[bool, ...]:
    """Per token block: whether a batch padded to `lengths` reads the empty prompt's encoding — a part (or a
    compel .and() text) shorter than its block, or an .and() part of weight ≠ 1 (lerped from it)."""
    need = [False] * len(lengths)
    for prep in prepared:
        sizes = [part_block_slots(p, family) for p in prep.parts]
        if prep.prompt.combine == "concat":
            if any(p.weight != 1.0 for p in prep.parts):
                return (True,) * len(lengths)
            sizes = [tuple(sum(s[b] for s in sizes) for b in range(len(lengths)))]
        for s in sizes:
            need = [n or size < length for n, size, length in zip(need, s, lengths)]
    return tuple(need)


def block_slots_needed(parts: Sequence[EncodedPart], prepared: Prepared) -> tuple[int, ...]:
    """Slots of each block a text needs: its parts side by side for compel .and(), else the longest."""
    out = []
    for b in range(len(parts[0].blocks)):
        sizes = [p.blocks[b].shape[0] for p in parts]
        out.append(sum(sizes) if prepared.prompt.combine == "concat" else max(sizes))
    return tuple(out)


def slots_needed(parts: Sequence[EncodedPart], prepared: Prepared) -> int:
    """Slots a text's conditioning needs: its parts side by side for compel .and(), else the longest."""
    return sum(block_slots_needed(parts, prepared))


def _lerp_from_empty(seq: Tensor, empty: Tensor, weight: float) -> Tensor:
    """empty + (seq − empty)·w, the empty prompt's encoding [L, D] repeated row by row along seq."""
    if weight == 1.0:
        return seq
    n = seq.shape[0]
    tiled = empty.repeat(-(-n // empty.shape[0]), 1)[:n]
    return tiled + (seq - tiled) * weight


def _pad_blocks(blocks: Sequence[Tensor], lengths: Sequence[int], empties: Sequence[Tensor]) -> Tensor:
    """Every block padded to its length with its own empty-prompt encoding (read only where a block is
    short), then joined on tokens."""
    padded = [pad_with_empty(b, n, empties[i]) if b.shape[0] < n else pad_with_empty(b, n, b[:0])
              for i, (b, n) in enumerate(zip(blocks, lengths))]
    return padded[0] if len(padded) == 1 else torch.cat(padded, dim=0)


def conditioning(
    texts: Sequence[str],
    items: Sequence[tuple[Sequence[EncodedPart], Prepared]],
    length: int | Sequence[int],
    empty: Tensor | Sequence[Tensor],
) -> Conditioning:
    """The conditioning of a batch of texts, every one padded to `length` slots with the empty prompt
    (one length and one empty encoding per token block where the family has several; `EmptyBlocks` reads
    them only where a block is padded or lerped)."""
    lengths = [length] if isinstance(length, int) else list(length)
    empties = [empty] if isinstance(empty, Tensor) else empty
    embeds, pooled, composition = [], [], []
    uses_and = any(prep.prompt.combine == "and" for _, prep in items)
    for parts, prep in items:
        padded = [_pad_blocks(p.blocks, lengths, empties) for p in parts]
        combine = prep.prompt.combine
        if combine == "and":
            composition.append([(len(embeds) + k, p.weight) for k, p in enumerate(parts)])
            embeds.extend(padded)
            pooled.extend(p.pooled for p in parts)
            continue
        if combine == "blend":
            weights = [p.weight for p in parts]
            seq = blend(padded, weights, prep.prompt.normalize)
            has_pooled = parts[0].pooled is not None
            pool = blend([p.pooled for p in parts], weights, prep.prompt.normalize) if has_pooled else None  # type: ignore[misc]
        elif combine == "concat":
            # compel .and(w…): a part of weight w ≠ 1 is lerped from the empty prompt's encoding
            joined = [torch.cat([p.blocks[b] if p.weight == 1.0 else _lerp_from_empty(p.blocks[b], empties[b], p.weight)
                                 for p in parts], dim=0)
                      for b in range(len(lengths))]
            seq = _pad_blocks(joined, lengths, empties)
            pool = parts[0].pooled
        else:
            seq, pool = padded[0], parts[0].pooled
        if uses_and:
            composition.append([(len(embeds), 1.0)])
        embeds.append(seq)
        pooled.append(pool)
    return Conditioning(
        embeds=torch.stack(embeds),
        pooled=torch.stack(pooled) if pooled and pooled[0] is not None else None,  # type: ignore[arg-type]
        composition=composition if uses_and else None,
        texts=tuple(texts),
        token_counts=tuple(prep.token_count for _, prep in items),
        dropped=tuple(prep.dropped for _, prep in items),
    )


def zeroed(cond: Conditioning) -> Conditioning:
    """The same conditioning with embeds and pooled all zeros (diffusers' force_zeros_for_empty_prompt)."""
    pooled = torch.zeros_like(cond.pooled) if cond.pooled is not None else None
    return replace(cond, embeds=torch.zeros_like(cond.embeds), pooled=pooled)
