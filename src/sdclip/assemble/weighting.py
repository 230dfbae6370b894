"""Per-token weights applied to encoded hidden states: one function per tool's formula.

Every mode works on hidden states `z` [R, L, D] (one row per encoded 77- or 248-slot row) and weights
`w` [R, L] (1.0 at BOS/EOS/pad). The formulas, checked against each tool's source:

- "a1111"  AUTOMATIC1111 emphasis "Original" (modules/sd_emphasis.py `EmphasisOriginal`):
           z' = z·w, then z' *= mean(z) / mean(z'). A1111 encodes one chunk index for the whole batch at
           once, so the two means are single scalars over batch × slots × channels of that chunk index
           (SDXL: per encoder, each encoder is a separate call). `groups` lists the rows that share a
           mean; the means are taken in float32 even for half-precision input.
- "no-norm" A1111 emphasis "No norm" (`EmphasisOriginalNoNorm`), also sd_embed: z' = z·w. Also kohya-ss/sd-scripts
           `--weighted_captions` (`encode_tokens_with_weights` in strategy_sd.py / strategy_sdxl.py at 48d368f):
           each row's slots 1..75 times their weights, no mean restoration (its older
           `get_weighted_text_embeddings`, which restores the mean, now serves only its image generators).
- "comfy"  ComfyUI `ClipTokenWeightEncoder.encode_token_weights`: z' = e + (z − e)·w where e is the
           encoding of the empty prompt ([BOS, EOS, pad…]) at the same slot; slots with w == 1 are left
           bit-exact (ComfyUI only rewrites `weight != 1.0`).
- "compel" compel `EmbeddingsProvider` (DownweightMode.MASK, its default): the same lerp as "comfy" for
           every w ≠ 1 (compel's `build_weighted_embedding_tensor`), then for each fragment with w < 1 a
           re-encoding of the rows with that fragment's slots masked out of attention, weighted the same
           way, and a normalised mix  (z₀·1 + Σₖ zₖ·tan((1 − max(wₖ, 1e-5))·π/2)) / (1 + Σₖ tan(…)).
           The re-encodings need the encoder, so this mode is split in two pure steps:
           `compel_downweight_plan` (which attention masks to encode) and the mix (`apply_weights(...,
           downweighted=…, plan=…)` or `compel_mix`).
- "lerp-eos" diffusers community LPW-XL (`get_weighted_text_embeddings_sdxl`): z' = z_eos + (z − z_eos)·w
           for w ≠ 1. LPW-XL lerps toward `token_embedding[-1]`, the row's *last* slot, but its rows are
           unpadded (`group_tokens_and_weights(pad_last_block=False)`: `[BOS] + tokens + [EOS]`), so that
           slot is the row's first (only) EOS. CLIP's attention is causal, so the first EOS of a padded
           row has exactly the same hidden state: pass `eos=Rows.eos`. Not copied: LPW-XL rounds weights
           to float16 (1.1 → 1.0996) and, when the positive is EOS-padded to the negative's length, lerps
           toward the last of those extra EOS slots.
- "comfy++" ComfyUI_ADV_CLIP_emb (adv_encode.py `weight_interpretation="comfy++"`): down-weights by
           "down_weight" below on the raw weights, plus for each fragment with weight w > 1 an up-weight
           (w − 1)·(z − z_f) on its own slots, z_f = the rows re-encoded with that fragment's tokens
           replaced by the mask token.
- "down_weight" ADV_CLIP_emb `"down_weight"`: weights rescaled so the largest is 1 (w/max(w); BOS/EOS/pad
           stay 1), then with the distinct weights below 1 sorted, w₀ < … < w_{K−1}:
           z' = w₀·z + Σᵢ (wᵢ − wᵢ₋₁)·zᵢ + (1 − w_{K−1})·z_K, zᵢ = the rows re-encoded with every token of
           the i lowest weights replaced by the mask token (cumulative). A token of weight w thus keeps a
           share w of its unmasked encoding.
           Both ADV modes mask by token substitution (id 266, `+</w>`), not by attention, so their
           re-encodings are `SubstitutionPlan`s, and apply is the plan's per-slot linear mix.
- "none"   z unchanged (A1111 "Ignore"/"None").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sdclip.conventions.presets import WEIGHTINGS  # the names live with the other conventions (no torch needed)

#: compel clamps down-weights to this before tan() so that w = 0 gives a huge but finite mix weight
COMPEL_EPSILON = 1e-5


class WeightingError(ValueError):
    """Inputs that cannot be weighted: wrong shapes, non-finite weights, a missing encoding."""


@dataclass(frozen=True)
class CompelPlan:
    """The re-encodings compel's down-weighting needs, one per fragment with weight < 1.

    - fragments[k]: the fragment index (as given to `compel_downweight_plan`) of re-encoding k;
    - weights[k]: that fragment's weight;
    - attention_masks[k]: [R, L] int64, 1 = attend, 0 = that fragment's slots (pass it to the encoder as
      its attention mask; ids unchanged, every other slot attended, pad slots included as compel does
      with `padding_attention_mask_value=1`).
    """

    fragments: tuple[int, ...]
    weights: tuple[float, ...]
    attention_masks: Tensor

    def __len__(self) -> int:
        return len(self.fragments)

    def rows(self, ids: Sequence[Sequence[int]], k: int) -> tuple[list[tuple[int, ...]], list[tuple[int, ...] | None]]:
        """Re-encoding k for an encoder plan: the same ids under attention mask k (None for a row it leaves
        whole, which then dedupes with the row itself)."""
        masks = [tuple(m) if 0 in m else None for m in self.attention_masks[k].tolist()]
        return [tuple(r) for r in ids], masks

    @property
    def mix_weights(self) -> Tensor:
        """[1 + K] float64: 1 for the unmasked encoding, tan((1 − max(w, 1e-5))·π/2) per re-encoding."""
        tans = [math.tan((1.0 - max(COMPEL_EPSILON, w)) * math.pi / 2) for w in self.weights]
        return torch.tensor([1.0, *tans], dtype=torch.float64)


def checked_weights(hidden: Tensor, weights: Tensor) -> Tensor:
    """Validate shapes and finiteness; return the weights as float32 on hidden's device."""
    if not isinstance(hidden, Tensor) or hidden.dim() != 3 or not hidden.is_floating_point():
        raise WeightingError(f"hidden must be a float tensor [R, L, D], got {_describe(hidden)}")
    if not isinstance(weights, Tensor):
        weights = torch.as_tensor(weights)
    if weights.dim() != 2 or tuple(weights.shape) != tuple(hidden.shape[:2]):
        raise WeightingError(f"weights must be [R, L] = {list(hidden.shape[:2])}, got {_describe(weights)}")
    weights = weights.to(device=hidden.device, dtype=torch.float32)
    if not bool(torch.isfinite(weights).all()):
        bad = torch.nonzero(~torch.isfinite(weights))[0].tolist()
        raise WeightingError(f"weights must be finite: row {bad[0]} slot {bad[1]} is {weights[bad[0], bad[1]].item()}")
    return weights


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {list(x.shape)}"
    return type(x).__name__


def _empty_like(empty: Tensor | None, hidden: Tensor, mode: str) -> Tensor:
    """The empty-prompt encoding broadcast to [R, L, D] in float32."""
    if empty is None:
        raise WeightingError(f"{mode!r} weighting needs empty= (the encoding of the empty prompt, [L, D] or [R, L, D])")
    R, L, D = hidden.shape
    if tuple(empty.shape) not in ((L, D), (R, L, D)) or not empty.is_floating_point():
        raise WeightingError(f"empty must be [L, D] = {[L, D]} or [R, L, D] = {[R, L, D]}, got {_describe(empty)}")
    return empty.to(device=hidden.device, dtype=torch.float32).expand(R, L, D)


def _lerp(z: Tensor, anchor: Tensor, weights: Tensor) -> Tensor:
    """anchor + (z − anchor)·w in float32 where w ≠ 1; z itself (bit-exact) where w == 1."""
    w = weights.unsqueeze(-1)
    z32 = z.to(torch.float32)
    out = torch.where(w == 1.0, z32, anchor + (z32 - anchor) * w)
    return out.to(z.dtype)


def _groups(groups: Sequence[Sequence[int]] | None, rows: int) -> list[list[int]]:
    if groups is None:
        return [[r] for r in range(rows)]
    out = [list(g) for g in groups]
    seen = sorted(r for g in out for r in g)
    if seen != list(range(rows)) or any(not g for g in out):
        raise WeightingError(f"groups must split rows 0..{rows - 1} into non-empty groups, each row once; got {out}")
    return out


def _a1111(hidden: Tensor, weights: Tensor, groups: Sequence[Sequence[int]] | None) -> Tensor:
    z = hidden.to(torch.float32)
    weighted = z * weights.unsqueeze(-1)
    out = torch.empty_like(weighted)
    for group in _groups(groups, hidden.shape[0]):
        idx = torch.tensor(group, device=hidden.device)
        original_mean = z.index_select(0, idx).mean()
        new_mean = weighted.index_select(0, idx).mean()
        if not bool(torch.isfinite(original_mean / new_mean)):
            raise WeightingError(
                f"a1111 weighting of rows {group}: the weighted mean is {new_mean.item()!r}, so the mean "
                "restoration mean(z)/mean(z·w) is undefined (all-zero weights?); use 'no-norm' or other weights"
            )
        out.index_copy_(0, idx, weighted.index_select(0, idx) * (original_mean / new_mean))
    return out.to(hidden.dtype)


def _lerp_eos(hidden: Tensor, weights: Tensor, eos: Sequence[int] | None) -> Tensor:
    R, L, _ = hidden.shape
    if eos is None:
        raise WeightingError("'lerp-eos' weighting needs eos= (each row's EOS slot, e.g. Rows.eos)")
    eos = [int(e) for e in eos]
    if len(eos) != R or any(not 0 <= e < L for e in eos):
        raise WeightingError(f"eos must give one slot in 0..{L - 1} per row ({R} rows), got {eos}")
    idx = torch.tensor(eos, device=hidden.device)
    anchor = hidden.to(torch.float32)[torch.arange(R, device=hidden.device), idx].unsqueeze(1)
    return _lerp(hidden, anchor, weights)


def _compel(
    hidden: Tensor,
    weights: Tensor,
    empty: Tensor | None,
    downweighted: Tensor | None,
    plan: CompelPlan | None,
) -> Tensor:
    e = _empty_like(empty, hidden, "compel")
    base = _lerp(hidden, e, weights)
    if plan is None:
        if downweighted is not None:
            raise WeightingError("downweighted= needs plan= (the CompelPlan the re-encodings were made from)")
        if bool((weights < 1).any()):
            raise WeightingError(
                "compel down-weights (w < 1) by re-encoding with the fragment masked out: pass "
                "plan=compel_downweight_plan(weights, fragments) and downweighted=<its encodings>"
            )
        return base
    if len(plan) == 0:
        return base
    K, (R, L, D) = len(plan), hidden.shape
    if downweighted is None or tuple(downweighted.shape) != (K, R, L, D):
        got = "nothing" if downweighted is None else _describe(downweighted)
        raise WeightingError(f"compel plan has {K} re-encodings: downweighted must be [K, R, L, D] = {[K, R, L, D]}, got {got}")
    masked = torch.stack([_lerp(downweighted[k], e, weights) for k in range(K)])
    return compel_mix(base, masked, plan)


def compel_mix(base: Tensor, downweighted: Tensor, plan: CompelPlan) -> Tensor:
    """compel's normalised mix of the weighted encoding [R, L, D] and its K masked re-encodings [K, R, L, D].

    Both inputs must already carry the up-weighting lerp (compel weights every re-encoding the same way,
    the masked fragment's own slots included). Mix weights: `plan.mix_weights`, divided by their sum.
    """
    if downweighted.dim() != 4 or downweighted.shape[0] != len(plan) or downweighted.shape[1:] != base.shape:
        raise WeightingError(f"downweighted must be [{len(plan)}, *{list(base.shape)}], got {_describe(downweighted)}")
    mix = plan.mix_weights.to(device=base.device, dtype=torch.float32)
    mix = mix / mix.sum()
    stacked = torch.cat([base.unsqueeze(0), downweighted.to(base.dtype)]).to(torch.float32)
    return (stacked * mix.view(-1, 1, 1, 1)).sum(0).to(base.dtype)


def compel_downweight_plan(weights: Tensor, fragments: Tensor) -> CompelPlan:
    """Which re-encodings compel's down-weighting needs.

    weights [R, L] (pass float64 or Python floats for compel's exact tan()); fragments [R, L] int: the fragment index of each slot, -1 for BOS/EOS/pad (see
    `slot_fragments`). Each fragment whose weight is < 1 gets one attention mask with its slots zeroed, in
    fragment order. compel masks the whole slot range from the fragment's first to last token, which for
    a fragment cut across two chunks also masks the first chunk's EOS/pad other than slots 0 and L−1;
    here exactly the fragment's own slots are masked (identical whenever the fragment sits in one row).
    """
    weights = torch.as_tensor(weights).to(torch.float64)  # compel takes tan() of the Python float
    fragments = torch.as_tensor(fragments)
    if weights.dim() != 2 or fragments.shape != weights.shape or fragments.is_floating_point():
        raise WeightingError(
            f"weights and fragments must both be [R, L] (fragments integer), got {_describe(weights)} and {_describe(fragments)}"
        )
    if not bool(torch.isfinite(weights).all()):
        raise WeightingError("weights must be finite")
    orphan = (fragments < 0) & (weights != 1)
    if bool(orphan.any()):
        r, s = torch.nonzero(orphan)[0].tolist()
        raise WeightingError(f"row {r} slot {s} has weight {weights[r, s].item()} but belongs to no fragment")
    ids, ws, masks = [], [], []
    for f in torch.unique(fragments[fragments >= 0]).tolist():
        sel = fragments == f
        values = torch.unique(weights[sel])
        if len(values) != 1:
            raise WeightingError(f"fragment {f} has several weights {values.tolist()}: one fragment, one weight")
        w = float(values[0])
        if w < 1:
            ids.append(int(f))
            ws.append(w)
            masks.append((~sel).to(torch.int64))
    R, L = weights.shape
    stacked = torch.stack(masks) if masks else torch.ones((0, R, L), dtype=torch.int64)
    return CompelPlan(tuple(ids), tuple(ws), stacked)


def slot_fragments(tokens: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]], fragments: Sequence[tuple[int, int]]) -> Tensor:
    """[R, L] fragment index per slot from a layout's slot→token map (`Rows.tokens`, -1 = special), the
    tokens' character spans (`TokenStream.spans`) and the fragments' character spans (`Fragment.start/end`).

    A token belongs to the fragment whose [start, end) holds its first character; -1 if none does.
    """
    out = torch.full((len(tokens), len(tokens[0]) if tokens else 0), -1, dtype=torch.int64)
    for r, row in enumerate(tokens):
        for s, t in enumerate(row):
            if t < 0:
                continue
            pos = spans[t][0]
            for f, (start, end) in enumerate(fragments):
                if start <= pos < end:
                    out[r, s] = f
                    break
    return out


@dataclass(frozen=True)
class Weighting:
    """One weighting formula, and what it needs besides the hidden states: the empty prompt's encoding,
    each row's EOS slot, masked re-encodings (what the encoder plan must add to the batch)."""

    name: str
    needs_empty: bool = False
    needs_eos: bool = False
    reencodes: bool = False

    def apply(self, hidden: Tensor, w: Tensor, ctx: "WeightingInputs") -> Tensor:
        raise NotImplementedError

    def reencodings(self, weights: Sequence[Sequence[float]], fragments: Tensor) -> "CompelPlan | SubstitutionPlan | None":
        """The masked re-encodings this formula needs for rows with these weights (None: none)."""
        return None


@dataclass(frozen=True)
class WeightingInputs:
    empty: Tensor | None = None
    groups: Sequence[Sequence[int]] | None = None
    eos: Sequence[int] | None = None
    downweighted: Tensor | None = None
    plan: "CompelPlan | SubstitutionPlan | None" = None


class _NoWeights(Weighting):
    def apply(self, hidden, w, ctx):  # noqa: ANN001, ANN201
        return hidden


class _Scale(Weighting):
    def apply(self, hidden, w, ctx):  # noqa: ANN001, ANN201
        return (hidden.to(torch.float32) * w.unsqueeze(-1)).to(hidden.dtype)


class _MeanRestored(Weighting):
    def apply(self, hidden, w, ctx):  # noqa: ANN001, ANN201
        return _a1111(hidden, w, ctx.groups)


class _LerpFromEmpty(Weighting):
    def apply(self, hidden, w, ctx):  # noqa: ANN001, ANN201
        return _lerp(hidden, _empty_like(ctx.empty, hidden, self.name), w)


class _LerpFromEos(Weighting):
    def apply(self, hidden, w, ctx):  # noqa: ANN001, ANN201
        return _lerp_eos(hidden, w, ctx.eos)


class _Compel(Weighting):
    def apply(self, hidden, w, ctx):  # noqa: ANN001, ANN201
        return _compel(hidden, w, ctx.empty, ctx.downweighted, ctx.plan)

    def reencodings(self, weights, fragments):  # noqa: ANN001, ANN201
        if all(x >= 1.0 for row in weights for x in row):
            return None
        return compel_downweight_plan(torch.tensor(weights, dtype=torch.float64), fragments)


# -- ComfyUI_ADV_CLIP_emb: re-encodings with tokens replaced by a mask token -------------------------------

#: ADV_CLIP_emb masks a token by replacing its id with 266 — `+</w>` in CLIP's vocabulary (its comment says
#: "comma", which is 267); the replacement carries weight 1
ADV_MASK_TOKEN = 266


@dataclass(frozen=True)
class SubstitutionPlan:
    """Re-encodings of a part's rows with some slots' token ids replaced by `token` (ADV_CLIP_emb), and
    how to mix them: out = Σⱼ coefficients[j] ⊙ Eⱼ, E₀ = the rows as encoded, Eₖ = re-encoding k.

    - replaced[k]: [R, L] bool, the slots whose id re-encoding k replaces by `token`;
    - coefficients: [1 + K, R, L] float64, a per-slot factor for each encoding.
    Unlike compel's `CompelPlan` this masks nothing from attention: an encoder plan builds re-encoding k's
    rows with `substituted(ids, k)`.
    """

    replaced: Tensor
    coefficients: Tensor
    token: int = ADV_MASK_TOKEN

    def __len__(self) -> int:
        return int(self.replaced.shape[0])

    def rows(self, ids: Sequence[Sequence[int]], k: int) -> tuple[list[tuple[int, ...]], list[tuple[int, ...] | None]]:
        """Re-encoding k for an encoder plan: the replaced ids, attending everything."""
        return self.substituted(ids, k), [None] * len(ids)

    def substituted(self, ids: Sequence[Sequence[int]], k: int) -> list[tuple[int, ...]]:
        """Re-encoding k's rows: `ids` [R][L] with the slots of `replaced[k]` set to the mask token."""
        mask = self.replaced[k].tolist()
        return [tuple(self.token if m else t for t, m in zip(row, mrow)) for row, mrow in zip(ids, mask)]


def _substitution_plan(shape: torch.Size, replaced: list[Tensor], coefficients: list[Tensor]) -> SubstitutionPlan:
    stacked = torch.stack(replaced) if replaced else torch.zeros((0, *shape), dtype=torch.bool)
    return SubstitutionPlan(stacked, torch.stack(coefficients).to(torch.float64))


def _as_weights(weights: Sequence[Sequence[float]] | Tensor, fragments: Tensor | None) -> tuple[Tensor, Tensor]:
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.dim() != 2 or not bool(torch.isfinite(w).all()):
        raise WeightingError(f"weights must be finite [R, L], got {_describe(w)}")
    f = torch.full(w.shape, -1, dtype=torch.int64) if fragments is None else torch.as_tensor(fragments)
    if tuple(f.shape) != tuple(w.shape) or f.is_floating_point():
        raise WeightingError(f"fragments must be integer [R, L] = {list(w.shape)}, got {_describe(f)}")
    return w, f


def _down_weight_terms(w: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """ADV_CLIP_emb `down_weight`: (coefficient of E₀, masks, coefficients) of its cumulative re-encodings.

    The mix weights are diff([0, w₀, …, w_{K−1}, 1]). ADV_CLIP_emb takes the 1 from the weights themselves
    (`w[w <= 1]`) and crashes (a broadcast error) when no slot weighs exactly 1; here the 1 is always the
    last edge, which is the same whenever ADV_CLIP_emb works and keeps the mix weights summing to 1."""
    below = sorted({float(x) for x in w.flatten().tolist() if x < 1.0})
    if not below:
        return torch.ones_like(w), [], []
    edges = [0.0, *below, 1.0]
    mix = [b - a for a, b in zip(edges, edges[1:])]  # float64, as np.diff
    masks, coeffs, masked = [], [], torch.zeros(w.shape, dtype=torch.bool)
    for value, c in zip(below, mix[1:]):
        masked = masked | (w == value)
        masks.append(masked.clone())
        coeffs.append(torch.full(w.shape, c, dtype=torch.float64))
    return torch.full(w.shape, mix[0], dtype=torch.float64), masks, coeffs


def scale_to_norm(w: Tensor, fragments: Tensor, w_max: float = 1.0) -> Tensor:
    """ADV_CLIP_emb `scale_to_norm`: every weight divided by the largest (BOS/EOS/pad included), times
    min(largest, w_max); BOS/EOS/pad (fragment −1) set to min(largest, w_max)."""
    top = float(w.max())
    if top <= 0:
        raise WeightingError(f"'down_weight' divides by the largest weight, which is {top}: no positive weight")
    scale = min(top, w_max)
    return torch.where(fragments < 0, torch.full_like(w, scale), w / top * scale)


def down_weight_plan(weights: Sequence[Sequence[float]] | Tensor, fragments: Tensor | None = None) -> SubstitutionPlan:
    """The re-encodings and mix of "down_weight" for rows with these weights (none: nothing below 1 once
    rescaled).

    fragments [R, L]: fragment per slot, −1 for BOS/EOS/pad (only these matter, for `scale_to_norm`)."""
    w, f = _as_weights(weights, fragments)
    base, masks, coeffs = _down_weight_terms(scale_to_norm(w, f))
    return _substitution_plan(w.shape, masks, [base, *coeffs])


def comfy_plus_plus_plan(weights: Sequence[Sequence[float]] | Tensor, fragments: Tensor) -> SubstitutionPlan:
    """The re-encodings and mix of "comfy++" (none where every weight is 1).

    ADV_CLIP_emb: `down_weight` on the raw weights, then `from_masked` with the weights clamped to ≥ 1: for
    each word (fragment) whose weight at its first slot is ≠ 1, ascending, a re-encoding with that word's
    tokens replaced (not cumulative), added as (u − 1)·(E₀ − E_f) on the word's own slots, u = the slot's
    clamped weight. ADV_CLIP_emb's pooled output (the hidden state at slot 76, not a pooled vector) is not
    copied: the pooled vector stays the unweighted encoder's, as for every weighting here."""
    w, f = _as_weights(weights, fragments)
    base, masks, coeffs = _down_weight_terms(w)
    up = torch.clamp(w, min=1.0)
    flat_f, flat_u = f.flatten().tolist(), up.flatten().tolist()
    first: dict[int, float] = {}
    for frag, u in zip(flat_f, flat_u):
        if frag >= 0:
            first.setdefault(frag, u)
    for frag in sorted(first):
        if first[frag] == 1.0:
            continue
        own = f == frag
        gain = torch.where(own, up - 1.0, torch.zeros_like(up))
        base = base + gain
        masks.append(own)
        coeffs.append(-gain)
    return _substitution_plan(w.shape, masks, [base, *coeffs])


def substitution_mix(hidden: Tensor, reencoded: Tensor, plan: SubstitutionPlan) -> Tensor:
    """Σⱼ coefficients[j] ⊙ Eⱼ over the rows [R, L, D] and their re-encodings [K, R, L, D], in float32."""
    K, (R, L, D) = len(plan), hidden.shape
    if reencoded is None or tuple(reencoded.shape) != (K, R, L, D):
        got = "nothing" if reencoded is None else _describe(reencoded)
        raise WeightingError(f"the plan has {K} re-encodings: downweighted must be [K, R, L, D] = {[K, R, L, D]}, got {got}")
    if tuple(plan.coefficients.shape) != (K + 1, R, L):
        raise WeightingError(f"plan coefficients must be [{K + 1}, {R}, {L}], got {_describe(plan.coefficients)}")
    c = plan.coefficients.to(device=hidden.device, dtype=torch.float32).unsqueeze(-1)
    stacked = torch.cat([hidden.unsqueeze(0), reencoded.to(hidden.dtype)]).to(torch.float32)
    return (stacked * c).sum(0).to(hidden.dtype)


class _AdvMix(Weighting):
    """ADV_CLIP_emb's modes: the plan carries the whole formula; apply only mixes."""

    def apply(self, hidden, w, ctx):  # noqa: ANN001, ANN201
        plan = ctx.plan
        if ctx.downweighted is None and bool((w == 1).all()):
            return hidden  # both formulas give the rows themselves at unit weights, whatever the plan
        if plan is None:
            if ctx.downweighted is not None:
                raise WeightingError("downweighted= needs plan= (the SubstitutionPlan the re-encodings were made from)")
            raise WeightingError(
                f"{self.name!r} re-encodes the rows with tokens replaced by the mask token: pass "
                f"plan=get_weighting({self.name!r}).reencodings(weights, fragments) and downweighted=<its encodings>"
            )
        if not isinstance(plan, SubstitutionPlan):
            raise WeightingError(f"{self.name!r} needs a SubstitutionPlan, got {type(plan).__name__}")
        if len(plan) == 0 and ctx.downweighted is None and bool((plan.coefficients == 1).all()):
            return hidden
        return substitution_mix(hidden, ctx.downweighted, plan)


class _AdvComfyPlusPlus(_AdvMix):
    def reencodings(self, weights, fragments):  # noqa: ANN001, ANN201
        return comfy_plus_plus_plan(weights, fragments)


class _AdvDownWeight(_AdvMix):
    def reencodings(self, weights, fragments):  # noqa: ANN001, ANN201
        return down_weight_plan(weights, fragments)


#: the weighting formulas by name (the names also live, torch-free, in sdclip.conventions.presets.WEIGHTINGS)
WEIGHTING_MODES: dict[str, Weighting] = {
    m.name: m
    for m in (
        _MeanRestored("a1111"),
        _Scale("no-norm"),
        _LerpFromEmpty("comfy", needs_empty=True),
        _Compel("compel", needs_empty=True, reencodes=True),
        _LerpFromEos("lerp-eos", needs_eos=True),
        _NoWeights("none"),
        _AdvComfyPlusPlus("comfy++", reencodes=True),
        _AdvDownWeight("down_weight", reencodes=True),
    )
}


def get_weighting(mode: str) -> Weighting:
    try:
        return WEIGHTING_MODES[mode]
    except KeyError:
        raise WeightingError(f"unknown weighting {mode!r}; choose one of {', '.join(WEIGHTINGS)}") from None


def apply_weights(
    mode: str,
    hidden: Tensor,
    weights: Tensor,
    *,
    empty: Tensor | None = None,
    groups: Sequence[Sequence[int]] | None = None,
    eos: Sequence[int] | None = None,
    downweighted: Tensor | None = None,
    plan: CompelPlan | SubstitutionPlan | None = None,
) -> Tensor:
    """Weighted hidden states [R, L, D], same dtype as `hidden`, by the formula of `mode` (see module doc).

    - empty: the empty prompt's encoding at the same slots, [L, D] or [R, L, D] ("comfy", "compel");
    - groups: rows sharing one mean ("a1111"; default each row alone);
    - eos: each row's EOS slot ("lerp-eos");
    - downweighted, plan: compel's K masked re-encodings [K, R, L, D] (raw encoder output, unweighted)
      and the `compel_downweight_plan` they were encoded from ("compel", required when any w < 1);
      for "comfy++" / "down_weight" the `SubstitutionPlan` of `get_weighting(mode).reencodings(weights,
      fragments)` and the rows re-encoded with `plan.substituted(ids, k)` (required when any w ≠ 1).
    Raises WeightingError (a ValueError) on an unknown mode, bad shapes, NaN/inf weights.
    """
    weighting = get_weighting(mode)
    w = checked_weights(hidden, weights)
    return weighting.apply(hidden, w, WeightingInputs(empty, groups, eos, downweighted, plan))
