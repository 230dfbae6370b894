"""prepare: text → rows for every encoder of a family, without a model (torch-free)."""

from __future__ import annotations

import pytest

from sdclip.conventions.family import get_family
from sdclip.conventions.presets import Options
from sdclip.layout import RowLimitError
from sdclip.prepare import prepare
from sdclip.tokenizer import Tokenizer
from sdclip.tokenizer.stream import EOS

TOK = Tokenizer.default("hf-slow")


def test_one_rows_per_encoder_with_its_own_pad_id() -> None:
    prep = prepare("a red fox BREAK a forest", Options.preset("a1111"), get_family("sdxl"), TOK)
    (part,) = prep.parts
    clip_l, clip_g = part.rows
    assert clip_l.ids[0][:4] == clip_g.ids[0][:4]  # same tokens
    assert clip_l.ids[0][-1] == EOS and clip_g.ids[0][-1] == 0  # ViT-L pads with EOS, bigG with 0
    assert len(clip_l) == len(clip_g) == 2


def test_slots_count_kept_slots_and_concat_parts() -> None:
    sd1 = get_family("sd1")
    long = " ".join(["forest"] * 100)
    assert prepare(long, Options.preset("a1111"), sd1, TOK).slots == 154
    window = prepare(long, Options.preset("a1111", layout="window"), sd1, TOK)
    assert len(window.parts[0].rows[0]) == 2 and window.slots == 1 + 100 + 1 + 25  # BOS, tokens, EOS, the last window's pad
    concat = prepare('("a fox", "a cat").and()', Options.preset("compel"), sd1, TOK)
    assert concat.prompt.combine == "concat" and concat.slots == 154  # parts side by side


def test_row_limit_is_counted_while_building() -> None:
    sd1 = get_family("sd1")
    with pytest.raises(RowLimitError, match="row_limit=3"):
        prepare(" ".join(["fox"] * 1000), Options.preset("a1111"), sd1, TOK, row_limit=3)
    with pytest.raises(RowLimitError, match="AND parts"):
        prepare(" AND ".join(["fox"] * 10), Options.preset("a1111"), sd1, TOK, row_limit=3)
    fits = prepare(", ".join(f"tag{i}" for i in range(400)), Options.preset("a1111", layout="compress"), sd1, TOK, row_limit=3)
    assert len(fits.parts[0].rows[0]) <= 3 and fits.dropped  # compress fits the row limit, says what it dropped


def test_long_layout_needs_long_clip() -> None:
    with pytest.raises(ValueError, match="Long-CLIP"):
        prepare("a fox", Options.preset("a1111", layout="long"), get_family("sd1"), TOK)
    assert len(prepare("a fox", Options.preset("a1111", layout="long"), get_family("longclip"), TOK).parts[0].rows[0].ids[0]) == 248


def test_more_and_parts_than_row_limit_are_counted_not_parsed(monkeypatch):
    """Every part takes a row, so past row_limit parts the prompt is refused with the parts only counted
    (issue 24: 16,666 `a AND ` parts per 100 kB were parsed and laid out before the limit was seen)."""
    import sdclip.prepare as prep

    seen = {}
    real = prep.parse

    def spy(text, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        out = real(text, *args, **kwargs)
        seen["parsed"] = len(out.parts)
        return out

    monkeypatch.setattr(prep, "parse", spy)
    with pytest.raises(RowLimitError, match=r"row_limit=64 rows .*\(16667 AND parts\)"):
        prepare("a AND " * 16666, Options.preset("a1111"), get_family("sdxl"), Tokenizer.default("hf-slow"), row_limit=64)
    assert seen["parsed"] == 65
    ok = prepare("a AND b", Options.preset("a1111"), get_family("sdxl"), Tokenizer.default("hf-slow"), row_limit=2)
    assert len(ok.parts) == 2
