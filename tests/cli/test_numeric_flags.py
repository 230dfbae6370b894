"""Every numeric flag of every command takes a checked number (sdclip.cli.options): `nan`, `inf` and numbers no
machine integer holds are refused while parsing, naming the flag (`attention --guidance nan` used to run to
exit 0 with meaningless maps; `--seed 2**64` died in torch with "Overflow when unpacking long long")."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from sdclip.cli.main import build_parser
from sdclip.cli.options import CheckedNumber, FiniteFloat, seed_number

ROOT = Path(__file__).resolve().parents[2]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def numeric_flags() -> list[tuple[str, str, CheckedNumber]]:
    """(command, flag, type) of every flag that takes a number."""
    out = []
    for name, parser in subcommands().items():
        for action in parser._actions:
            if isinstance(action.type, CheckedNumber):
                out.append((name, action.option_strings[0], action.type))
    return out


NUMERIC = numeric_flags()


def test_every_numeric_flag_uses_a_checked_type():
    unchecked = []
    for name, parser in subcommands().items():
        for action in parser._actions:
            if not action.option_strings or isinstance(action.type, CheckedNumber):
                continue
            number_default = isinstance(action.default, (int, float)) and not isinstance(action.default, bool)
            takes_value = action.nargs != 0
            if action.type in (int, float, complex) or (number_default and takes_value):
                unchecked.append(f"{name} {action.option_strings[0]}")
    assert not unchecked, f"numeric flags without a checked type: {unchecked}"
    flags = {(c, f) for c, f, _ in NUMERIC}
    assert {("attention", "--guidance"), ("attention", "--seed"), ("serve", "--time-limit"), ("encode", "--clip-skip"),
            ("embed", "--shard-size"), ("inspect", "--step")} <= flags


@pytest.mark.parametrize("command, flag, kind", NUMERIC, ids=[f"{c}{f}" for c, f, _ in NUMERIC])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999", str(2**64), "9" * 5000, "1.5x"])
def test_non_finite_and_huge_numbers_are_refused_naming_the_flag(command, flag, kind, value, capsys):
    if isinstance(kind, FiniteFloat) and value == str(2**64):
        pytest.skip("a large finite float is a number")
    with pytest.raises(SystemExit) as exit_:
        subcommands()[command].parse_args([f"{flag}={value}"])  # `=`: argparse would read -inf as a flag
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"sdclip {command}: error: argument {flag}: ")
    assert "expected one argument" not in err[-1]
    assert len(err[-1]) < 200  # a 5,000-digit value is not echoed back


def test_in_range_numbers_still_parse():
    attention = subcommands()["attention"]
    args = attention.parse_args(["--model", "m", "--prompt", "p", "--out", "o", "--guidance=-1.5e2",
                                 "--seed", str(2**64 - 1), "--steps", "3"])
    assert (args.guidance, args.seed, args.steps) == (-150.0, 2**64 - 1, 3)
    assert seed_number("0") == 0
    with pytest.raises(argparse.ArgumentTypeError):
        seed_number("-1")


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["attention", "--model", "m", "--prompt", "p", "--out", "o", "--guidance", "nan"], "--guidance"),
        (["attention", "--model", "m", "--prompt", "p", "--out", "o", "--guidance", "inf"], "--guidance"),
        (["attention", "--model", "m", "--prompt", "p", "--out", "o", "--seed", str(2**64)], "--seed"),
        (["serve", "--time-limit", "nan"], "--time-limit"),
        (["encode", "--model", "m", "--prompt", "p", "--out", "o.safetensors", "--row-limit", "1e3"], "--row-limit"),
    ],
)
def test_the_command_line_refuses_with_exit_2(argv, flag, tmp_path):
    run = subprocess.run([sys.executable, "-m", "sdclip", *argv], capture_output=True, text=True, cwd=tmp_path,
                         timeout=60)
    assert run.returncode == 2, run.stderr
    assert f"error: argument {flag}" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists()
