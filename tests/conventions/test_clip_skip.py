"""Clip skip is checked when the options are built, in one line, before any model loads: a number of the wrong
sign for its convention (with the convention it belongs to), and a number past the towers' depth."""

from __future__ import annotations

import pytest

from sdclip.conventions.clip_skip import SKIP_CONVENTIONS, SKIP_MEANINGS, LayerSelect, clip_skip_range
from sdclip.conventions.family import FAMILIES
from sdclip.conventions.presets import Options, options_from_user

SD1_L = FAMILIES["sd1"].roles[0]
XL_L, XL_G = FAMILIES["sdxl"].roles


@pytest.mark.parametrize(
    "convention, bad, hint",
    [
        ("a1111", 0, "convention diffusers"),
        ("a1111", -2, "convention comfy"),
        ("comfy", 2, "convention a1111"),
        ("comfy", 0, "convention diffusers"),
        ("diffusers", -1, "convention comfy"),
    ],
)
def test_wrong_sign_is_refused_when_options_are_built(convention, bad, hint):
    with pytest.raises(ValueError, match=hint) as err:
        Options.preset("a1111", clip_skip_convention=convention, clip_skip=bad)
    assert "\n" not in str(err.value)


def test_past_every_towers_depth_is_refused_without_a_family():
    with pytest.raises(ValueError, match=r"a1111 numbers run 1\.\.32"):
        Options.preset("a1111", clip_skip=33)
    with pytest.raises(ValueError, match=r"comfy numbers run -32\.\.-1"):
        Options.preset("comfy", clip_skip=-33)
    assert Options.preset("a1111", clip_skip=32).clip_skip == 32  # bigG (SDXL, SD3) has 32 blocks


@pytest.mark.parametrize(
    "family, convention, last_ok",
    [("sd1", "a1111", 12), ("sd1", "comfy", -12), ("sd1", "diffusers", 11), ("sd2", "a1111", 24),
     ("sdxl", "a1111", 12), ("sdxl", "diffusers", 10)],  # SDXL: CLIP-L's 12 blocks bound both encoders
)
def test_past_the_familys_depth_is_refused_with_the_family(family, convention, last_ok):
    assert options_from_user("a1111", family=family, clip_skip_convention=convention, clip_skip=last_ok)
    beyond = last_ok - 1 if last_ok < 0 else last_ok + 1
    with pytest.raises(ValueError, match=f"family {family}: .*numbers run") as err:
        options_from_user("a1111", family=family, clip_skip_convention=convention, clip_skip=beyond)
    assert "\n" not in str(err.value)


def test_layer_refuses_past_depth_naming_the_role():
    options = Options.preset("a1111", clip_skip=20)  # fits bigG, not CLIP-L
    assert options.layer(XL_G) == LayerSelect(19, False)
    with pytest.raises(ValueError, match="clip_l: clip skip 20"):
        options.layer(XL_L)


def test_range_matches_what_each_convention_reads():
    assert clip_skip_range("a1111", SD1_L.default_layer, 12) == (1, 12)
    assert clip_skip_range("comfy", SD1_L.default_layer, 12) == (-12, -1)
    assert clip_skip_range("diffusers", SD1_L.default_layer, 12) == (0, 11)
    assert clip_skip_range("diffusers", XL_G.default_layer, 32) == (0, 30)


def test_every_convention_says_what_it_means():
    assert set(SKIP_MEANINGS) == set(SKIP_CONVENTIONS)
    assert "-1 = last layer" in SKIP_MEANINGS["comfy"] and "1 = last layer" in SKIP_MEANINGS["a1111"]
