"""`embed` and `encode` as people run them: in a terminal (a real pty, so rich draws its progress display),
and stopped with Ctrl-C (a real SIGINT to the process). Issue 19 items 2 and 5.

Before: `embed` crashed in any terminal (`{task.total:,}` of the validation task, whose total is None), and
Ctrl-C printed a 25–30 line KeyboardInterrupt traceback. Now: a terminal run finishes; Ctrl-C is one line,
exit 130, and nothing is lost (the same command resumes to every caption once).
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tiny_models import tiny_family, write_layout

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


@pytest.fixture(scope="module")
def sd1(tmp_path_factory) -> Path:
    return write_layout("single.safetensors", tiny_family("sd1"), tmp_path_factory.mktemp("models") / "sd1")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "TERM": "xterm-256color",
            "COLUMNS": "120", "LINES": "40"}


class Terminal:
    """A command whose stdin/stdout/stderr are a pty (what `isatty()` and rich see in a real terminal)."""

    def __init__(self, args: list[str]):
        master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "sdclip", *args], stdin=slave, stdout=slave, stderr=slave,
                                     env=env(), close_fds=True, start_new_session=True)
        os.close(slave)
        self.master = master
        self.output = b""

    def read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                self.output += os.read(self.master, 65536)
            except OSError:  # EIO: the child closed the pty
                pass

    def wait(self, timeout: float = 120) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read(0.1)
            if self.proc.poll() is not None:
                for _ in range(20):
                    self.read(0.05)
                break
        else:
            self.proc.kill()
            raise AssertionError(f"still running after {timeout} s: {self.text}")
        os.close(self.master)
        return self.proc.returncode, self.text

    @property
    def text(self) -> str:
        return ANSI.sub("", self.output.decode("utf-8", "replace"))


def test_embed_in_a_terminal_draws_progress_and_finishes(sd1, tmp_path):
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(f"caption {i}, a red fox\n" for i in range(300)), encoding="utf-8")
    out = tmp_path / "out"
    term = Terminal(["embed", "--model", str(sd1), "--captions", str(caps), "--out", str(out), "--shard-size", "50"])
    code, text = term.wait()
    assert code == 0, text
    assert "Traceback" not in text and "300 of 300 caption(s) in 6 shard(s)" in text


def test_encode_in_a_terminal_draws_progress_and_finishes(sd1, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(40)), encoding="utf-8")
    out = tmp_path / "c.safetensors"
    term = Terminal(["encode", "--model", str(sd1), "--prompts-file", str(prompts), "--out", str(out),
                     "--batch-size", "4"])
    code, text = term.wait()
    assert code == 0, text
    assert "Traceback" not in text and "wrote" in text and load_file(out)["prompt_embeds"].shape[0] == 40


def _wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen, term: Terminal | None = None,
              timeout: float = 120) -> None:
    folder, pattern = path_glob
    deadline = time.monotonic() + timeout
    while not (folder.is_dir() and list(folder.glob(pattern))):
        if term is not None:
            term.read(0.02)
        else:
            time.sleep(0.02)
        assert proc.poll() is None and time.monotonic() < deadline, "ended before it could be interrupted"


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "pipe"])
def test_ctrl_c_during_embed_is_one_line_and_loses_nothing(sd1, tmp_path, tty):
    caps = tmp_path / "caps.txt"
    captions = [f"caption {i}, a {('red', 'blue', 'green')[i % 3]} fox number {i}" for i in range(240)]
    caps.write_text("".join(c + "\n" for c in captions), encoding="utf-8")
    out = tmp_path / "out"
    args = ["embed", "--model", str(sd1), "--captions", str(caps), "--out", str(out), "--shard-size", "10",
            "--batch-size", "4"]
    if tty:
        term = Terminal(args)
        proc = term.proc
    else:
        term = None
        proc = subprocess.Popen([sys.executable, "-m", "sdclip", *args], env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    _wait_for((out, "shard-00001.safetensors"), proc, term)
    os.kill(proc.pid, signal.SIGINT)
    if term is not None:
        code, text = term.wait()
        lines = [line for line in text.splitlines() if line.strip() and "━" not in line]  # minus progress redraws
    else:
        stdout, stderr = proc.communicate(timeout=120)
        code, text, lines = proc.returncode, stderr, stderr.splitlines()
    assert code == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert lines == ["sdclip: interrupted; finished shards are kept: re-run the same command to resume"], text
    assert not list(out.glob(".*.tmp"))
    from sdclip.cli.main import main

    assert main(args) == 0  # the same command resumes (in-process: no second interpreter start)
    indices = [i for p in sorted(out.glob("shard-*.safetensors")) for i in load_file(p)["index"].tolist()]
    assert indices == list(range(240))


def test_ctrl_c_during_encode_is_one_line_and_writes_nothing(sd1, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}, a red fox in a misty forest\n" for i in range(3000)), encoding="utf-8")
    folder = tmp_path / "outdir"
    folder.mkdir()
    out = folder / "c.safetensors"
    out.write_bytes(b"an earlier result")
    proc = subprocess.Popen([sys.executable, "-m", "sdclip", "encode", "--model", str(sd1), "--prompts-file",
                             str(prompts), "--out", str(out), "--batch-size", "4"], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for((folder, ".c.safetensors.*.tmp"), proc)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("sdclip: note:")]  # 19.10's size note
    assert lines == ["sdclip: interrupted; nothing written (an earlier --out is unchanged)"], stderr
    assert out.read_bytes() == b"an earlier result" and not list(folder.glob(".*.tmp"))
