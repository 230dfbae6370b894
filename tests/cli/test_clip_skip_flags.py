"""`--clip-skip` for people from other tools: a negative N is ComfyUI's count, `--clip-skip-convention` reads N
as a1111, comfy or diffusers do (and `--help` says what each means), and a bad N fails in one line before any
model loads."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from sdclip.cli.main import build_parser
from sdclip.cli.options import model_options
from sdclip.conventions.clip_skip import SKIP_MEANINGS, LayerSelect
from sdclip.conventions.family import FAMILIES

SD1_L = FAMILIES["sd1"].roles[0]
XL_L, XL_G = FAMILIES["sdxl"].roles


def parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def options(*flags: str):  # noqa: ANN201
    return model_options(parsers()["encode"].parse_args(["--model", "m", "--prompt", "p", "--out", "o.safetensors", *flags]))


def test_a_negative_number_is_comfys_count_under_any_preset():
    for preset in ("comfy", "a1111", "diffusers"):
        o = options("--preset", preset, "--clip-skip", "-2")
        assert o.clip_skip_convention == "comfy"
        assert o.layer(SD1_L) == LayerSelect(1, True)  # penultimate


def test_a_positive_number_stays_a1111s_count():
    o = options("--preset", "diffusers", "--clip-skip", "2")
    assert (o.clip_skip_convention, o.layer(SD1_L)) == ("a1111", LayerSelect(1, True))


@pytest.mark.parametrize(
    "convention, n, sd1, sdxl_g",
    [("a1111", "2", LayerSelect(1, True), LayerSelect(1, False)),
     ("comfy", "-3", LayerSelect(2, True), LayerSelect(2, False)),
     ("diffusers", "1", LayerSelect(1, True), LayerSelect(2, False)),
     ("diffusers", "0", LayerSelect(0, True), LayerSelect(1, False))],
)
def test_the_convention_flag_reads_n_as_that_tool_does(convention, n, sd1, sdxl_g):
    o = options("--clip-skip-convention", convention, "--clip-skip", n)
    assert (o.layer(SD1_L), o.layer(XL_G)) == (sd1, sdxl_g)


def test_a_diffusers_users_clip_skip_1_gets_a_note(capsys):
    options("--preset", "diffusers", "--clip-skip", "1")
    assert "--clip-skip-convention diffusers" in capsys.readouterr().err
    options("--preset", "diffusers", "--clip-skip-convention", "diffusers", "--clip-skip", "1")
    options("--preset", "a1111", "--clip-skip", "1")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "flags, message",
    [(["--clip-skip-convention", "a1111", "--clip-skip", "-2"], "convention comfy"),
     (["--clip-skip-convention", "comfy", "--clip-skip", "2"], "convention a1111"),
     (["--clip-skip-convention", "diffusers"], "--clip-skip, which is not given"),
     (["--family", "sd1", "--clip-skip", "13"], r"family sd1: clip_l: .*1\.\.12")],
)
def test_bad_combinations_are_one_line(flags, message):
    with pytest.raises(ValueError, match=message) as err:
        options(*flags)
    assert "\n" not in str(err.value)


def test_every_command_with_clip_skip_offers_the_convention_and_explains_it():
    with_skip = {name: p for name, p in parsers().items() if "--clip-skip" in p._option_string_actions}
    assert {"encode", "embed", "serve", "attention"} <= set(with_skip)
    for name, p in with_skip.items():
        assert "--clip-skip-convention" in p._option_string_actions, name
        text = " ".join(p.format_help().split())
        for convention, meaning in SKIP_MEANINGS.items():
            assert f"{convention}: {' '.join(meaning.split())}" in text, (name, convention)


@pytest.mark.parametrize(
    "flags, first_words",
    [(["--clip-skip", "0"], "sdclip: a1111 clip skip counts from 1"),
     (["--family", "sd1", "--clip-skip", "13"], "sdclip: family sd1: clip_l: clip skip 13"),
     (["--preset", "comfy", "--clip-skip-convention", "comfy", "--clip-skip", "2"], "sdclip: comfy stop_at_clip_layer")],
)
def test_encode_refuses_a_bad_clip_skip_before_the_model_loads(flags, first_words, tmp_path):
    """The model does not even exist: the clip-skip line comes first, and nothing is written."""
    out = tmp_path / "cond.safetensors"
    run = subprocess.run(
        [sys.executable, "-m", "sdclip", "encode", "--model", str(tmp_path / "no-such-model"), "--prompt", "a fox",
         "--out", str(out), *flags], capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(first_words) and run.stderr.count("\n") == 1, run.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
