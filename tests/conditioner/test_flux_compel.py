"""compel's own Flux support (`compel.CompelForFlux`, compel 2.5.1) as the oracle of the compel preset on
Flux: T5 carries compel's weighting (lerp from the empty encoding for w ≠ 1, masked re-encodings mixed in
for w < 1), CLIP-L gives the pooled vector of the prompt with weights stripped (never weighted)."""

from __future__ import annotations

import warnings

import pytest
import torch

from sdclip.pipelines import conditioner_from_pipeline
from tiny_pipelines import flux_pipeline

PROMPTS = ["a red fox in a forest", "a (red)1.5 fox in a forest", "a red fox (in a misty forest)0.5",
           "a red++ fox, blue-- sky", "a red fox, " * 40]


@pytest.fixture(scope="module")
def pair():
    from compel import CompelForFlux

    pipe = flux_pipeline(seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = CompelForFlux(pipe)
    return oracle, conditioner_from_pipeline(pipe, preset="compel")


@pytest.mark.parametrize("prompt", PROMPTS, ids=["plain", "up", "down", "plus-minus", "long"])
def test_compel_preset_equals_compel_for_flux(pair, prompt):
    oracle, ours = pair
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = oracle(prompt, negative_prompt="blurry")
    got = ours(prompt, "blurry")
    for a, b in ((got.positive.embeds, theirs.embeds), (got.positive.pooled, theirs.pooled_embeds),
                 (got.negative.embeds, theirs.negative_embeds), (got.negative.pooled, theirs.negative_pooled_embeds)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_weights_change_t5_but_not_pooled(pair):
    _, ours = pair
    plain, weighted = ours("a red fox in a forest"), ours("a (red)1.5 fox in a forest")
    assert not torch.allclose(plain.positive.embeds, weighted.positive.embeds, atol=1e-3)
    assert torch.equal(plain.positive.pooled, weighted.positive.pooled)
