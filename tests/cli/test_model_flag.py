"""A `--model` that names nothing is one line naming the flag, in every command that loads a model, before
anything loads or any output is made (the loader alone says only the path: it is a library call)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", [
    ["encode", "--prompt", "a cat", "--out", "{tmp}/out.safetensors"],
    ["embed", "--captions", "{tmp}/caps.txt", "--out", "{tmp}/out"],
    ["serve", "--port", "0"],
])
def test_a_model_path_that_names_nothing_is_one_line_naming_the_flag(tmp_path, command):
    (tmp_path / "caps.txt").write_text("a cat\n")
    argv = [a.format(tmp=tmp_path) for a in command] + ["--model", "./sd14.safetensors"]
    res = subprocess.run([sys.executable, "-m", "sdclip", *argv], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == ["sdclip: --model ./sd14.safetensors: no such file or folder (nor a hub id such as owner/name)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps.txt"]  # nothing made
