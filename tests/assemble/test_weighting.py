"""Weighting formulas against their peers: compel itself (run offline on a tiny random CLIP), and
ComfyUI / AUTOMATIC1111 / diffusers LPW-XL loops transcribed from their sources as oracles."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdclip.assemble.weighting import (
    WEIGHTINGS,
    CompelPlan,
    WeightingError,
    apply_weights,
    compel_downweight_plan,
    compel_mix,
    slot_fragments,
)

from clip_files import write_tokenizer

transformers = pytest.importorskip("transformers")
compel = pytest.importorskip("compel")

BOS, EOS, L = 49406, 49407, 77


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The real CLIP BPE as a transformers CLIPTokenizer, built offline from our bundled vocabulary."""
    folder = write_tokenizer(tmp_path_factory.mktemp("clip_tok"))
    tok = transformers.CLIPTokenizer.from_pretrained(str(folder), model_max_length=L)
    assert tok("a photo").input_ids == [BOS, 320, 1125, EOS]  # known CLIP ids: the vocabulary is real
    return tok


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=L, hidden_act="quick_gelu", bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS,
    )
    return transformers.CLIPTextModel(cfg).eval()


def encode(model, ids, mask=None) -> torch.Tensor:
    with torch.no_grad():
        ids = torch.as_tensor(ids, dtype=torch.long)
        mask = None if mask is None else torch.as_tensor(mask, dtype=torch.long)
        return model(ids, mask).last_hidden_state


def compel_fragments(prompt: str) -> tuple[list[str], list[float]]:
    """compel's own parse of the prompt (the parser is not under test here)."""
    from compel.prompt_parser import PromptParser

    flat = PromptParser().parse_conjunction(prompt).prompts[0]
    return [f.text for f in flat.children], [f.weight for f in flat.children]


def one_row(tokenizer, fragments, weights):
    """[1, L] ids/weights/fragment-per-slot for fragments that fit one row (SD1 padding with EOS)."""
    ids, ws, frag = [BOS], [1.0], [-1]
    for i, (text, w) in enumerate(zip(fragments, weights)):
        t = tokenizer(text, add_special_tokens=False).input_ids
        ids += t
        ws += [w] * len(t)
        frag += [i] * len(t)
    assert len(ids) < L
    pad = L - len(ids)
    return [ids + [EOS] * pad], [ws + [1.0] * pad], torch.tensor([frag + [-1] * pad])


def ours_compel(model, ids, weights, frag):
    weights = torch.as_tensor(weights)
    z = encode(model, ids)
    empty = encode(model, [[BOS] + [EOS] * (L - 1)])[0]
    plan = compel_downweight_plan(weights, frag)
    down = torch.stack([encode(model, ids, m) for m in plan.attention_masks]) if len(plan) else None
    return apply_weights("compel", z, weights, empty=empty, downweighted=down, plan=plan), plan


COMPEL_PROMPTS = [
    "a cat++ on a mat",  # up-weight only
    "a (red cat)1.3 sitting on a mat",
    "a cat on a (big mat)0.5",  # down-weight only
    "a cat on a (big mat)0",  # w = 0: compel clamps to 1e-5
    "a (red cat)1.4 on a mat-- and dog- under (the sky)0.3",  # mixes, three re-encodings
    "(first words)0.7 then normal",
]


@pytest.mark.parametrize("prompt", COMPEL_PROMPTS)
def test_compel_matches_compel(prompt, tokenizer, model):
    fragments, weights = compel_fragments(prompt)
    ids, ws, frag = one_row(tokenizer, fragments, weights)
    ours, plan = ours_compel(model, ids, ws, frag)
    with torch.no_grad():
        theirs = compel.Compel(tokenizer=tokenizer, text_encoder=model)(prompt)
    assert len(plan) == sum(w < 1 for w in weights)
    assert theirs.shape == ours.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    if any(w != 1 for w in weights):  # the weighting really did something
        assert (ours - encode(model, ids)).abs().max() > 1e-3


def test_compel_multi_chunk_matches_compel(tokenizer, model):
    """Long prompt, compel's own chunk layout (truncate off, no CLS copy): rows weighted and mixed alike."""
    from compel.embeddings_provider import EmbeddingsProvider, SplitLongTextMode

    text = "a (small red house)0.6 on a hill. " + "green grass and tall trees, " * 12 + "a (blue sky)1.3 and (dark clouds)0.4."
    fragments, weights = compel_fragments(text)
    ep = EmbeddingsProvider(tokenizer, model, truncate=False, split_long_text_mode=SplitLongTextMode.SENTENCES)
    with torch.no_grad():
        theirs = ep.get_embeddings_for_weighted_prompt_fragments([fragments], [weights])
    tokens, per_token, _ = ep.get_token_ids_and_expand_weights(fragments, weights, device="cpu")
    ranges = ep._get_token_ranges_for_fragments(tokens.tolist(), fragments)
    frag = torch.full((len(tokens),), -1)
    for f, (a, b) in enumerate(ranges):
        if a is not None:
            frag[a : b + 1] = f
    R = len(tokens) // L
    assert R >= 2
    ours, plan = ours_compel(model, tokens.view(R, L), per_token.view(R, L), frag.view(R, L))
    assert len(plan) == 2
    torch.testing.assert_close(ours.reshape(1, R * L, -1), theirs, atol=1e-5, rtol=0)


def comfy_oracle(z, z_empty, weights):
    """ComfyUI comfy/sd1_clip.py ClipTokenWeightEncoder.encode_token_weights, its weighting loop."""
    z = z.clone()
    for i in range(len(z)):
        for j in range(len(z[i])):
            weight = weights[i][j]
            if weight != 1.0:
                z[i][j] = (z[i][j] - z_empty[j]) * weight + z_empty[j]
    return z


@pytest.mark.parametrize("pad", [EOS, 0])  # SD1 pads with EOS, SD2/SDXL-G with 0
def test_comfy_matches_comfyui_loop(pad, tokenizer, model):
    fragments, weights = ["a ", "red", " fox in ", "snow", " at night"], [1.0, 1.5, 1.0, 0.7, 1.1]
    ids, ws, _ = one_row(tokenizer, fragments, weights)
    ids2, ws2, _ = one_row(tokenizer, ["night ", "city"], [0.8, 1.0])
    rows = [[p if k <= r.index(EOS) else pad for k, p in enumerate(r)] for r in ids + ids2]
    z = encode(model, rows)
    empty = encode(model, [[BOS, EOS] + [pad] * (L - 2)])[0]
    w = torch.tensor(ws + ws2)
    ours = apply_weights("comfy", z, w, empty=empty)
    torch.testing.assert_close(ours, comfy_oracle(z, empty, w.tolist()), atol=1e-6, rtol=0)
    assert torch.equal(ours[w == 1], z[w == 1])  # untouched slots stay bit-exact
    assert torch.equal(apply_weights("comfy", z, w, empty=empty.expand(2, L, -1)), ours)


def a1111_oracle(z, multipliers):
    """AUTOMATIC1111 modules/sd_emphasis.py EmphasisOriginal.after_transformers for one chunk index."""
    original_mean = z.mean()
    z = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
    new_mean = z.mean()
    return z * (original_mean / new_mean)


def test_a1111_groups_match_a1111_per_chunk_index():
    torch.manual_seed(1)
    B, k = 3, 2  # 3 prompts of 2 chunks: A1111 encodes chunk i of all prompts together
    # synthetic states with a clear mean: a random-init CLIP's final LayerNorm (bias 0) gives slot means
    # of ~0, where mean(z)/mean(z·w) is ill-conditioned in any precision
    z = torch.randn(B * k, L, 32, dtype=torch.float64) * 0.8 - 0.15
    w = torch.where(torch.rand(B * k, L) < 0.3, torch.rand(B * k, L) * 1.5 + 0.2, torch.ones(B * k, L)).double()
    w[:, 0] = w[:, -1] = 1.0
    groups = [[b * k + i for b in range(B)] for i in range(k)]
    ours = apply_weights("a1111", z.float(), w.float(), groups=groups)
    for g in groups:
        torch.testing.assert_close(ours[g].double(), a1111_oracle(z[g], w[g]), atol=2e-6, rtol=1e-5)
    # default: each row its own mean
    alone = apply_weights("a1111", z.float(), w.float())
    for r in range(B * k):
        torch.testing.assert_close(alone[r].double(), a1111_oracle(z[r : r + 1], w[r : r + 1])[0], atol=2e-6, rtol=1e-5)
    assert not torch.allclose(alone, ours)  # the grouping matters


def test_a1111_bf16_means_in_float32():
    torch.manual_seed(2)
    z = torch.randn(2, L, 64, dtype=torch.float64) + 0.05
    w = torch.ones(2, L, dtype=torch.float64)
    w[:, 3:9] = 1.3
    ours = apply_weights("a1111", z.to(torch.bfloat16), w.float())
    assert ours.dtype == torch.bfloat16
    exact = torch.cat([a1111_oracle(z[r : r + 1], w[r : r + 1]) for r in range(2)])
    # only the final bf16 rounding remains (half an ulp of bf16 ≈ 0.4 %)
    torch.testing.assert_close(ours.double(), exact, atol=1e-2, rtol=8e-3)


def lpw_xl_oracle(token_embedding, weight_tensor):
    """diffusers community lpw_stable_diffusion_xl.py get_weighted_text_embeddings_sdxl, its loop."""
    token_embedding = token_embedding.clone()
    for j in range(len(weight_tensor)):
        if weight_tensor[j] != 1.0:
            token_embedding[j] = token_embedding[-1] + (token_embedding[j] - token_embedding[-1]) * weight_tensor[j]
    return token_embedding


def test_lerp_eos_matches_lpw_xl_on_unpadded_rows(tokenizer, model):
    # float16-exact weights: LPW-XL rounds its weights to float16, which we deliberately do not copy
    ids, ws, _ = one_row(tokenizer, ["a ", "golden", " retriever on a ", "beach", " at dusk"], [1.0, 1.5, 1.0, 0.5, 1.25])
    n = ids[0].index(EOS) + 1
    unpadded = encode(model, [ids[0][:n]])[0]  # LPW-XL: [BOS] + tokens + [EOS], no padding
    theirs = lpw_xl_oracle(unpadded, torch.tensor(ws[0][:n], dtype=torch.float16))
    ours = apply_weights("lerp-eos", encode(model, ids), torch.tensor(ws), eos=[n - 1])
    torch.testing.assert_close(ours[0, :n], theirs, atol=1e-5, rtol=0)


def test_no_norm_and_none():
    torch.manual_seed(3)
    z, w = torch.randn(2, L, 8), torch.rand(2, L) + 0.5
    torch.testing.assert_close(apply_weights("no-norm", z, w), z * w[..., None])
    assert apply_weights("none", z, w) is z


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(WEIGHTINGS), rows=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_unit_weights_change_nothing(mode, rows, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, L, 8, generator=g)
    ones = torch.ones(rows, L)
    out = apply_weights(mode, z, ones, empty=torch.randn(L, 8, generator=g), eos=[5] * rows,
                        plan=compel_downweight_plan(ones, torch.full((rows, L), -1)))
    assert torch.equal(out, z)


def test_compel_plan_masks_only_downweighted_fragments():
    w = torch.tensor([[1.0, 1.2, 1.2, 0.5, 0.5, 1.0, 0.9, 1.0]], dtype=torch.float64)
    frag = torch.tensor([[-1, 0, 0, 1, 1, 2, 3, -1]])
    plan = compel_downweight_plan(w, frag)
    assert plan.fragments == (1, 3) and plan.weights == (0.5, 0.9)
    assert plan.attention_masks.tolist() == [[[1, 1, 1, 0, 0, 1, 1, 1]], [[1, 1, 1, 1, 1, 1, 0, 1]]]
    assert plan.mix_weights[1].item() == pytest.approx(1.0)  # w = 0.5 → tan(π/4)
    assert plan.mix_weights[2].item() == pytest.approx(math.tan(0.1 * math.pi / 2))


def test_compel_mix_is_normalised_average():
    base, down = torch.zeros(1, 4, 2), torch.ones(1, 1, 4, 2)
    plan = CompelPlan((0,), (0.5,), torch.ones(1, 1, 4, dtype=torch.int64))
    torch.testing.assert_close(compel_mix(base, down, plan), torch.full((1, 4, 2), 0.5))


def test_slot_fragments_maps_tokens_by_span():
    spans = [(0, 1), (2, 5), (5, 6), (7, 10)]
    tokens = [[-1, 0, 1, 2, 3, -1]]
    got = slot_fragments(tokens, spans, [(0, 2), (2, 7), (7, 10)])
    assert got.tolist() == [[-1, 0, 1, 1, 2, -1]]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("mode", WEIGHTINGS)
def test_non_finite_weights_refused(mode, bad):
    w = torch.ones(1, L)
    w[0, 4] = bad
    with pytest.raises(ValueError, match="finite"):
        apply_weights(mode, torch.randn(1, L, 4), w, empty=torch.zeros(L, 4), eos=[2])


def test_bad_inputs_are_clear_errors():
    z, w = torch.randn(2, L, 4), torch.ones(2, L)
    with pytest.raises(WeightingError, match="unknown weighting"):
        apply_weights("sdnext", z, w)
    with pytest.raises(WeightingError, match=r"\[R, L\]"):
        apply_weights("no-norm", z, torch.ones(2, 76))
    with pytest.raises(WeightingError, match="float tensor"):
        apply_weights("no-norm", z[0], w)
    with pytest.raises(WeightingError, match="empty="):
        apply_weights("comfy", z, w * 1.1)
    with pytest.raises(WeightingError, match="empty must be"):
        apply_weights("comfy", z, w, empty=torch.zeros(76, 4))
    with pytest.raises(WeightingError, match="eos="):
        apply_weights("lerp-eos", z, w)
    with pytest.raises(WeightingError, match="one slot"):
        apply_weights("lerp-eos", z, w, eos=[3, 77])
    with pytest.raises(WeightingError, match="groups"):
        apply_weights("a1111", z, w, groups=[[0]])
    with pytest.raises(WeightingError, match="undefined"):
        apply_weights("a1111", z, w * 0)
    half = w.clone()
    half[0, 3] = 0.5
    with pytest.raises(WeightingError, match="plan="):
        apply_weights("compel", z, half, empty=torch.zeros(L, 4))
    frag = torch.full((2, L), -1)
    with pytest.raises(WeightingError, match="no fragment"):
        compel_downweight_plan(half, frag)
    frag[0, 3:5] = 0
    with pytest.raises(WeightingError, match="several weights"):
        compel_downweight_plan(half, frag)
    frag[0, 4] = 1
    plan = compel_downweight_plan(half, frag)
    with pytest.raises(WeightingError, match="downweighted must be"):
        apply_weights("compel", z, half, empty=torch.zeros(L, 4), plan=plan)
    with pytest.raises(WeightingError, match="needs plan"):
        apply_weights("compel", z, w, empty=torch.zeros(L, 4), downweighted=z[None])
