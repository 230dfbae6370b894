"""Presets and the clip-skip table of the README: every convention lands on the same layer."""

from __future__ import annotations

import pytest

from sdclip.conventions.family import FAMILIES
from sdclip.conventions.clip_skip import LayerSelect
from sdclip.conventions.clip_skip import resolve_clip_skip
from sdclip.conventions.presets import PRESETS, Options

SD1_L = FAMILIES["sd1"].roles[0]
SD2_H = FAMILIES["sd2"].roles[0]
XL_L, XL_G = FAMILIES["sdxl"].roles


@pytest.mark.parametrize(
    "role, a1111, comfy, diffusers, want",
    [
        (SD1_L, 1, -1, None, LayerSelect(0, True)),  # last layer + final LN
        (SD1_L, 2, -2, 1, LayerSelect(1, True)),  # penultimate + final LN
        (SD2_H, 2, -2, None, LayerSelect(1, True)),  # SD2's default is the penultimate
        (SD2_H, 3, -3, 1, LayerSelect(2, True)),
        (XL_L, 2, -2, None, LayerSelect(1, False)),  # SDXL: penultimate, no final LN
        (XL_G, 2, -2, None, LayerSelect(1, False)),
        (XL_G, 4, -4, 2, LayerSelect(3, False)),  # diffusers N → hidden_states[-(N+2)]
    ],
)
def test_three_conventions_agree(role, a1111, comfy, diffusers, want):
    assert resolve_clip_skip("a1111", a1111, role.default_layer) == want
    assert resolve_clip_skip("comfy", comfy, role.default_layer) == want
    assert resolve_clip_skip("diffusers", diffusers, role.default_layer) == want


@pytest.mark.parametrize("convention, bad", [("a1111", 0), ("comfy", 1), ("comfy", 0), ("diffusers", -1), ("a1111", True)])
def test_out_of_range_clip_skip_is_refused(convention, bad):
    with pytest.raises(ValueError):
        resolve_clip_skip(convention, bad, SD1_L.default_layer)


def test_presets_set_every_convention_and_overrides_by_name():
    a = Options.preset("a1111")
    assert (a.dialect, a.layout, a.weighting, a.normalize) == ("a1111", "chunk", "a1111", "hf-slow")
    d = Options.preset("diffusers")
    assert (d.dialect, d.layout, d.weighting, d.zeros_for_empty_negative) == ("plain", "truncate", "none", True)
    c = Options.preset("comfy", weighting="no-norm", clip_skip=-2)
    assert (c.dialect, c.weighting, c.layer(SD1_L)) == ("comfy", "no-norm", LayerSelect(1, True))
    assert set(PRESETS) == {"a1111", "comfy", "compel", "diffusers", "kohya"}
    with pytest.raises(ValueError, match="unknown option"):
        Options.preset("a1111", weigthing="comfy")
    with pytest.raises(ValueError, match="unknown preset"):
        Options.preset("invokeai")


@pytest.mark.parametrize(
    "option, value",
    [("weighting", "bogus"), ("layout", "squash"), ("dialect", "invoke"), ("normalize", "nfc"), ("pooled_source", "max")],
)
def test_unknown_option_values_are_refused_up_front(option, value):
    with pytest.raises(ValueError, match=f"unknown {option}"):
        Options.preset("a1111", **{option: value})
