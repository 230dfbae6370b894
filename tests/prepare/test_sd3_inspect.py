"""`inspect` for SD3 / Flux: the T5 sequence per part with its count (n/256, n/512), what
truncation dropped, the comfy preset's untruncated T5; the CLI flags that reach Options."""

from __future__ import annotations

import argparse

import pytest

from sdclip.cli.options import add_model_options, add_text_options, model_options
from sdclip.conventions.family import get_family
from sdclip.conventions.presets import Options
from sdclip.describe import describe
from sdclip.tokenizer import Tokenizer
from sdclip.tokenizer.t5 import T5Tokenizer
from tiny_pipelines import t5_tokenizer_dir

LONG = " ".join(["a red fox in a misty forest"] * 80)


@pytest.fixture(scope="module")
def t5() -> T5Tokenizer:
    return T5Tokenizer.from_folder(t5_tokenizer_dir())


@pytest.mark.parametrize("family, length", [("sd3", 256), ("flux", 512)])
def test_t5_entry_counts_against_the_family_length(t5, family, length):
    options = Options.preset("a1111", t5_length="max", t5_split="text")
    d = describe("a (red:1.4) fox", options, get_family(family), Tokenizer.default("hf-slow"), t5_tokenizer=t5)
    entry = d["parts"][0]["t5"]
    assert entry["count"] == len(t5.encode("a red fox")) + 1 and entry["length"] == entry["limit"] == length
    assert entry["pieces"][-1] == "</s>" and len(entry["ids"]) == length
    assert 1.4 in entry["weights"] and d["t5"]["count"] == entry["count"]
    assert set(d["parts"][0]["rows_by_encoder"]) == {r.name for r in get_family(family).roles}


def test_truncated_t5_reports_what_was_dropped(t5):
    d = describe(LONG, Options.preset("diffusers"), get_family("sd3"), Tokenizer.default("hf-fast"), t5_tokenizer=t5)
    assert d["t5"]["count"] == 256 and d["t5"]["dropped"] and LONG.endswith(d["t5"]["dropped"])
    assert "T5:" in d["dropped"]


def test_a1111_preset_t5_follows_the_clip_rows(t5):
    d = describe(LONG, Options.preset("a1111"), get_family("sd3"), Tokenizer.default("hf-slow"), t5_tokenizer=t5)
    assert d["t5"]["length"] == d["t5"]["limit"] == 77 * len(d["parts"][0]["rows_by_encoder"]["clip_l"])


def test_comfy_preset_never_truncates_t5(t5):
    d = describe(LONG, Options.preset("comfy"), get_family("flux"), Tokenizer.default("hf-slow"), t5_tokenizer=t5)
    assert d["t5"]["limit"] is None and d["t5"]["length"] == d["t5"]["count"] > 512 and not d["t5"]["dropped"]


def test_t5_family_without_a_t5_tokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match="T5 tokenizer"):
        describe("a fox", Options.preset("a1111"), get_family("sd3"), Tokenizer.default("hf-slow"))


def test_cli_flags_reach_options():
    p = argparse.ArgumentParser()
    add_text_options(p)
    add_model_options(p)
    args = p.parse_args(["--model", "m", "--max-sequence-length", "128", "--prompt-2", "a cat", "--prompt-3", "a dog"])
    assert model_options(args).max_sequence_length == 128
    assert (args.prompt_2, args.prompt_3) == ("a cat", "a dog")
    with pytest.raises(ValueError, match="max_sequence_length"):
        model_options(p.parse_args(["--model", "m", "--max-sequence-length", "0"]))


def test_inspect_command_shows_the_t5_sequence(capsys):
    """`sdclip inspect --family sd3 --t5-tokenizer DIR`: the JSON's t5 entry, and a T5 line in the rich view."""
    import json

    from sdclip.cli.main import main

    folder = t5_tokenizer_dir()
    assert main(["inspect", "a (red:1.3) fox in the snow", "--family", "sd3", "--t5-tokenizer", str(folder), "--preset", "diffusers", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["t5"]["limit"] == 256 and out["t5"]["count"] > 0
    assert main(["inspect", "a (red:1.3) fox", "--family", "flux", "--t5-tokenizer", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "T5" in text and "/512" in text and "fox" in text
    assert main(["inspect", "a fox", "--family", "sd3"]) == 2
    assert "--t5-tokenizer" in capsys.readouterr().err
