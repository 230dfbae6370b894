"""What a mistyped flag and each command's --help tell a new user (issue 19, walked again)."""

from __future__ import annotations

import pytest

from sdclip.cli import main


def test_a_typo_is_named_before_a_missing_argument(capsys: pytest.CaptureFixture[str]) -> None:
    """`--promt` is a typo, not a missing --prompt: argparse alone reported only the missing argument."""
    with pytest.raises(SystemExit) as exit_:
        main(["encode", "--model", "M", "--promt", "a fox", "--out", "x.safetensors"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "sdclip encode: error: unrecognized arguments: --promt (did you mean --prompt?)"


def test_abbreviations_and_values_are_not_typos(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--fam", "sd1", "--json", "a fox"]) == 0  # argparse's unique prefix
    assert '"family": "sd1"' in capsys.readouterr().out


def test_embed_help_lists_no_per_encoder_prompts(capsys: pytest.CaptureFixture[str]) -> None:
    """--prompt-2 / --prompt-3 mean nothing for captions (as for serve)."""
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    out = capsys.readouterr().out
    assert "--prompt-2" not in out and "--prompt-3" not in out and "--captions" in out
