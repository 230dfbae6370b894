"""Encoded rows → one sequence per prompt: weighting, window merge, the family's recipe that joins its
encoders, the pooled source, part combination (AND / blend / concat), and padding to a common length."""

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


#: how a family joins its encoders' sequences [N, D_e] (SDXL: ViT-L ‖ bigG on the feature axis)
RECIPES: dict[str, Callable[[Sequence[Tensor]], Tensor]] = {
    "features": lambda seqs: torch.cat(list(seqs), dim=-1),
}


def reencodings(weighting: Weighting, part: PreparedPart, e: int) -> CompelPlan | None:
    """The masked re-encodings `weighting` needs for part's rows through encoder e (compel's down-weights)."""
    if not weighting.reencodes:
        return None
    rows = part.rows[e]
    spans = [(f.start, f.end) for f in part.sequence.fragments if f.kind != "break"]
    return weighting.reencodings(rows.weights, slot_fragments(rows.tokens, part.stream.spans, spans))


@dataclass(frozen=True)
class EncodedPart:
    """One sub-prompt after weighting: its sequence [N, D], pooled [P] or None, and its weight."""

    seq: Tensor
    pooled: Tensor | None
    weight: float


def encoded_part(
    encoded: Sequence[Encoded],
    k: int,
    part: PreparedPart,
    plans: Sequence[CompelPlan | None],
    weighting: Weighting,
    family: Family,
    pooled_source: str,
) -> EncodedPart:
    """Part k of a request: each encoder's rows weighted and merged, joined by the family's recipe."""
    seqs = []
    for e, enc in enumerate(encoded):
        rows = part.rows[e]
        w = torch.tensor(rows.weights, dtype=torch.float32)
        h = enc.rows(k)
        inputs = WeightingInputs(empty=enc.empty, eos=rows.eos, downweighted=enc.reencoded(k), plan=plans[e])
        seqs.append(merge_rows(weighting.apply(h, checked_weights(h, w), inputs), rows.keep))
    pooled = None
    if family.pooled_role is not None:
        pooled = pick_pooled(encoded[family.pooled_role].pooled_rows(k), pooled_source)
    return EncodedPart(RECIPES[family.recipe](seqs), pooled, part.weight)


def slots_needed(parts: Sequence[EncodedPart], prepared: Prepared) -> int:
    """Slots a text's conditioning needs: its parts side by side for compel .and(), else the longest."""
    sizes = [p.seq.shape[0] for p in parts]
    return sum(sizes) if prepared.prompt.combine == "concat" else max(sizes)


def _lerp_from_empty(seq: Tensor, empty: Tensor, weight: float) -> Tensor:
    """empty + (seq − empty)·w, the empty prompt's encoding [L, D] repeated row by row along seq."""
    if weight == 1.0:
        return seq
    n = seq.shape[0]
    tiled = empty.repeat(-(-n // empty.shape[0]), 1)[:n]
    return tiled + (seq - tiled) * weight


def conditioning(
    texts: Sequence[str],
    items: Sequence[tuple[Sequence[EncodedPart], Prepared]],
    length: int,
    empty: Tensor,
) -> Conditioning:
    """The conditioning of a batch of texts, every one padded to `length` slots with the empty prompt."""
    embeds, pooled, composition = [], [], []
    uses_and = any(prep.prompt.combine == "and" for _, prep in items)
    for parts, prep in items:
        padded = [pad_with_empty(p.seq, length, empty) for p in parts]
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
            seq = torch.cat([_lerp_from_empty(p.seq, empty, p.weight) for p in parts], dim=0)
            seq = pad_with_empty(seq, length, empty)
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
