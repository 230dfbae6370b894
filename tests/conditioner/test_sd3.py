"""SD3 / SD3.5: parity with diffusers' StableDiffusion3Pipeline.encode_prompt on a tiny random pipeline
(tests/tiny_pipelines.sd3_pipeline: CLIP-L with projection, CLIP-G, T5 384 wide), and generation from our
tensors equal to the pipeline's own prompt path.

diffusers' recipe: CLIP-L ‖ CLIP-G penultimate (no final LN) [B, 77, 320] zero-padded on features to T5's
width, then T5 [B, max_sequence_length, 384] on the token axis; pooled = L ‖ G projected. Known difference,
asserted: diffusers encodes the negative without clip skip (a bug not copied).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdclip.conditioner import Conditioner
from sdclip.pipelines import conditioner_from_pipeline, pipeline_kwargs
from tiny_pipelines import T5_WIDTH, generate, sd3_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
NAMES = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
PROMPT = "a red fox in a misty forest, highly detailed, golden hour"
NEGATIVE = "blurry, lowres, watermark"
LONG = ", ".join(f"a {c} fox with {c} eyes under a {c} sky" for c in
                 ("red", "blue", "green", "golden", "silver", "purple", "orange", "white", "black", "pink") * 3)


@pytest.fixture(scope="module")
def sd3():
    return sd3_pipeline()


@pytest.fixture(scope="module")
def cond(sd3):
    return conditioner_from_pipeline(sd3)


@torch.no_grad()
def reference(pipe, prompt, negative=None, **kw) -> dict[str, torch.Tensor]:  # noqa: ANN001
    out = pipe.encode_prompt(prompt, kw.pop("prompt_2", None), kw.pop("prompt_3", None), device="cpu",
                             negative_prompt=negative, **kw)
    return dict(zip(NAMES, out))


def close(ours: dict, theirs: dict, names=NAMES) -> None:  # noqa: ANN001
    for name in names:
        assert ours[name].shape == theirs[name].shape, name
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("prompt, negative", [(PROMPT, NEGATIVE), (PROMPT, None), ("", None), (LONG, LONG[:300])],
                         ids=["short", "no-negative", "empty", "long-truncated"])
def test_parity_with_encode_prompt(sd3, cond, prompt, negative):
    ours = cond(prompt, negative).diffusers_kwargs()
    close(ours, reference(sd3, prompt, negative))
    assert ours["prompt_embeds"].shape == (1, 77 + 256, T5_WIDTH)
    assert ours["pooled_prompt_embeds"].shape == (1, 128 + 80)


def test_clip_block_is_zero_padded_and_t5_follows(cond):
    embeds = cond(PROMPT).positive.embeds[0]
    assert bool((embeds[:77, 320:] == 0).all()) and bool((embeds[:77, :320] != 0).any())
    assert bool((embeds[77:, 320:] != 0).any())  # T5 uses the whole width


def test_truncation_is_reported_for_clip_and_t5(cond):
    prep = cond.prepare(LONG)
    assert prep.slots == 77 + 256
    assert "T5:" in prep.dropped
    t5_rows = prep.parts[0].rows[2]
    assert t5_rows.ids[0][255] == 1 and t5_rows.token_count == 256  # `</s>` kept, as transformers truncates


def test_prompt_2_and_prompt_3(sd3, cond):
    ours = cond(PROMPT, NEGATIVE, prompt_2="a blue cat", prompt_3="an oil painting", negative_3="dark").diffusers_kwargs()
    theirs = reference(sd3, PROMPT, NEGATIVE, prompt_2="a blue cat", prompt_3="an oil painting", negative_prompt_3="dark")
    close(ours, theirs)


def test_batch_with_per_prompt_negatives(sd3, cond):
    prompts, negatives = [PROMPT, "a cat"], ["blurry", ""]
    close(cond(prompts, negatives).diffusers_kwargs(), reference(sd3, prompts, negatives))


def test_max_sequence_length(sd3):
    c = conditioner_from_pipeline(sd3, max_sequence_length=77)
    ours = c(LONG, NEGATIVE).diffusers_kwargs()
    close(ours, reference(sd3, LONG, NEGATIVE, max_sequence_length=77))
    assert ours["prompt_embeds"].shape[1] == 77 + 77
    with pytest.raises(ValueError, match="at most 512"):
        conditioner_from_pipeline(sd3, max_sequence_length=600)


def test_clip_skip_positive_matches_and_negative_bug_is_not_copied(sd3):
    c = conditioner_from_pipeline(sd3, clip_skip=1)
    ours = c(PROMPT, NEGATIVE).diffusers_kwargs()
    theirs = reference(sd3, PROMPT, NEGATIVE, clip_skip=1)
    close(ours, theirs, NAMES[::2])
    # diffusers' negative ignores clip_skip; ours is the negative text encoded with it
    as_prompt = reference(sd3, NEGATIVE, None, clip_skip=1)
    torch.testing.assert_close(ours["negative_prompt_embeds"], as_prompt["prompt_embeds"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours["negative_prompt_embeds"], theirs["negative_prompt_embeds"], atol=1e-3)


def test_without_t5_the_t5_block_is_zeros():
    pipe = sd3_pipeline(t5=False)
    c = conditioner_from_pipeline(pipe)
    ours = c(PROMPT, NEGATIVE).diffusers_kwargs()
    close(ours, reference(pipe, PROMPT, NEGATIVE))
    assert bool((ours["prompt_embeds"][0, 77:] == 0).all()) and ours["prompt_embeds"].shape == (1, 333, T5_WIDTH)


def test_weights_reach_t5_through_character_spans(sd3):
    c = conditioner_from_pipeline(sd3, preset="a1111", layout="truncate", t5_length="max", t5_split="text",
                                  t5_weighting="no-norm")
    prep = c.prepare("a (red:1.5) fox")
    t5 = prep.parts[0].rows[2]
    tok = c.t5_tokenizer
    weighted = [tok.token_text(i) for i, w in zip(t5.ids[0], t5.weights[0]) if w == 1.5]
    assert "".join(weighted).replace("▁", "") == "red"
    plain = c("a red fox").positive.embeds
    assert not torch.allclose(c("a (red:1.5) fox").positive.embeds[0, 77:], plain[0, 77:])
    assert torch.equal(c("a (red:1.5) fox").positive.pooled, c("a red fox").positive.pooled)  # pooled: never weighted


def test_same_image_from_our_tensors(sd3, cond):
    theirs = generate(sd3, prompt=PROMPT, negative_prompt=NEGATIVE)
    ours = generate(sd3, **pipeline_kwargs(sd3, PROMPT, NEGATIVE, conditioner=cond))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_conditioner_rejects_wrong_encoder_kinds(cond):
    with pytest.raises(ValueError, match="T5 encoder"):
        Conditioner(cond.encoders[:2] + (cond.encoders[0],), "sd3", cond.options, t5_tokenizer=cond.t5_tokenizer)
    with pytest.raises(ValueError, match="t5_tokenizer"):
        Conditioner(cond.encoders, "sd3", cond.options)


# ---- the ComfyUI preset (comfy/text_encoders/sd3_clip.py) ---------------------------------------------

def test_comfy_sd3_t5_minimum_77_and_unprojected_clip_l_pooled(sd3):
    c = conditioner_from_pipeline(sd3, preset="comfy")
    short = c("a red fox").positive
    assert short.embeds.shape == (1, 77 + 77, T5_WIDTH)  # T5 padded with 0 up to 77, not 256
    n = len(c.t5_tokenizer.encode(LONG)) + 1
    clip_slots = c.prepare(LONG).block_slots()[0]  # comfy chunks CLIP: 77·k
    assert clip_slots % 77 == 0 and c(LONG).positive.embeds.shape == (1, clip_slots + n, T5_WIDTH)  # no T5 maximum
    ids = torch.tensor([c.prepare("a red fox").parts[0].rows[0].ids[0]])
    with torch.no_grad():
        out = sd3.text_encoder(ids, output_hidden_states=True)
        unprojected = sd3.text_encoder.text_model.final_layer_norm(out.hidden_states[-1])[0, ids[0].tolist().index(49407)]
        g = sd3.text_encoder_2(torch.tensor([c.prepare("a red fox").parts[0].rows[1].ids[0]]))[0][0]
    torch.testing.assert_close(short.pooled[0, :128], unprojected, rtol=1e-4, atol=1e-4)  # ComfyUI: L unprojected
    torch.testing.assert_close(short.pooled[0, 128:], g, rtol=1e-4, atol=1e-4)  # G projected
    # diffusers projects L's pooled vector
    assert not torch.allclose(conditioner_from_pipeline(sd3)("a red fox").positive.pooled[0, :128], unprojected, atol=1e-3)


def test_a1111_syntax_long_prompts_and_and_parts(sd3):
    c = conditioner_from_pipeline(sd3, preset="a1111", t5_length="max")
    pair = c(LONG, "blurry")
    assert pair.positive.embeds.shape == pair.negative.embeds.shape
    assert pair.positive.embeds.shape[1] == c.prepare(LONG).block_slots()[0] + 256 and pair.positive.embeds.shape[1] > 333
    # the shorter negative's CLIP block is padded with empty CLIP rows, before its T5 block
    empty = c.empty_sequence()
    torch.testing.assert_close(pair.negative.embeds[0, 77:154], empty[:77])
    torch.testing.assert_close(pair.negative.embeds[0, -256:], c("blurry").positive.embeds[0, -256:])
    parts = c("a red fox AND a blue cat:0.5")
    assert parts.positive.composition == [[(0, 1.0), (1, 0.5)]] and parts.positive.embeds.shape == (2, 333, T5_WIDTH)
    steps = c.encode_schedule("a [red:blue:0.5] fox", "blurry", steps=4)
    assert len(steps.entries) == 2 and steps.at(4).positive.embeds.shape == (1, 333, T5_WIDTH)


def test_bf16_pipeline_folder(sd3, tmp_path):
    sd3.save_pretrained(str(tmp_path / "sd3"))
    c = Conditioner.from_pretrained(tmp_path / "sd3", preset="diffusers", dtype=torch.bfloat16)
    kw = c(PROMPT, NEGATIVE).diffusers_kwargs()
    ref = reference(sd3, PROMPT, NEGATIVE)
    for name in NAMES:
        assert kw[name].dtype == torch.bfloat16 and bool(torch.isfinite(kw[name]).all())
        assert float((kw[name].float() - ref[name]).norm() / ref[name].norm()) < 5e-2  # bf16 vs the fp32 reference (≈ 2%)


# ---- the AUTOMATIC1111 preset (modules/models/sd3/sd3_cond.py) ------------------------------------------

def test_a1111_sd3_t5_follows_the_clip_block_unweighted(sd3):
    """A1111's Sd3T5.tokenize_line: each emphasis fragment tokenized alone, `</s>` appended, padded with 0
    to the CLIP block's length (77·k) or cut there; its multipliers are never applied; L pooled unprojected."""
    c = conditioner_from_pipeline(sd3, preset="a1111")
    tok = c.t5_tokenizer
    text = "a (red:1.5) fox"
    expected = tok.encode("a ") + tok.encode("red") + tok.encode(" fox") + [1]
    expected += [0] * (77 - len(expected))
    pair = c(text)
    assert pair.positive.embeds.shape == (1, 77 + 77, T5_WIDTH)
    with torch.no_grad():
        t5 = sd3.text_encoder_3(torch.tensor([expected]))[0]
    torch.testing.assert_close(pair.positive.embeds[0, 77:], t5[0], rtol=1e-4, atol=1e-4)
    # cut at the CLIP block with no `</s>` kept
    rows = c.prepare(LONG).parts[0].rows[2]
    clip_slots = c.prepare(LONG).block_slots()[0]
    assert rows.length == clip_slots and 1 not in rows.ids[0] and rows.dropped
    assert rows.ids[0] == tok.encode(LONG)[:clip_slots]
    # CLIP-L pooled before its projection, as ComfyUI
    diffusers_pooled = conditioner_from_pipeline(sd3)("a red fox").positive.pooled
    a1111_pooled = c("a red fox").positive.pooled
    assert torch.allclose(a1111_pooled[0, 128:], diffusers_pooled[0, 128:], atol=1e-5)
    assert not torch.allclose(a1111_pooled[0, :128], diffusers_pooled[0, :128], atol=1e-3)
