"""ComfyUI_ADV_CLIP_emb's "comfy++" and "down_weight" weight interpretations, and its token normalisations
through a Conditioner, against adv_encode.py's formulas re-implemented below with plain torch ops.

The oracle follows adv_encode.py line by line (`down_weight`, `from_masked`, `scale_to_norm`, `mask_inds`,
`mask_word_id`): ComfyUI rows of (token, weight, word id), word id 0 = BOS/EOS/pad, re-encodings with
tokens replaced by id 266, the whole prompt flattened to one [1, 77·n, D] tensor. Encoder: a tiny random
transformers `CLIPTextModel` (SD1's last hidden state, as ComfyUI's default layer). Torch-free tests of the
normalisations: tests/tokenizer/test_token_normalization.py.
"""

from __future__ import annotations

import pytest
import torch
from a1111_oracle import BOS, EOS
from tiny_conditioners import hf_last, ids_of, make, models_of

from sdclip.assemble.weighting import (
    ADV_MASK_TOKEN,
    SubstitutionPlan,
    WeightingError,
    apply_weights,
    comfy_plus_plus_plan,
    down_weight_plan,
    get_weighting,
)
from sdclip.tokenizer.weight_norm import TOKEN_NORMALIZATIONS

L = 77
ATOL = 1e-5


# -- the oracle: adv_encode.py with plain torch ---------------------------------------------------------

def adv_encode(model, rows: list[list[int]]) -> torch.Tensor:
    """encode_func + batched_clip_encode: rows → [1, 77·n, D]."""
    h = hf_last(model, rows)
    return h.reshape(1, -1, h.shape[-1])


def adv_mask_inds(tokens, inds, mask_token):
    clip_len = len(tokens[0])
    inds_set = set(inds)
    return [[mask_token if i * clip_len + j in inds_set else t for j, t in enumerate(x)] for i, x in enumerate(tokens)]


def adv_down_weight(model, tokens, weights, base_emb):
    """adv_encode.down_weight: cumulative masking, lowest weight first, mixed by diff([0] + w[w <= 1])."""
    flat = [w for row in weights for w in row]
    w = sorted(set(flat))
    w_inv = [w.index(x) for x in flat]
    if not any(x < 1 for x in w):
        return base_emb
    masked_tokens, current = [], tokens
    for i in range(len(w)):
        if w[i] >= 1:
            continue
        current = adv_mask_inds(current, [j for j, v in enumerate(w_inv) if v == i], ADV_MASK_TOKEN)
        masked_tokens.append(current)
    embs = torch.cat([base_emb] + [adv_encode(model, m) for m in masked_tokens])
    kept = [x for x in w if x <= 1.0]
    w_mix = torch.tensor([b - a for a, b in zip([0.0] + kept, kept)], dtype=embs.dtype).reshape(-1, 1, 1)
    return (w_mix * embs).sum(0, keepdim=True)


def adv_from_masked(model, tokens, weights, word_ids, base_emb):
    """adv_encode.from_masked: per word id (first-occurrence weight ≠ 1), base − masked, on its own slots."""
    first: dict[int, float] = {}
    for i, w in zip([i for r in word_ids for i in r], [w for r in weights for w in r]):
        first.setdefault(i, w)
    weight_dict = {i: first[i] for i in sorted(first) if first[i] != 1.0}
    if not weight_dict:
        return torch.zeros_like(base_emb)
    weight_tensor = torch.tensor(weights, dtype=base_emb.dtype).reshape(1, -1, 1).expand(base_emb.shape)
    embs, masks = [], []
    for wid in weight_dict:
        masked = [[ADV_MASK_TOKEN if i == wid else t for t, i in zip(x, y)] for x, y in zip(tokens, word_ids)]
        embs.append(adv_encode(model, masked))
        m = torch.tensor([i == wid for r in word_ids for i in r], dtype=base_emb.dtype)
        masks.append(m.reshape(1, -1, 1).expand(base_emb.shape))
    embs = (base_emb.expand(len(embs), -1, -1) - torch.cat(embs)) * torch.cat(masks)
    return (weight_tensor - 1) * embs.sum(0, keepdim=True)


def adv_scale_to_norm(weights, word_ids, w_max=1.0):
    top = max(w for r in weights for w in r)
    w_max = min(top, w_max)
    return [[w_max if i == 0 else (w / top) * w_max for w, i in zip(x, y)] for x, y in zip(weights, word_ids)]


def adv_interpret(mode: str, model, tokens, weights, word_ids) -> torch.Tensor:
    """advanced_encode_from_tokens' weighted_emb for "comfy++" / "down_weight" → [R, L, D]."""
    base_emb = adv_encode(model, tokens)
    if mode == "comfy++":
        out = adv_down_weight(model, tokens, weights, base_emb)
        up = [[w if w > 1.0 else 1.0 for w in x] for x in weights]
        out = out + adv_from_masked(model, tokens, up, word_ids, base_emb)
    else:
        out = adv_down_weight(model, tokens, adv_scale_to_norm(weights, word_ids), base_emb)
    return out.reshape(len(tokens), L, -1)


# -- prompts as ComfyUI rows ---------------------------------------------------------------------------

def comfy_rows(fragments: list[tuple[str, float]]) -> tuple[list[list[int]], list[list[float]], list[list[int]]]:
    """(ids, weights, word ids) of rows of 77: each fragment's tokens, 75 to a row, EOS-padded."""
    flat = [(t, w, k + 1) for k, (text, w) in enumerate(fragments) for t in ids_of(text)]
    ids, ws, wids = [], [], []
    for start in range(0, max(len(flat), 1), 75):
        chunk = flat[start : start + 75]
        pad = L - 2 - len(chunk)
        ids.append([BOS] + [t for t, _, _ in chunk] + [EOS] * (pad + 1))
        ws.append([1.0] + [w for _, w, _ in chunk] + [1.0] * (pad + 1))
        wids.append([0] + [i for _, _, i in chunk] + [0] * (pad + 1))
    return ids, ws, wids


def ours(mode: str, model, ids, weights, word_ids) -> torch.Tensor:
    """sdclip: the weighting's plan, its re-encodings by hand, apply_weights."""
    fragments = torch.tensor(word_ids) - 1  # −1 = BOS/EOS/pad
    plan = get_weighting(mode).reencodings(weights, fragments)
    assert isinstance(plan, SubstitutionPlan)
    down = torch.stack([hf_last(model, plan.substituted(ids, k)) for k in range(len(plan))]) if len(plan) else None
    return apply_weights(mode, hf_last(model, ids), torch.tensor(weights), plan=plan, downweighted=down)


PROMPTS = {
    "mixed": [("a ", 1.0), ("red cat", 1.3), (" on a ", 1.0), ("mat", 0.6), (" under ", 1.0), ("the sky", 0.3)],
    "up only": [("a photo of a ", 1.0), ("fox", 1.5), (" in snow", 1.0)],
    "equal down weights": [("a ", 1.0), ("dog", 0.6), (" and ", 1.0), ("cat", 0.6), (" sleeping", 0.8)],
    "zero and big": [("a ", 1.0), ("castle", 0.0), (" at ", 1.0), ("night", 2.0)],
    "all weighted": [("a red fox", 1.3)],
    "two rows": [("tall trees, " * 22, 1.0), ("glowing mushrooms in the dark forest", 1.4),
                 (" wet moss", 0.7), (" fog " * 10, 0.9)],
    "normalised": [("a ", 1.0), ("red cat", 1.3), (" on a ", 1.0), ("mat", 0.6)],
}


@pytest.mark.parametrize("mode", ["comfy++", "down_weight"])
@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_apply_weights_matches_adv_clip_emb(mode, name):
    model = models_of("sd1")[0]
    ids, weights, word_ids = comfy_rows(PROMPTS[name])
    if name == "normalised":  # weights after ADV's "length+mean": non-round values, BOS/EOS/pad left at 1
        flat = [(w, i) for r, q in zip(weights, word_ids) for w, i in zip(r, q) if i != 0]
        normed = iter(TOKEN_NORMALIZATIONS["length+mean"]([w for w, _ in flat], [i for _, i in flat]))
        weights = [[next(normed) if i != 0 else w for w, i in zip(r, q)] for r, q in zip(weights, word_ids)]
    if name == "two rows":
        assert len(ids) == 2 and len({i for i in word_ids[0][1:-1]} & {i for i in word_ids[1]}) >= 1  # a word cut
    got = ours(mode, model, ids, weights, word_ids)
    want = adv_interpret(mode, model, ids, weights, word_ids)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    plain = hf_last(model, ids)
    if (mode, name) == ("down_weight", "all weighted"):  # every word at the top weight: rescaled to 1
        assert torch.equal(got, plain)
    else:
        assert (got - plain).abs().max() > 1e-3  # the weights really changed something


def test_plans_spell_out_the_formulas():
    """One row [BOS, a, b, b, c, EOS]: weights 1, 0.5, 0.5, 1.5, 1 (fragments 0, 1, 1, 2)."""
    w = [[1.0, 1.0, 0.5, 0.5, 1.5, 1.0]]
    frag = torch.tensor([[-1, 0, 1, 1, 2, -1]])
    down = comfy_plus_plus_plan(w, frag)
    # down_weight on raw weights: 0.5·E0 + 0.5·E1 (E1 = b masked); up: (1.5 − 1)·(E0 − E2) on c (E2 = c masked)
    assert down.replaced.tolist() == [[[False, False, True, True, False, False]], [[False, False, False, False, True, False]]]
    assert down.coefficients.tolist() == [[[0.5, 0.5, 0.5, 0.5, 1.0, 0.5]], [[0.5] * 6], [[0, 0, 0, 0, -0.5, 0]]]
    assert down.substituted([[BOS, 1, 2, 2, 3, EOS]], 1) == [(BOS, 1, 2, 2, ADV_MASK_TOKEN, EOS)]
    # down_weight: scaled by 1/1.5 → a 2/3, b 1/3, c 1, BOS/EOS 1: E0/3 + E1/3 + E2/3, masks cumulative
    plan = down_weight_plan(w, frag)
    assert plan.replaced.tolist() == [[[False, False, True, True, False, False]], [[False, True, True, True, False, False]]]
    torch.testing.assert_close(plan.coefficients[:, 0, 0], torch.tensor([1 / 3, 1 / 3, 1 / 3], dtype=torch.float64))
    assert ADV_MASK_TOKEN == 266  # `+</w>` in CLIP's vocabulary, as adv_encode.py's m_token
    # nothing to re-encode: an empty plan, and the rows come back as they are
    assert len(comfy_plus_plus_plan([[1.0, 1.0, 1.0]], torch.tensor([[-1, 0, -1]]))) == 0
    assert len(down_weight_plan([[1.0, 1.3, 1.3, 1.0]], torch.tensor([[-1, 0, 0, -1]]))) == 0  # all words at the top


def test_down_weight_without_a_unit_weight_is_defined():
    """ADV_CLIP_emb crashes when ≥ 2 distinct weights are below 1 and none is exactly 1 (its mix weights
    come from the weights ≤ 1); here the mix is diff([0, w₀, …, 1]) always: 0.25·E0 + 0.25·E1 + 0.5·E2."""
    g = torch.Generator().manual_seed(0)
    z, e1, e2 = (torch.randn(1, 4, 3, generator=g) for _ in range(3))
    w = torch.tensor([[0.25, 0.25, 0.5, 0.5]])
    plan = get_weighting("down_weight").reencodings(w.tolist(), torch.tensor([[0, 0, 1, 1]]))
    assert plan.replaced.tolist() == [[[True, True, False, False]], [[True, True, True, True]]]
    got = apply_weights("down_weight", z, w, plan=plan, downweighted=torch.stack([e1, e2]))
    torch.testing.assert_close(got, 0.25 * z + 0.25 * e1 + 0.5 * e2)


def test_errors_are_one_line_weighting_errors():
    z = torch.randn(1, 6, 4)
    w = torch.tensor([[1.0, 0.5, 1.0, 1.0, 1.0, 1.0]])
    with pytest.raises(WeightingError, match="'comfy\\+\\+' re-encodes the rows"):
        apply_weights("comfy++", z, w)
    plan = down_weight_plan(w.tolist(), torch.tensor([[-1, 0, 1, 1, 1, -1]]))
    with pytest.raises(WeightingError, match="downweighted must be"):
        apply_weights("down_weight", z, w, plan=plan)
    with pytest.raises(WeightingError, match="no positive weight"):
        down_weight_plan([[-1.0, -2.0]], torch.tensor([[0, 0]]))
    ids, masks = plan.rows([[49406, 320, 2368, 3240, 49407, 49407]], 0)  # what an encoder plan builds
    assert masks == [None] and ids[0][1] == 266 and ids[0][0] == 49406  # the 0.5 slot replaced, nothing masked
    torch.testing.assert_close(apply_weights("down_weight", z, torch.ones(1, 6)), z)


# -- end to end through a tiny Conditioner ---------------------------------------------------------------

E2E = ["a (red cat:1.3) on a (mat:0.6) under (the sky:0.3)", "a photo of a (fox:1.5) in snow",
       "tall trees, " * 25 + "(glowing mushrooms in the dark forest:1.4) (wet moss:0.7) (fog:0.9)"]


def _rows_and_word_ids(cond, prompt):
    """The Conditioner's own rows, word ids from TokenStream.fragments (ComfyUI: one group per segment)."""
    part = cond.prepare(prompt).parts[0]
    rows = part.rows[0]
    word_ids = [[0 if t < 0 else part.stream.fragments[t] + 1 for t in r] for r in rows.tokens]
    return rows, word_ids


@pytest.mark.parametrize("mode", ["comfy++", "down_weight"])
@pytest.mark.parametrize("prompt", E2E, ids=["mixed", "up", "two-rows"])
def test_conditioner_matches_adv_clip_emb(mode, prompt):
    model = models_of("sd1")[0]
    cond = make(preset="comfy", weighting=mode)
    rows, word_ids = _rows_and_word_ids(cond, prompt)
    assert len(rows.ids) == (2 if prompt == E2E[-1] else 1)
    want = adv_interpret(mode, model, rows.ids, rows.weights, word_ids).reshape(-1, model.config.hidden_size)
    got = cond(prompt).positive.embeds[0]
    torch.testing.assert_close(got[: want.shape[0]], want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["comfy++", "down_weight"])
def test_conditioner_unit_weights_are_the_plain_encoding(mode):
    prompt = "a photo of a fox in snow"
    got = make(preset="comfy", weighting=mode)(prompt).positive.embeds
    torch.testing.assert_close(got, make(preset="comfy", weighting="none")(prompt).positive.embeds, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["mean", "length", "length+mean"])
def test_conditioner_token_normalization_then_comfy_weighting(name):
    """ADV_CLIP_emb normalises first, then interprets: ComfyUI's lerp from the empty prompt on the
    normalised weights of the Conditioner's rows (word ids from the stream's fragments)."""
    prompt = "a (red cat:1.3) on a (mat:0.6), (wet moss:0.8) and a long (glowing mushroom field:1.2)"
    model = models_of("sd1")[0]
    plain = make(preset="comfy")
    rows, word_ids = _rows_and_word_ids(plain, prompt)
    flat = [(w, i) for r, q in zip(rows.weights, word_ids) for w, i in zip(r, q) if i != 0]
    normed = iter(TOKEN_NORMALIZATIONS[name]([w for w, _ in flat], [i for _, i in flat]))
    weights = torch.tensor([[next(normed) if i != 0 else w for w, i in zip(r, q)] for r, q in zip(rows.weights, word_ids)])
    z, e = hf_last(model, rows.ids), hf_last(model, [[BOS, EOS] + [EOS] * (L - 2)])
    want = (e + (z - e) * weights.unsqueeze(-1)).reshape(-1, z.shape[-1])
    got = make(preset="comfy", token_normalization=name)(prompt).positive.embeds[0]
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert (got - plain(prompt).positive.embeds[0]).abs().max() > 1e-3
