"""assemble: encoded rows → conditioning, on hand-made tensors (no encoder): padding, merging, pooled
sources, blend, AND composition, zeroing, the family recipe, the weighting registry."""

from __future__ import annotations

import pytest
import torch

from sdclip.assemble.combine import (
    RECIPES,
    EncodedPart,
    blend,
    conditioning,
    merge_rows,
    pad_with_empty,
    pick_pooled,
    zeroed,
)
from sdclip.assemble.weighting import WEIGHTING_MODES
from sdclip.conventions.presets import WEIGHTINGS, Options
from sdclip.conventions.family import get_family
from sdclip.prepare import prepare
from sdclip.tokenizer import Tokenizer

L, D = 77, 4
EMPTY = torch.arange(L * D, dtype=torch.float32).reshape(L, D)  # every slot distinct: BOS row 0, pads last


def test_padding_adds_whole_empty_rows_then_the_empty_rows_last_slots() -> None:
    """A sequence 5 slots long padded to 5 + 77 + 3 gets one whole empty row, then the empty row's *last* 3
    slots (padding, as a window layout's last row ends) — never its BOS."""
    seq = torch.full((5, D), -1.0)
    out = pad_with_empty(seq, 5 + L + 3, EMPTY)
    assert torch.equal(out[:5], seq) and torch.equal(out[5 : 5 + L], EMPTY)
    assert torch.equal(out[5 + L :], EMPTY[L - 3 :]) and not torch.equal(out[5 + L :], EMPTY[:3])
    assert pad_with_empty(seq, 5, EMPTY) is seq
    with pytest.raises(ValueError, match="cannot pad"):
        pad_with_empty(seq, 4, EMPTY)


def test_merge_rows_keeps_only_kept_slots() -> None:
    hidden = torch.arange(2 * 3 * 1, dtype=torch.float32).reshape(2, 3, 1)
    assert merge_rows(hidden, [[True] * 3, [True] * 3]).flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert merge_rows(hidden, [[True, True, False], [False, True, True]]).flatten().tolist() == [0, 1, 4, 5]


def test_pooled_sources_and_blend() -> None:
    pooled = torch.tensor([[1.0], [2.0], [6.0]])
    assert [pick_pooled(pooled, s).item() for s in ("first", "last", "mean")] == [1.0, 6.0, 3.0]
    with pytest.raises(ValueError, match="pooled source"):
        pick_pooled(pooled, "middle")
    a, b = torch.ones(2), torch.zeros(2)
    assert blend([a, b], [3, 1], normalize=True).tolist() == [0.75, 0.75]
    assert blend([a, b], [3, 1], normalize=False).tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="sum to 0"):
        blend([a, b], [1, -1], normalize=True)


def test_and_parts_become_a_composition_and_everything_pads_to_one_length() -> None:
    fam, opts, tok = get_family("sd1"), Options.preset("a1111"), Tokenizer.default("hf-slow")
    two = prepare("a cat AND a dog :0.5", opts, fam, tok)
    one = prepare("a bird", opts, fam, tok)
    parts2 = [EncodedPart((torch.full((L, D), float(k)),), None, p.weight) for k, p in enumerate(two.parts)]
    parts1 = [EncodedPart((torch.full((L, D), 9.0),), None, 1.0)]
    cond = conditioning(["a", "b"], [(parts2, two), (parts1, one)], 2 * L, EMPTY)
    assert cond.embeds.shape == (3, 2 * L, D)
    assert cond.composition == [[(0, 1.0), (1, 0.5)], [(2, 1.0)]]
    assert torch.equal(cond.embeds[2, L:], EMPTY)  # padded with one whole empty row
    z = zeroed(cond)
    assert not z.embeds.any() and z.texts == cond.texts and cond.embeds.any()  # a new value; cond untouched


def test_recipes_join_encoders_and_blocks() -> None:
    """SDXL joins its encoders on features; SD3 zero-pads L ‖ G to T5's width, blocks then follow on tokens."""
    a, b = torch.ones(3, 2), torch.full((3, 5), 2.0)
    (joined,) = RECIPES["features"]([[a, b]])
    assert joined.shape == (3, 7) and torch.equal(joined[:, 2:], b)
    t5 = torch.full((4, 9), 3.0)
    clip, tail = RECIPES["sd3"]([[a, b], [t5]])
    assert clip.shape == (3, 9) and tail.shape == (4, 9)
    assert torch.equal(clip[:, :7], joined) and not clip[:, 7:].any()  # zero-padded on features


def test_weighting_registry_matches_the_conventions() -> None:
    assert set(WEIGHTING_MODES) == set(WEIGHTINGS)
    assert WEIGHTING_MODES["comfy"].needs_empty and WEIGHTING_MODES["compel"].reencodes
    assert WEIGHTING_MODES["lerp-eos"].needs_eos and not WEIGHTING_MODES["a1111"].reencodes
