"""`sdclip attention --out`: never a file it did not write (issue 24.1), never inside the model (19.1 / 24.2),
one line for an out under a file (24.3) or a device this machine lacks (19.6), modes from the umask (19.11),
progress on a terminal (19.12), single-file checkpoints (19.20). Tiny random SD1 pipeline saved as real files."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdclip.attention.output import RECORD
from sdclip.cli.main import main
from tiny_pipelines import sd1_pipeline

FAST = ["--steps", "2", "--size", "16x16"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipe") / "tiny-sd1"
    sd1_pipeline().save_pretrained(str(path))
    return path


def _run(model: Path, out: Path, prompt: str = "a red fox", *extra: str) -> int:
    return main(["attention", "--model", str(model), "--prompt", prompt, *FAST, "--out", str(out), *extra])


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line(capsys, needle: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("sdclip: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err
    return err


def test_a_users_file_in_words_is_never_replaced(model, tmp_path, capsys):
    """Before the fix the whole words/ folder was replaced: the user's file was gone, exit 0."""
    out = tmp_path / "out"
    (out / "words").mkdir(parents=True)
    (out / "words" / "mine.txt").write_text("my notes")
    assert _run(model, out) == 2
    _one_line(capsys, "words/mine.txt")
    assert (out / "words" / "mine.txt").read_text() == "my notes"
    assert sorted(p.name for p in out.rglob("*")) == ["mine.txt", "words"]  # nothing written


@pytest.mark.parametrize("name", ["image.png", "maps.safetensors", RECORD])
def test_a_users_file_at_a_result_name_is_refused(model, tmp_path, capsys, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"the user's own")
    assert _run(model, out) == 2
    _one_line(capsys, name)
    assert (out / name).read_bytes() == b"the user's own" and len(list(out.iterdir())) == 1


def test_other_files_are_kept_and_reruns_replace_only_their_own(model, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert _run(model, out, "a photo of a red fox") == 0  # written beside the user's file
    assert (out / "notes.txt").read_text() == "keep me"
    record = json.loads((out / RECORD).read_text())
    assert set(record["files"]) == {"maps.safetensors", "tokens.json", "image.png", "contact_sheet.png",
                                    *(f"words/{p.name}" for p in (out / "words").iterdir())}
    # a re-run replaces its own files; the longer prompt's extra overlays (its own) go
    assert _run(model, out, "red fox") == 0
    assert sorted(p.name for p in (out / "words").iterdir()) == ["00_red.png", "01_fox.png"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # a result file the user changed since is theirs now: refused, kept
    (out / "image.png").write_bytes(b"edited by hand")
    capsys.readouterr()
    assert _run(model, out, "red fox") == 2
    _one_line(capsys, "image.png")
    assert (out / "image.png").read_bytes() == b"edited by hand"


@pytest.mark.parametrize("inside", ["", "unet", "text_encoder", "tokenizer", "new"])
def test_out_inside_the_model_folder_is_refused(model, capsys, inside):
    before = _snapshot(model)
    assert _run(model, model / inside if inside else model) == 2
    _one_line(capsys, "refusing to write there")
    assert _snapshot(model) == before


def test_out_under_a_file_is_one_line(model, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert _run(model, a_file / "under" / "here") == 2
    _one_line(capsys, f"{a_file} is a file, not a folder")
    assert _run(model, a_file) == 2
    _one_line(capsys, "is a file, not a folder")
    assert a_file.read_text() == "x"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device,needle", [("cuda", "sees no CUDA GPU"), ("gpu", "did you mean --device cuda")])
def test_a_device_this_machine_lacks_is_one_line_and_leaves_no_folder(model, tmp_path, capsys, device, needle):
    out = tmp_path / "new" / "out"
    assert _run(model, out, "a fox", "--device", device) == 2
    _one_line(capsys, needle)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_follow_the_umask(model, tmp_path, mask):
    out = tmp_path / "out"
    old = os.umask(mask)
    try:
        assert _run(model, out) == 0
    finally:
        os.umask(old)
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    for name, mode in modes.items():
        want = 0o777 & ~mask if (out / name).is_dir() else 0o666 & ~mask
        assert mode == want, (name, oct(mode), oct(want))


def test_progress_is_drawn_on_a_terminal_and_quiet_otherwise(model, tmp_path, capsys, monkeypatch):
    """In-process, stderr on a real pseudo-terminal (read by a thread so the drawing never blocks)."""
    leader, follower = pty.openpty()
    drawn: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:
                return
            if not data:
                return
            drawn.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    terminal = open(follower, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm")
    try:
        assert _run(model, tmp_path / "tty", "a fox") == 0
    finally:
        monkeypatch.undo()
        terminal.close()
        reader.join(timeout=10)
        os.close(leader)
    text = b"".join(drawn).decode("utf-8", "replace")
    assert "denoising" in text and "Traceback" not in text, text
    capsys.readouterr()
    assert _run(model, tmp_path / "pipe", "a fox") == 0  # not a terminal: only the result line
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("wrote ")


@pytest.mark.slow
def test_progress_in_a_real_terminal_subprocess(model, tmp_path):
    """The real `sdclip` process on a pty (slow: a fresh interpreter imports torch and diffusers)."""
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "sdclip", "attention", "--model", str(model), "--prompt", "a fox",
           "--steps", "3", "--size", "16x16"]
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "tty")], stdin=follower, stdout=follower,
                            stderr=follower, env=env, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    drawn = b"".join(chunks).decode("utf-8", "replace")
    assert proc.wait(timeout=300) == 0, drawn
    assert "denoising" in drawn and "Traceback" not in drawn, drawn  # quiet when piped: the in-process test


def test_single_file_checkpoints(model, tmp_path, capsys, monkeypatch):
    """A .ckpt (a pickle) is refused; a .safetensors without a UNet says so; one diffusers cannot configure
    offline names --pipeline-config; every case one line, before any folder is made."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    out = tmp_path / "o"
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not loaded")
    assert _run(ckpt, out) == 2
    _one_line(capsys, "never loads")
    text_only = tmp_path / "clip.safetensors"
    save_file({"cond_stage_model.transformer.text_model.embeddings.position_ids": torch.zeros(1, 77)}, str(text_only))
    assert _run(text_only, out) == 2
    _one_line(capsys, "holds no UNet")
    whole = tmp_path / "sd1.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.zeros(1, 77)}, str(whole))
    assert _run(whole, out) == 2
    _one_line(capsys, "pass --pipeline-config DIR")
    # a local diffusers folder's configs are used offline (this fake file then lacks the text encoder's weights)
    assert _run(whole, out, "a fox", "--pipeline-config", str(model)) == 2
    err = _one_line(capsys, f"with the configs from --pipeline-config {model}")
    assert "cached snapshot" not in err
    assert _run(whole, out, "a fox", "--pipeline-config", str(tmp_path)) == 2
    _one_line(capsys, "--pipeline-config wants a local diffusers pipeline folder")
    assert not out.exists()


def test_a_full_disk_while_writing_is_one_line_and_keeps_the_earlier_result(model, tmp_path, capsys, monkeypatch):
    from PIL import Image

    out = tmp_path / "out"
    assert _run(model, out) == 0
    before = _snapshot(out)

    def full(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    capsys.readouterr()
    assert _run(model, out, "a blue bird") == 2
    _one_line(capsys, "disk full")
    assert _snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_killed_runs_temporary_folder_is_removed_by_the_next_run(model, tmp_path):
    out = tmp_path / "out"
    assert _run(model, out) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".sdclip-attention.{int(dead.stdout)}.abc.tmp"
    (stale / "words").mkdir(parents=True)
    live = out / f".sdclip-attention.{os.getppid()}.abc.tmp"  # a live process's: kept
    live.mkdir()
    assert _run(model, out) == 0
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("entry", ["../victim.txt", "ABSOLUTE", "words/../../victim.txt", "words/sub/x.png", "notes.txt"])
def test_a_forged_record_never_removes_a_file_it_names(model, tmp_path, capsys, entry):
    """The record is untrusted: an entry outside the result places (found by bench/reliability.py's
    attention_outputs section: a re-run deleted `../victim.txt` when the record listed it with its hash)."""
    out = tmp_path / "out"
    assert _run(model, out, "a photo of a red fox") == 0
    victim = tmp_path / "victim.txt" if "victim" in entry else out / entry if entry != "ABSOLUTE" else tmp_path / "victim.txt"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text("the user's own")
    record = json.loads((out / RECORD).read_text())
    key = str(victim) if entry == "ABSOLUTE" else entry
    record["files"][key] = [hashlib.sha256(victim.read_bytes()).hexdigest()]
    (out / RECORD).write_text(json.dumps(record))
    capsys.readouterr()
    assert _run(model, out, "red fox") == 2  # a record that is not the command's own: refused, nothing touched
    _one_line(capsys, RECORD)
    assert victim.read_text() == "the user's own"
