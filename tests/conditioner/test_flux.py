"""Flux: parity with diffusers' FluxPipeline.encode_prompt on a tiny random pipeline (CLIP-L pooled only,
unprojected, from the final LN at EOS; T5 [B, 512, 384]), generation from our tensors, and the ComfyUI
preset's Flux rules (T5 minimum 256, no maximum, pad 0, its lerp weighting on T5, CLIP-L unprojected pooled).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdclip.pipelines import conditioner_from_pipeline, pipeline_kwargs
from tiny_pipelines import T5_WIDTH, flux_pipeline, generate

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
PROMPT = "a red fox in a misty forest, highly detailed, golden hour"
LONG = ", ".join(f"a {c} fox with {c} eyes under a {c} sky" for c in
                 ("red", "blue", "green", "golden", "silver", "purple", "orange", "white", "black", "pink") * 6)


@pytest.fixture(scope="module")
def flux():
    return flux_pipeline()


@pytest.fixture(scope="module")
def cond(flux):
    return conditioner_from_pipeline(flux)


@torch.no_grad()
def reference(pipe, prompt, prompt_2=None, **kw) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    embeds, pooled, _ = pipe.encode_prompt(prompt, prompt_2, device="cpu", **kw)
    return embeds, pooled


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prompt", [PROMPT, "", LONG], ids=["short", "empty", "long-truncated"])
def test_parity_with_encode_prompt(flux, cond, prompt):
    ours = cond(prompt).diffusers_kwargs()
    embeds, pooled = reference(flux, prompt)
    close(ours["prompt_embeds"], embeds)
    close(ours["pooled_prompt_embeds"], pooled)
    assert ours["prompt_embeds"].shape == (1, 512, T5_WIDTH) and ours["pooled_prompt_embeds"].shape == (1, 128)


def test_negative_is_encoded_like_a_prompt(flux, cond):
    """FluxPipeline encodes negative_prompt with the same encode_prompt (used with true_cfg_scale > 1)."""
    ours = cond(PROMPT, "blurry").diffusers_kwargs()
    embeds, pooled = reference(flux, "blurry")
    close(ours["negative_prompt_embeds"], embeds)
    close(ours["negative_pooled_prompt_embeds"], pooled)


def test_prompt_2_goes_to_t5(flux, cond):
    ours = cond(PROMPT, prompt_2="an oil painting of a cat").diffusers_kwargs()
    embeds, pooled = reference(flux, PROMPT, "an oil painting of a cat")
    close(ours["prompt_embeds"], embeds)
    close(ours["pooled_prompt_embeds"], pooled)


def test_max_sequence_length(flux):
    c = conditioner_from_pipeline(flux, max_sequence_length=256)
    embeds, pooled = reference(flux, LONG, max_sequence_length=256)
    close(c(LONG).diffusers_kwargs()["prompt_embeds"], embeds)
    assert "T5:" in c.prepare(LONG).dropped


def test_same_image_from_our_tensors(flux, cond):
    theirs = generate(flux, prompt=PROMPT)
    kwargs = pipeline_kwargs(flux, PROMPT, conditioner=cond)
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("negative")}
    np.testing.assert_allclose(generate(flux, **kwargs), theirs, atol=1e-4)


def test_true_cfg_uses_our_negative(flux, cond):
    theirs = generate(flux, prompt=PROMPT, negative_prompt="blurry", true_cfg_scale=2.0)
    ours = generate(flux, true_cfg_scale=2.0, **pipeline_kwargs(flux, PROMPT, "blurry", conditioner=cond))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# ---- the ComfyUI preset -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def comfy(flux):
    return conditioner_from_pipeline(flux, preset="comfy")


def _t5(flux, ids: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return flux.text_encoder_2(torch.tensor(ids))[0]


def test_comfy_t5_minimum_256_pad_0_no_maximum(flux, comfy):
    short = comfy.prepare(PROMPT).parts[0].rows[1]
    assert short.length == 256 and short.ids[0][short.eos[0]] == 1 and set(short.ids[0][short.eos[0] + 1:]) == {0}
    long = comfy.prepare(LONG).parts[0].rows[1]
    n = len(comfy.t5_tokenizer.encode(LONG)) + 1
    assert n > 512 and long.length == n and not long.dropped  # never truncated
    embeds = comfy(LONG).positive.embeds
    assert embeds.shape == (1, n, T5_WIDTH)
    torch.testing.assert_close(embeds[0], _t5(flux, long.ids)[0], rtol=1e-4, atol=1e-4)


def test_comfy_lerp_weighting_on_t5_and_unweighted_pooled(flux, comfy):
    text = "a (red:1.5) fox in a forest"
    rows = comfy.prepare(text).parts[0].rows[1]
    z = _t5(flux, rows.ids)[0]
    empty = _t5(flux, [[1] + [0] * (rows.length - 1)])[0]  # ComfyUI's gen_empty_tokens for T5: [</s>, pad…]
    w = torch.tensor(rows.weights[0]).unsqueeze(-1)
    expected = torch.where(w == 1, z, empty + (z - empty) * w)
    assert bool((w != 1).any())
    pair = comfy(text)
    torch.testing.assert_close(pair.positive.embeds[0], expected, rtol=1e-4, atol=1e-4)
    # pooled: CLIP-L's unprojected pooler output, never weighted
    assert torch.equal(pair.positive.pooled, comfy("a red fox in a forest").positive.pooled)


def test_comfy_tokenizes_fragments_alone(comfy):
    """ComfyUI tokenizes each weighted segment alone (T5TokenizerFast, trailing </s> dropped)."""
    tok = comfy.t5_tokenizer
    rows = comfy.prepare("a (red:1.5) fox").parts[0].rows[1]
    n = rows.eos[0]
    assert rows.ids[0][:n] == tok.encode("a ") + tok.encode("red") + tok.encode(" fox")


def test_comfy_positive_and_negative_share_the_t5_length(comfy):
    pair = comfy(LONG, "blurry")
    assert pair.positive.embeds.shape == pair.negative.embeds.shape
