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

import pytest
import torch
from a1111_models import a1111_encode, conditioner, family_models, long_prompt
from a1111_oracle import EOS, parse_attention, tokenize_line

from sdclip.conditioner import Conditioner

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
