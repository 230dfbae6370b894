"""a1111 preset vs an independent AUTOMATIC1111 oracle written here, on shared random-weight models.

The text side of the oracle (parsing, chunking) is tests/a1111_oracle.py; here is its model side:

- encoding per chunk index (batch of one prompt): SD1 ``hidden_states[-clip_skip]`` + final LayerNorm (the
  last hidden state for clip skip 1); SD2 the penultimate layer + final LayerNorm; SDXL both encoders at the
  penultimate layer without final LayerNorm, concatenated on features (L ‖ G), pooled from bigG's projected
  EOS state of the first chunk.
- emphasis "Original" (``modules/sd_emphasis.py``): z' = z·w, z' *= mean(z) / mean(z') with scalar means
  over the whole chunk (batch of one); SDXL: per encoder.
- cond/uncond of different chunk counts: the shorter is padded with the encoding of the empty prompt
  (``pad_cond_uncond``), one 77-slot chunk per missing chunk.

The tiny models come from tests/tiny_models (every parameter random, LayerNorm biases included, so the
chunk means are far from 0 and the mean restoration is well conditioned; checked below).
"""

from __future__ import annotations

import functools

import pytest
import torch
from a1111_oracle import BOS, EOS, parse_attention, tokenize_line
from tiny_models import tiny_family
from transformers import CLIPTextModelWithProjection

from sdclip.conditioner import Conditioner
from sdclip.encoder import encoders_from_modules
from sdclip.conventions.presets import Options

def _text_model(model):
    return model.text_model if isinstance(model, CLIPTextModelWithProjection) else model


@torch.no_grad()
def encode_chunk(
    model,
    ids: list[int],
    *,
    pad_zero: bool,
    layer: int,
    final_norm: bool,
    fixes: list[tuple[int, str]] = (),
    embeddings: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk through a transformers model: hidden_states[layer] (+ final LN) [77, D] and, for a
    projection model, its pooled text_embeds [P]. Embedding vectors replace the token embeddings of their
    slots (after BOS), as A1111's EmbeddingsWithFixes does."""
    ids = list(ids)
    if pad_zero:
        first = ids.index(EOS)
        ids = ids[: first + 1] + [0] * (len(ids) - first - 1)
    t = _text_model(model)
    handle = None
    if fixes:

        def hook(module, inputs, out):  # noqa: ANN001, ANN202
            out = out.clone()
            for slot, name in fixes:
                vec = embeddings[name]
                out[0, slot + 1 : slot + 1 + vec.shape[0]] = vec.to(out.dtype)
            return out

        handle = t.embeddings.token_embedding.register_forward_hook(hook)
    try:
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    finally:
        if handle is not None:
            handle.remove()
    hs = out.hidden_states[layer][0]
    if final_norm:
        hs = t.final_layer_norm(hs)
    pooled = out.text_embeds[0] if isinstance(model, CLIPTextModelWithProjection) else None
    return hs, pooled


def emphasis_original(z: torch.Tensor, mults: list[float]) -> torch.Tensor:
    original = z.mean()
    weighted = z * torch.tensor(mults).reshape(-1, 1)
    return weighted * (original / weighted.mean())


#: family → per encoder: (pad with 0 after EOS?, final LN?) ; the layer comes from the clip skip
_ENCODERS = {
    "sd1": ((False, True),),
    "sd2": ((True, True),),
    "sdxl": ((False, False), (True, False)),
}


def a1111_encode(
    models, family: str, text: str, *, clip_skip: int = 1, n_chunks: int | None = None, embeddings=None
) -> tuple[torch.Tensor, torch.Tensor | None, list[float]]:
    """(cond [77k, D], pooled or None, |chunk means|) as AUTOMATIC1111 computes it; `n_chunks` pads with
    empty-prompt chunks (pad_cond_uncond)."""
    chunks = tokenize_line(text, embeddings=embeddings)
    empty = tokenize_line("")[0]
    if n_chunks is not None:
        chunks = chunks + [empty] * (n_chunks - len(chunks))
    layer = {"sd1": -clip_skip, "sd2": -2, "sdxl": -2}[family]
    per_encoder, pooled, means = [], None, []
    for model, (pad_zero, final_norm) in zip(models, _ENCODERS[family]):
        zs = []
        for k, (ids, mults, fixes) in enumerate(chunks):
            if family == "sd1" and clip_skip == 1:
                z, p = encode_chunk(model, ids, pad_zero=pad_zero, layer=-1, final_norm=False, fixes=fixes, embeddings=embeddings)
                z = _text_model(model).final_layer_norm(z)  # last_hidden_state
            else:
                z, p = encode_chunk(model, ids, pad_zero=pad_zero, layer=layer, final_norm=final_norm, fixes=fixes, embeddings=embeddings)
            means.append(abs(float(z.mean())))
            zs.append(emphasis_original(z, mults))
            if k == 0 and p is not None:
                pooled = p
        per_encoder.append(torch.cat(zs, dim=0))
    return torch.cat(per_encoder, dim=-1), pooled, means


# ---------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def family_models(family: str):
    """Tiny random transformers models of a family (built once per process).

    A random model's hidden states have a mean near 0, where A1111's mean restoration mean(z)/mean(z·w)
    is ill-conditioned (a 1e-6 difference becomes a 1 % one); a constant added to the position embedding
    and the final LayerNorm bias moves every chunk mean well away from 0 (asserted per chunk)."""
    models = tiny_family(family, seed=7).models
    with torch.no_grad():
        for m in models:
            t = _text_model(m)
            t.embeddings.position_embedding.weight.add_(0.25)
            t.final_layer_norm.bias.add_(0.25)
    return models


def conditioner(family: str, **overrides) -> Conditioner:
    models = family_models(family)
    loaded = encoders_from_modules(models)
    assert loaded.family == family
    return Conditioner(loaded.encoders, family, Options.preset("a1111", **overrides))


_TAGS = (
    "masterpiece", "best quality", "a red fox", "snowy pine forest", "golden hour light", "volumetric fog",
    "intricate fur detail", "sharp focus", "depth of field", "cinematic composition", "soft rim lighting",
    "highly detailed background", "ancient stone bridge", "river reflections", "distant mountains",
)


def long_prompt(n_tags: int, seed: int = 0) -> str:
    """Comma-separated tags with A1111 syntax sprinkled in (weights, nesting, [x], escapes)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_tags):
        tag = _TAGS[int(torch.randint(len(_TAGS), (1,), generator=g))]
        kind = i % 6
        if kind == 1:
            tag = f"({tag}:1.{int(torch.randint(1, 6, (1,), generator=g))})"
        elif kind == 3:
            tag = f"(({tag}))"
        elif kind == 4:
            tag = f"[{tag}]"
        out.append(tag)
    return ", ".join(out)


PROMPTS = {
    # REFERENCE's example: one "(" left open, so 1.1 applies to the rest; then ≥ 3 chunks of tags
    "reference_example_long": "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))). " + long_prompt(60, 1),
    "break_and_nesting": "((a (tall:1.2) [dark] tower)), night BREAK " + long_prompt(30, 2)
    + " BREAK \\(escaped\\) \\[brackets\\] and a back\\\\slash, (weighted:0.7)",
    "break_at_start": "BREAK a lonely (lighthouse:1.4), [stormy sea]",
    # 90 words without a comma: the chunk border is a hard cut (no backtrack); then commas again
    "no_commas": " ".join(["(big:1.1) red balloon over the quiet town"] * 12) + ", " + long_prompt(25, 3),
    "stray_closers": "a) stray] closer (:1.2) and (unclosed [square",
}
NEGATIVES = {"short": "blurry, (worst quality:1.4), lowres", "none": "", "long": long_prompt(40, 9)}


def _chunks(text: str) -> int:
    return len(tokenize_line(text))


def test_oracle_parser_matches_the_documented_example() -> None:
    """The oracle's parser reproduces A1111's own documented example (REFERENCE §4), so it can judge ours."""
    got = parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    want = [["a ", 1.0], ["house", 1.573], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
            [", sun, ", 1.1], ["sky", 1.4641], [".", 1.1]]
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [w for _, w in got] == pytest.approx([w for _, w in want], rel=1e-12)
    assert parse_attention("a BREAK b") == [["a", 1.0], ["BREAK", -1], ["b", 1.0]]
    assert parse_attention("\\(x\\) \\\\") == [["(x) \\", 1.0]]


def test_prompts_exercise_what_they_claim() -> None:
    """Guard the test data: long prompts really span ≥ 3 chunks and the comma backtrack really fires."""
    assert _chunks(PROMPTS["reference_example_long"]) >= 3
    assert _chunks(PROMPTS["break_and_nesting"]) >= 3
    assert _chunks(PROMPTS["break_at_start"]) == 2
    first = tokenize_line(PROMPTS["reference_example_long"])[0][0]
    assert first.index(EOS) < 76  # backtracked: the first chunk ends early
    assert tokenize_line(PROMPTS["reference_example_long"], backtrack=0)[0][0].index(EOS) == 76
    assert _chunks(NEGATIVES["long"]) == 2 and _chunks(NEGATIVES["short"]) == 1


def _check(cond: Conditioner, family: str, prompt: str, negative: str, clip_skip: int = 1) -> None:
    models = family_models(family)
    pair = cond(prompt, negative=negative)
    n = max(_chunks(prompt), _chunks(negative))
    want_pos, pooled_pos, means_p = a1111_encode(models, family, prompt, clip_skip=clip_skip, n_chunks=n)
    want_neg, pooled_neg, means_n = a1111_encode(models, family, negative, clip_skip=clip_skip, n_chunks=n)
    # the mean restoration is only meaningful when chunk means are clearly non-zero
    assert min(means_p + means_n) > 0.05
    assert pair.positive.embeds.shape == pair.negative.embeds.shape == (1, 77 * n, want_pos.shape[-1])
    torch.testing.assert_close(pair.positive.embeds[0], want_pos, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pair.negative.embeds[0], want_neg, rtol=1e-4, atol=1e-4)
    if family == "sdxl":
        torch.testing.assert_close(pair.positive.pooled[0], pooled_pos, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pair.negative.pooled[0], pooled_neg, rtol=1e-4, atol=1e-4)
    else:
        assert pair.positive.pooled is None


@pytest.mark.parametrize("clip_skip", [1, 2])
@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_sd1_matches_a1111(name: str, clip_skip: int) -> None:
    cond = conditioner("sd1", clip_skip=clip_skip)
    negative = NEGATIVES["long"] if name == "break_at_start" else NEGATIVES["short"]
    _check(cond, "sd1", PROMPTS[name], negative, clip_skip)


@pytest.mark.parametrize("name", ["reference_example_long", "break_and_nesting", "stray_closers"])
def test_sd2_matches_a1111(name: str) -> None:
    """SD2: OpenCLIP pads with 0 after the first EOS; penultimate layer + final LN (the default clip skip)."""
    _check(conditioner("sd2"), "sd2", PROMPTS[name], NEGATIVES["short"])


@pytest.mark.parametrize("name,negative", [("break_and_nesting", "none"), ("break_at_start", "long")])
def test_sdxl_matches_a1111(name: str, negative: str) -> None:
    """SDXL: L (EOS pad) ‖ G (0 pad), penultimate without final LN, emphasis per encoder, pooled from G's
    first chunk."""
    _check(conditioner("sdxl"), "sdxl", PROMPTS[name], NEGATIVES[negative])


def test_batch_mean_is_per_prompt() -> None:
    """Each prompt of a batch gets what it gets alone, i.e. A1111 at batch size 1. (A1111 itself takes the
    emphasis means over all distinct prompts of a batch, so its result depends on the batch companions;
    sdclip deliberately does not.)"""
    cond = conditioner("sd1")
    prompts = [PROMPTS["stray_closers"], PROMPTS["break_and_nesting"]]
    pair = cond(prompts, negative=NEGATIVES["short"])
    n = max(_chunks(p) for p in prompts)
    for b, p in enumerate(prompts):
        want, _, _ = a1111_encode(family_models("sd1"), "sd1", p, n_chunks=n)
        torch.testing.assert_close(pair.positive.embeds[b], want, rtol=1e-4, atol=1e-4)
