"""The empty prompt's row is planned into an encoder's batch only where a rule reads it (a weighting that
lerps from it, padding a shorter text or part, compel .and() weights); elsewhere it is encoded on first use.
An SD3 prompt + negative of one length (diffusers' preset) is then 2 rows per encoder, not 3."""

from __future__ import annotations

import pytest
import torch

from sdclip.pipelines import conditioner_from_pipeline
from tiny_conditioners import make
from tiny_pipelines import sd3_pipeline

PROMPT, NEGATIVE = "a red fox in the snow", "blurry"


@pytest.fixture(scope="module")
def sd3():
    return sd3_pipeline()


def _rows_encoded(cond, *args, **kwargs) -> tuple[int, object]:  # noqa: ANN001
    cond.cache.clear()
    before = cond.cache.stats.misses
    out = cond(*args, **kwargs)
    return cond.cache.stats.misses - before, out


def test_one_length_prompt_and_negative_skip_the_empty_row(sd3):
    cond = conditioner_from_pipeline(sd3, preset="diffusers")
    encoded, pair = _rows_encoded(cond, PROMPT, NEGATIVE)
    assert encoded == 2 * 3  # prompt and negative through CLIP-L, CLIP-G and T5; no empty row
    # the empty prompt is still there for whoever reads it, encoded then, equal to a planned one
    planned = torch.cat([cond.empty_sequence()], dim=0)
    assert planned.shape[0] == 77 + 256 and pair.positive.embeds.shape[1] == 77 + 256


def test_rules_that_read_the_empty_row_still_get_it(sd3):
    comfy = conditioner_from_pipeline(sd3, preset="comfy")  # lerps from the empty encoding
    encoded, _ = _rows_encoded(comfy, PROMPT, NEGATIVE)
    assert encoded == 3 * 3


@pytest.mark.parametrize("preset, prompt, negative", [
    ("a1111", " ".join(["fox"] * 100), "blurry"),  # the negative is padded with an empty CLIP row
    ("a1111", "a fox AND " + " ".join(["cat"] * 100), "blurry"),  # AND parts of different lengths
    ("compel", '("a fox", "a cat").and(1, 0.5)', "blurry"),  # .and() lerps a part from the empty prompt
    ("diffusers", "a fox", "blurry"),
])
def test_results_equal_a_batch_that_planned_the_empty_row(preset, prompt, negative):
    """Whatever the plan left out, the conditioning is the one of a batch that carried the empty row."""
    lazy = make("sdxl", preset)(prompt, negative)
    cond = make("sdxl", preset)
    cond._empty_rows = lambda prepared, length: (True,) * len(cond.family.roles)  # the old plan: always
    eager = cond(prompt, negative)
    for a, b in ((lazy.positive, eager.positive), (lazy.negative, eager.negative)):
        torch.testing.assert_close(a.embeds, b.embeds)
        torch.testing.assert_close(a.pooled, b.pooled)
