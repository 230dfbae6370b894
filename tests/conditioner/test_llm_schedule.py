"""`encode_schedule` on the LLM families: every step's pair equals diffusers 0.42.1's `encode_prompt` of the text in
force then (masks, Z-Image's list, Lumina 2's negative without its system prompt), on tests/tiny_llm.py's encoders."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("diffusers")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_llm import oracle, tiny_folder  # noqa: E402

from sdclip.conditioner import Conditioner  # noqa: E402

PROMPT = "a [red:blue cat sitting on a mat:0.5] fox in the forest"
NEGATIVE = "[blurry:low quality, blurry:0.3]"
#: the texts in force, by the last step of each (10 steps: the negative switches after step 3, the prompt after 5)
SEGMENTS = ((3, "a red fox in the forest", "blurry"), (5, "a red fox in the forest", "low quality, blurry"),
            (10, "a blue cat sitting on a mat fox in the forest", "low quality, blurry"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = tmp_path_factory.mktemp("llm-schedule")
        return {f: tiny_folder(root, f) for f in ("qwen-image", "z-image", "lumina2")}


def _steps(cond: Conditioner) -> list:
    sched = cond.encode_schedule(PROMPT, NEGATIVE, steps=10)
    assert [end for end, _ in sched.entries] == [end for end, _, _ in SEGMENTS]
    assert sched.at(4) is sched.entries[1][1]
    return [pair.diffusers_kwargs() for _, pair in sched.entries]


def _padded(ours: torch.Tensor, mask: torch.Tensor, theirs: torch.Tensor, their_mask: torch.Tensor | None) -> None:
    """Equal on diffusers' positions, zeros after; the mask diffusers' own (Qwen-Image: None when all ones), then
    zeros."""
    n = theirs.shape[1]
    their_mask = torch.ones(theirs.shape[:2], dtype=torch.long) if their_mask is None else their_mask
    torch.testing.assert_close(ours[:, :n], theirs, atol=1e-4, rtol=0)
    assert not ours[:, n:].any()
    assert torch.equal(mask[:, :n].long(), their_mask.long()) and not mask[:, n:].any()


@torch.no_grad()
def test_qwen_image_schedule_has_each_segments_states_and_mask(folders: dict[str, Path]) -> None:
    pipe = oracle(folders["qwen-image"], "qwen-image")
    steps = _steps(Conditioner.from_pretrained(folders["qwen-image"], preset="a1111"))
    assert len({out["prompt_embeds"].shape for out in steps} | {out["negative_prompt_embeds"].shape for out in steps}) == 1
    for out, (_, prompt, negative) in zip(steps, SEGMENTS):
        for side, text in (("", prompt), ("negative_", negative)):
            embeds, mask = pipe.encode_prompt([text], device="cpu")
            _padded(out[f"{side}prompt_embeds"], out[f"{side}prompt_embeds_mask"], embeds, mask)


@torch.no_grad()
def test_z_image_schedule_is_a_list_per_step(folders: dict[str, Path]) -> None:
    pipe = oracle(folders["z-image"], "z-image")
    steps = _steps(Conditioner.from_pretrained(folders["z-image"], preset="a1111"))
    for out, (_, prompt, negative) in zip(steps, SEGMENTS):
        assert set(out) == {"prompt_embeds", "negative_prompt_embeds"}
        embeds, neg = pipe.encode_prompt([prompt], device="cpu", negative_prompt=[negative])
        for ours, theirs in ((out["prompt_embeds"], embeds), (out["negative_prompt_embeds"], neg)):
            assert isinstance(ours, list) and [t.shape for t in ours] == [t.shape for t in theirs]
            torch.testing.assert_close(ours[0], theirs[0], atol=1e-4, rtol=0)


@torch.no_grad()
def test_lumina2_schedule_negative_is_bare_as_diffusers(folders: dict[str, Path]) -> None:
    """diffusers' Lumina2Pipeline.encode_prompt puts the system prompt before the prompt only (:287) and tokenizes
    the negative as given (:305, :323): so must every step's negative, scheduled or absent."""
    pipe = oracle(folders["lumina2"], "lumina2")
    cond = Conditioner.from_pretrained(folders["lumina2"], preset="a1111")
    for out, (_, prompt, negative) in zip(_steps(cond), SEGMENTS):
        embeds, mask, neg, neg_mask = pipe.encode_prompt([prompt], negative_prompt=[negative], device="cpu")
        _padded(out["prompt_embeds"], out["prompt_attention_mask"], embeds, mask)
        _padded(out["negative_prompt_embeds"], out["negative_prompt_attention_mask"], neg, neg_mask)
    _, _, empty, empty_mask = pipe.encode_prompt(["a cat"], device="cpu")  # no negative: diffusers' "" (BOS alone)
    for _, pair in cond.encode_schedule("a [cat:dog:0.5]", steps=4).entries:
        out = pair.diffusers_kwargs()
        _padded(out["negative_prompt_embeds"], out["negative_prompt_attention_mask"], empty, empty_mask)
