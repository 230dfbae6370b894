"""diffusers parity and end-to-end generation on tiny random SD1 / SDXL pipelines (tests/tiny_pipelines).

Parity: our Conditioner in the "diffusers" preset (via `conditioner_from_pipeline`) against the pipeline's
own `encode_prompt`, same weights, same tokenizers. diffusers' `clip_skip` counts layers skipped *beyond the
family default* (SD1: 1 = penultimate + final LN; SDXL: 1 = hidden_states[-3], never a final LN); our
preset uses the same convention (Options.clip_skip_convention "diffusers").

Two known differences, asserted rather than hidden:
- diffusers ignores `clip_skip` for the negative prompt (a bug we do not copy): with clip skip our negative
  equals diffusers' encoding of the negative text *as a prompt*, and differs from its negative.
- diffusers 0.42 + transformers 5: SD1's clip-skip path reads `text_encoder.text_model.final_layer_norm`,
  which transformers 5's CLIPTextModel no longer has (AttributeError). `_text_model_alias` gives the model
  that attribute (the same final LayerNorm, as transformers 4 had) so diffusers' own code path runs.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from sdclip.conditioner import Conditioner
from sdclip.pipelines import conditioner_from_pipeline, pipeline_kwargs
from tiny_pipelines import generate, sd1_pipeline, sdxl_pipeline

#: diffusers' Euler scheduler calls np.array(tensor, copy=False) under numpy 2: its warning, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
TOL = 1e-5
NAMES = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
PROMPT = "a (red:1.3) fox in a [misty] forest, highly detailed, golden hour"
NEGATIVE = "blurry, lowres, watermark"
#: ≈ 120 tokens: truncated to 75 by diffusers; two 77-slot chunks for a1111
LONG = ", ".join(f"a {c} fox with {c} eyes under a {c} sky" for c in
                 ("red", "blue", "green", "golden", "silver", "purple", "orange", "white", "black", "pink"))


@pytest.fixture(scope="module")
def sd1():
    pipe = sd1_pipeline()
    _text_model_alias(pipe.text_encoder)
    return pipe


@pytest.fixture(scope="module")
def sdxl():
    return sdxl_pipeline()


def _text_model_alias(model) -> None:  # noqa: ANN001
    """transformers 5's CLIPTextModel lost `.text_model`; diffusers' SD1 clip-skip path still reads
    `.text_model.final_layer_norm`. A plain attribute (not a submodule: state_dict is unchanged)."""
    if not hasattr(model, "text_model"):
        model.text_model = types.SimpleNamespace(final_layer_norm=model.final_layer_norm)


@torch.no_grad()
def reference(pipe, prompt, negative=None, clip_skip=None) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """The pipeline's own encode_prompt, keyed like ConditioningPair.diffusers_kwargs()."""
    out = pipe.encode_prompt(
        prompt,
        device="cpu",
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=negative,
        clip_skip=clip_skip,
    )
    return dict(zip(NAMES, out))


_CONDITIONERS: dict[tuple[int, int | None], Conditioner] = {}


def conditioner(pipe, clip_skip=None) -> Conditioner:  # noqa: ANN001
    """One "diffusers"-preset Conditioner per pipeline and clip skip (building one maps every weight)."""
    key = (id(pipe), clip_skip)
    if key not in _CONDITIONERS:
        _CONDITIONERS[key] = conditioner_from_pipeline(pipe, preset="diffusers", clip_skip=clip_skip)
    return _CONDITIONERS[key]


def ours(pipe, prompt, negative=None, clip_skip=None) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return conditioner(pipe, clip_skip)(prompt, negative).diffusers_kwargs()


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, f"{what}: {list(a.shape)} vs {list(b.shape)}"
    err = (a.float() - b.float()).abs().max().item()
    assert err <= TOL, f"{what}: max abs error {err:.3g}"


def assert_pair(got: dict, want: dict, *, keys=NAMES) -> None:  # noqa: ANN001
    assert set(got) == {k for k, v in want.items() if v is not None}
    for k in keys:
        if want.get(k) is not None:
            assert_close(got[k], want[k], k)


# ---- SD1 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("clip_skip", [None, 1, 2])
@pytest.mark.parametrize("negative", [None, NEGATIVE])
def test_sd1_matches_encode_prompt(sd1, clip_skip, negative):
    want = reference(sd1, PROMPT, negative, clip_skip)
    got = ours(sd1, PROMPT, negative, clip_skip)
    assert got["prompt_embeds"].shape == (1, 77, 128)
    assert_close(got["prompt_embeds"], want["prompt_embeds"], "prompt_embeds")
    neg_text = negative or ""
    if clip_skip is None:
        assert_close(got["negative_prompt_embeds"], want["negative_prompt_embeds"], "negative_prompt_embeds")
    else:
        # diffusers encodes the negative at the default layer whatever clip_skip says (its bug); ours skips
        # the same layers as the positive, i.e. what diffusers gives for that text as a *prompt*.
        as_prompt = reference(sd1, neg_text, None, clip_skip)["prompt_embeds"]
        assert_close(got["negative_prompt_embeds"], as_prompt, "negative (clip-skipped)")
        assert (got["negative_prompt_embeds"] - want["negative_prompt_embeds"]).abs().max() > 1e-3


def test_sd1_clip_skip_changes_the_result(sd1):
    """The parity above would pass vacuously if clip_skip did nothing: it must change the embeddings."""
    a, b, c = (ours(sd1, PROMPT, None, s)["prompt_embeds"] for s in (None, 1, 2))
    assert (a - b).abs().max() > 1e-3 and (b - c).abs().max() > 1e-3


def test_sd1_long_prompt_truncated_like_diffusers(sd1):
    pair = conditioner(sd1)(LONG, NEGATIVE)
    assert pair.positive.token_counts[0] > 75 and pair.positive.dropped[0]
    assert_pair(pair.diffusers_kwargs(), reference(sd1, LONG, NEGATIVE))


def test_sd1_batch_of_two(sd1):
    prompts, negatives = [PROMPT, LONG], [NEGATIVE, ""]
    got = ours(sd1, prompts, negatives, 1)
    want = reference(sd1, prompts, negatives, 1)
    assert got["prompt_embeds"].shape == (2, 77, 128)
    assert_close(got["prompt_embeds"], want["prompt_embeds"], "prompt_embeds")
    got0 = ours(sd1, prompts, negatives)
    assert_pair(got0, reference(sd1, prompts, negatives))


# ---- SDXL ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("clip_skip", [None, 1])
@pytest.mark.parametrize("negative", [None, NEGATIVE])
def test_sdxl_matches_encode_prompt(sdxl, clip_skip, negative):
    want = reference(sdxl, PROMPT, negative, clip_skip)
    got = ours(sdxl, PROMPT, negative, clip_skip)
    assert got["prompt_embeds"].shape == (1, 77, 320) and got["pooled_prompt_embeds"].shape == (1, 80)
    for k in ("prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"):
        assert_close(got[k], want[k], k)
    if negative is None:
        # force_zeros_for_empty_prompt: no negative → zeros, embeds and pooled alike
        assert not got["negative_prompt_embeds"].any() and not got["negative_pooled_prompt_embeds"].any()
        assert_close(got["negative_prompt_embeds"], want["negative_prompt_embeds"], "negative_prompt_embeds")
    elif clip_skip is None:
        assert_close(got["negative_prompt_embeds"], want["negative_prompt_embeds"], "negative_prompt_embeds")
    else:
        as_prompt = reference(sdxl, negative, None, clip_skip)["prompt_embeds"]
        assert_close(got["negative_prompt_embeds"], as_prompt, "negative (clip-skipped)")
        assert (got["negative_prompt_embeds"] - want["negative_prompt_embeds"]).abs().max() > 1e-3


def test_sdxl_empty_string_negative_is_encoded_not_zeroed(sdxl):
    """Only a *missing* negative is zeros; an explicit "" is the empty prompt's encoding (as diffusers)."""
    got, want = ours(sdxl, PROMPT, ""), reference(sdxl, PROMPT, "")
    assert got["negative_prompt_embeds"].abs().max() > 1e-3
    assert_pair(got, want)


def test_sdxl_long_prompt_and_batch(sdxl):
    prompts, negatives = [LONG, PROMPT], [NEGATIVE, LONG]
    assert_pair(ours(sdxl, prompts, negatives), reference(sdxl, prompts, negatives))
    got, want = ours(sdxl, prompts, None, 1), reference(sdxl, prompts, None, 1)
    assert got["prompt_embeds"].shape == (2, 77, 320)
    assert_pair(got, want)


def test_sdxl_exclamation_marks_are_text_not_padding(sdxl):
    """Known, deliberate difference: SDXL's tokenizer_2 sets pad_token="!", so transformers turns every typed
    "!" into the pad id 0 ("wow!!!" → [2781, 0, 0, 0]) where CLIP's BPE gives [2781, 995]. Our diffusers
    preset keeps the BPE ids, so only the bigG half (features 128:) and the pooled vector differ."""
    text = "wow!!! a fox"
    assert sdxl.tokenizer_2(text).input_ids[1:5] == [2781, 0, 0, 0]
    assert sdxl.tokenizer(text).input_ids[1:3] == [2781, 995]
    got, want = ours(sdxl, text), reference(sdxl, text)
    width_l = sdxl.text_encoder.config.hidden_size
    assert_close(got["prompt_embeds"][..., :width_l], want["prompt_embeds"][..., :width_l], "clip_l half")
    assert (got["prompt_embeds"][..., width_l:] - want["prompt_embeds"][..., width_l:]).abs().max() > 1e-3
    assert (got["pooled_prompt_embeds"] - want["pooled_prompt_embeds"]).abs().max() > 1e-3


# ---- end to end ----------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["sd1", "sdxl"])
def test_generate_with_long_a1111_conditioning(request, which):
    """A prompt over 75 tokens in a1111 mode: two chunks (N = 154) for the positive, the short negative
    padded with an empty chunk to the same N, and the pipeline denoises with them."""
    pipe = request.getfixturevalue(which)
    prompt = "a (red:1.3) fox, " + LONG + ", [misty] forest"
    kwargs = pipeline_kwargs(pipe, prompt, "blurry", preset="a1111")
    width = 128 if which == "sd1" else 320
    assert kwargs["prompt_embeds"].shape == (1, 154, width)
    assert kwargs["negative_prompt_embeds"].shape == (1, 154, width)
    if which == "sdxl":
        assert kwargs["pooled_prompt_embeds"].shape == kwargs["negative_pooled_prompt_embeds"].shape == (1, 80)
    image = generate(pipe, **kwargs)
    assert image.shape == (1, 16, 16, 3) and np.isfinite(image).all()


@pytest.mark.parametrize(("which", "negative"), [("sd1", NEGATIVE), ("sdxl", None)])
def test_embeds_path_gives_the_same_image_as_prompt_path(request, which, negative):
    """Same seed, same image whether diffusers encodes `prompt=` itself or takes our embeddings (SDXL with
    no negative: the zeros path). Measured: identical to float32 rounding (atol 1e-5 leaves room for it)."""
    pipe = request.getfixturevalue(which)
    direct = generate(pipe, prompt=PROMPT, negative_prompt=negative)
    via_us = generate(pipe, **pipeline_kwargs(pipe, PROMPT, negative, conditioner=conditioner(pipe)))
    assert np.isfinite(direct).all() and direct.std() > 0
    np.testing.assert_allclose(via_us, direct, rtol=0, atol=1e-5)


def test_pipeline_kwargs_match_pipeline_dtype(sd1):
    """The tensors come out in the pipeline's dtype and device, ready for `pipe(**kwargs)`."""
    kwargs = pipeline_kwargs(sd1, PROMPT, NEGATIVE, conditioner=conditioner(sd1))
    assert {v.dtype for v in kwargs.values()} == {sd1.dtype}
    assert {v.device for v in kwargs.values()} == {sd1.device}


def test_conditioner_from_pipeline_needs_a_text_encoder():
    with pytest.raises(ValueError, match="no text encoder"):
        conditioner_from_pipeline(types.SimpleNamespace())


def test_conditioner_from_pipeline_detects_the_family(sd1, sdxl):
    assert conditioner(sd1).family.name == "sd1" and len(conditioner(sd1).encoders) == 1
    assert conditioner(sdxl).family.name == "sdxl" and len(conditioner(sdxl).encoders) == 2
