"""The README, walked as a new user walks it: every `sdclip …` command it shows uses flags that command has,
every `from sdclip… import …` of its Python blocks names something that exists, and a mistyped flag value
(`--family sdx`, the usual slip) is one line naming the nearest choice, not the command's whole usage."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sdclip.cli.main import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"
FLAG = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)(?![\w])")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def blocks(language: str) -> list[str]:
    """The README's fenced blocks of one language, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


def shell_commands() -> list[tuple[str, str]]:
    """(command, its text) of every `sdclip X …` in a bash block — a `\\` continuation or a usage line that
    goes on with `[--flag …]` joined — and of every inline `sdclip X …` span of the prose; comments cut."""
    found = []
    for block in blocks("bash"):
        lines: list[str] = []
        for line in block.splitlines():
            if lines and (lines[-1].endswith("\\") or line.lstrip().startswith("[--")):
                lines[-1] = lines[-1].rstrip("\\") + " " + line
            else:
                lines.append(line)
        for line in lines:
            line = re.split(r"\s#\s", line)[0]
            found += [(m[1], m[2]) for m in re.finditer(r"\bsdclip (\w+)([^|;]*)", line)]
    text = README.read_text(encoding="utf-8")
    found += [(m[1], m[2]) for m in re.finditer(r"`sdclip (\w+)([^`]*)`", text)]
    return found


def test_the_readme_shows_every_command() -> None:
    shown = {command for command, _ in shell_commands()}
    assert set(subcommands()) <= shown, f"never shown: {set(subcommands()) - shown}"


def test_every_flag_the_readme_gives_a_command_is_one_it_has() -> None:
    parsers = subcommands()
    wrong = []
    for command, text in shell_commands():
        if command not in parsers:
            wrong.append(f"sdclip {command}: no such command")
            continue
        known = parsers[command]._option_string_actions
        wrong += [f"sdclip {command} {flag}" for flag in FLAG.findall(text) if flag not in known]
    assert not wrong, wrong


def test_every_flag_of_every_command_is_named_in_the_readme() -> None:
    """The other way round: a flag `--help` lists and the README never names is one a new user cannot find
    (`--embedding-name`, `--comma-backtrack`, `--pooled-source` were such)."""
    named = set(FLAG.findall(README.read_text(encoding="utf-8")))
    unnamed = sorted(f"sdclip {command} {flag}" for command, parser in subcommands().items()
                     for flag in parser._option_string_actions if flag.startswith("--") and flag not in named
                     and flag != "--help")
    assert not unnamed, unnamed


def test_the_walk_reads_usage_lines_and_continuations() -> None:
    """The reader above sees the flags of serve's two-line usage and of a `\\`-continued attention command
    (so a renamed flag there would be caught)."""
    flags = {(command, flag) for command, text in shell_commands() for flag in FLAG.findall(text)}
    assert {("serve", "--body-timeout"), ("serve", "--llm-tokenizer"), ("attention", "--true-cfg-scale"),
            ("attention", "--pipeline-config"), ("embed", "--dtype"), ("encode", "--clip-skip")} <= flags


def test_every_name_the_python_blocks_import_exists() -> None:
    missing = []
    for block in blocks("python"):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sdclip"):
                module = importlib.import_module(node.module)
                missing += [f"{node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name) and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
    assert not missing, missing


@pytest.mark.parametrize("argv, flag, nearest", [
    (["encode", "--model", "m.safetensors", "--family", "sdx", "--prompt", "a fox", "--out", "c.safetensors"],
     "--family", "'sdxl'"),
    (["inspect", "a fox", "--layout", "chunks"], "--layout", "'chunk'"),
    (["embed", "--model", "m", "--captions", "c.txt", "--out", "e/", "--format", "kohyaa"], "--format", "'kohya'"),
    (["attention", "--model", "m", "--prompt", "a", "--out", "o", "--blocks", "singel"], "--blocks", "'single'"),
    (["encdoe", "--model", "m"], "command", "'encode'"),
])
def test_a_mistyped_value_is_one_line_naming_the_nearest_choice(argv: list[str], flag: str, nearest: str) -> None:
    """A real `sdclip` process: exit 2, one stderr line (argparse printed the command's 16–25-line usage
    first), naming the flag, the closest choice and all of them."""
    run = subprocess.run([sys.executable, "-m", "sdclip", *argv], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stdout == ""
    (line,) = run.stderr.splitlines()
    assert f"argument {flag}: invalid choice:" in line and f"did you mean {nearest}?" in line
    assert "(choose from" in line


def test_a_value_with_no_near_choice_and_a_bad_number_are_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    from sdclip.cli import main

    for argv, said in ((["inspect", "a", "--preset", "automatic1111x"], "argument --preset: invalid choice"),
                       (["encode", "--model", "m", "--prompt", "a", "--out", "c.safetensors", "--clip-skip", "two"],
                        "argument --clip-skip: 'two' is not a whole number")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert said in line and "did you mean" not in line


def test_a_command_line_of_the_wrong_shape_keeps_its_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing argument is answered with the usage that shows what is required (unchanged)."""
    from sdclip.cli import main

    with pytest.raises(SystemExit):
        main(["encode", "--model", "m", "--prompt", "a"])
    err = capsys.readouterr().err
    assert err.startswith("usage: sdclip encode") and err.splitlines()[-1].endswith("required: --out")


@pytest.mark.parametrize("argv", [
    ["inspect", "a fox", "--family", "sd3", "--t5-tokenizer", "{missing}"],
    ["inspect", "a fox", "--family", "qwen-image", "--llm-tokenizer", "{missing}"],
    ["inspect", "a fox", "--family", "flux", "--t5-tokenizer", "{file}"],
    ["serve", "--port", "0", "--llm-tokenizer", "{missing}"],
    ["serve", "--port", "0", "--t5-tokenizer", "{file}"],
])
def test_a_mistyped_tokenizer_path_names_its_flag(argv: list[str], tmp_path: Path) -> None:
    """`--t5-tokenizer ./nowhere` said only `nowhere: not a folder`, `--llm-tokenizer ./nowhere` `nowhere:
    not a tokenizer folder`: now the flag and what is wrong with the path, as `--model` and `--out` do."""
    a_file = tmp_path / "captions.txt"
    a_file.write_text("a fox\n")
    given = {"{missing}": str(tmp_path / "nowhere"), "{file}": str(a_file)}
    argv = [given.get(a, a) for a in argv]
    run = subprocess.run([sys.executable, "-m", "sdclip", *argv], capture_output=True, text=True, timeout=60)
    flag = argv[-2]
    what = "no such folder" if argv[-1].endswith("nowhere") else "a file, not a folder"
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == f"sdclip: {flag} {argv[-1]}: {what} (pass the model folder or its tokenizer folder)\n"


def test_a_negative_for_flux2_dev_is_one_warning_line(tmp_path: Path) -> None:
    """`sdclip encode --negative` on Flux.2 [dev] (whose pipeline takes none) printed the Conditioner's Python
    UserWarning: a source path, `UserWarning:` and the code line of cli/encode.py. Now sdclip's own one line,
    and the file still holds what Flux2Pipeline takes."""
    import warnings

    from safetensors.torch import load_file
    from tiny_llm import tiny_folder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = tiny_folder(tmp_path, "flux2")
    out = tmp_path / "c.safetensors"
    run = subprocess.run([sys.executable, "-m", "sdclip", "encode", "--model", str(folder), "--prompt", "a red fox",
                          "--negative", "blurry", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ("sdclip: warning: --negative: flux2's pipeline takes no negative prompt: it is ignored "
                          "(not encoded, not in --out)\n")
    assert set(load_file(out)) == {"prompt_embeds"}
