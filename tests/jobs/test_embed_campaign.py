"""`sdclip embed` under a hostile tester (issue 21, "Bad input"): what the other embed tests left uncovered.

Every case builds real files (the tests' tiny models, real image folders, real trainer files) and runs the CLI:
in-process through `main()` where the failure can be staged there, as a real subprocess where it must be real
(SIGKILL, a kernel file-size limit, a second job holding the folder's lock), under a pty for Ctrl-C. Oracles: the
victims' bytes, the folder listing, `--verify`, and the rows of an undisturbed run read through `sdclip.dataset`.

A case marked `xfail(strict=True)` is a failure found here whose fix lies in another engineer's files: it fails
today and must pass once fixed (its reason says what happens and what should).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sdclip.cli.main import main
from tiny_models import tiny_family, write_layout
from embed_rows import file_size_limit, read_rows, write_txt

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"sd1": write_layout("single.safetensors", tiny_family("sd1"), root / "sd1"),
            "sdxl": write_layout("single.safetensors", tiny_family("sdxl"), root / "sdxl")}


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory) -> Path:
    return write_layout("diffusers", tiny_family("sdxl"), tmp_path_factory.mktemp("sdxl-folder"))


def embed(*args: object) -> int:
    return main(["embed", *map(str, args)])


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def image_folder(root: Path, captions: list[str]) -> Path:
    """Images (not real pictures: the job reads only names) with sidecar captions, as trainers keep them."""
    root.mkdir(parents=True)
    for i, caption in enumerate(captions):
        (root / f"i{i:04d}.png").write_bytes(b"not an image")
        (root / f"i{i:04d}.txt").write_text(caption, encoding="utf-8")
    return root


def listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("sdclip: ") and "Traceback" not in err, err
    return err


# ---- --out is never the captions input, nor inside an image folder the job walks --------------------------

def test_out_equal_to_or_inside_the_captions_is_refused_before_the_model_loads(tmp_path, models, capsys):
    """Old code: `--out IMAGES` wrote manifest.json, shards and the scan's arrays among the user's images, and
    `--out IMAGES/sub` inside the folder the reader walks; now one line each, before the model loads, the
    folder untouched. A link to the image folder is the folder."""
    images = image_folder(tmp_path / "imgs", ["a red fox", "a blue cat"])
    before = listing(images)
    (tmp_path / "link").symlink_to(images)
    no_model = tmp_path / "no-such-model"  # refused before any load: the model is never looked at
    for out in (images, images / "embeds", tmp_path / "link", tmp_path / "link" / "embeds"):
        assert embed("--model", no_model, "--captions", images, "--out", out) == 2
        err = one_line(capsys.readouterr().err)
        assert "read by this command" in err and "choose an output outside it" in err, err
        assert listing(images) == before
    caps = write_txt(tmp_path / "caps.txt", ["a red fox"])
    for out in (caps, caps / "embeds"):
        assert embed("--model", models["sd1"], "--captions", caps, "--out", out) == 2
        one_line(capsys.readouterr().err)
    assert caps.read_text() == "a red fox\n"
    # a folder holding the captions is fine (as for the model): the job writes only its own names there
    assert embed("--model", models["sd1"], "--captions", caps, "--out", tmp_path) == 0
    assert caps.read_text() == "a red fox\n" and embed("--verify", tmp_path) == 0


@pytest.mark.parametrize("fmt", ["kohya", "ai-toolkit"])
def test_trainer_files_are_never_written_inside_the_model_folder(tmp_path, sdxl_folder, fmt, capsys):
    """The formats that write beside the images follow --out's rule. Old code: an image folder inside a diffusers
    model folder (or the model folder itself as --captions) got npz files / a _t_e_cache/ folder written into
    what the model load reads."""
    model = sdxl_folder
    images = image_folder(model / f"imgs-{fmt}", ["a red fox", "a blue cat"])
    before = listing(model)
    for captions in (images, model):
        assert embed("--model", model, "--captions", captions, "--out", tmp_path / "out", "--format", fmt) == 2
        err = one_line(capsys.readouterr().err)
        assert f"--format {fmt} writes beside the images" in err and "read by this command" in err, err
        assert listing(model) == before and not (tmp_path / "out").exists()


# ---- captions changed under a running job ------------------------------------------------------------------

def _edit_at_shard(monkeypatch, k: int, edit) -> None:  # noqa: ANN001
    """Run `edit()` just before the job reads shard k (between shards, as a user saving the file would)."""
    import sdclip.jobs.work as work

    real = work.ShardWork.prepare

    def prepare(self, shard, seek, rows):  # noqa: ANN001, ANN202
        if shard == k:
            edit()
        return real(self, shard, seek, rows)

    monkeypatch.setattr(work.ShardWork, "prepare", prepare)


@pytest.mark.parametrize("change", ["append", "edit-written"])
def test_captions_changed_where_no_pending_shard_reads_are_one_line_and_resume(tmp_path, models, monkeypatch, capsys,
                                                                               change):
    """Old code: a line appended after the scan, or an edit of a row already written, went unseen: exit 0 and a
    summary of every caption done, while the cache held the old captions. Now the job ends with one line saying
    the captions changed while it ran; the same command then encodes the change, and --verify passes."""
    captions = [f"caption number {i}" for i in range(12)]
    caps = write_txt(tmp_path / "caps.txt", captions)
    # an edit of the same length: the later shards' saved byte offsets stay right, so no pending shard notices it
    final = [*captions, "an appended caption"] if change == "append" else ["caption NUMBER 0", *captions[1:]]
    _edit_at_shard(monkeypatch, 2, lambda: write_txt(caps, final))
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 2
    captured = capsys.readouterr()
    err = one_line(captured.err)
    assert "changed while the job ran" in err and "re-run the same command" in err
    monkeypatch.undo()
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 0
    said = capsys.readouterr()
    if change == "append":
        assert "no finished shard's captions changed, 1 more to do, 3 kept" in said.err + said.out
    else:
        assert "1 shard(s) re-encoded (0; 4 caption(s)), 2 kept" in said.err + said.out
    assert embed("--verify", out) == 0
    whole = tmp_path / "whole"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", whole, "--shard-size", 4) == 0
    a, b = read_rows(out), read_rows(whole)
    assert a["index"].tolist() == list(range(len(final))) and torch.equal(a["prompt_embeds"], b["prompt_embeds"])


def test_a_re_run_after_the_captions_shrank_says_shards_were_removed_not_re_encoded(tmp_path, models, capsys):
    """Old code said "2 shard(s) re-encoded (1, 2; 8 caption(s))" when the file lost its last 8 lines: those
    shards are gone, nothing was encoded for them."""
    caps = write_txt(tmp_path / "caps.txt", [f"caption {i}" for i in range(12)])
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 0
    write_txt(caps, [f"caption {i}" for i in range(4)])
    capsys.readouterr()
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 0
    said = capsys.readouterr()
    assert ("the captions changed since the last run: no finished shard's captions changed, 2 past the captions' new "
            "end removed, 1 kept") in said.err + said.out
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors"]
    assert embed("--verify", out) == 0


def test_a_sidecar_edited_mid_job_in_a_real_process_is_one_line_and_resumes(tmp_path, models):
    """A real `sdclip embed` on an image folder; a sidecar of a later shard is rewritten once two shards are
    listed: one line naming the image, exit 2, nothing written from the edit; the re-run finishes."""
    images = image_folder(tmp_path / "imgs", [f"caption {i}, a red fox" for i in range(240)])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sdclip", "embed", "--model", str(models["sd1"]), "--captions", str(images),
           "--out", str(out), "--shard-size", "10", "--batch-size", "4"]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("shard-*.safetensors"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before the edit"
        time.sleep(0.01)
    (images / "i0230.txt").write_text("an edited caption", encoding="utf-8")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    assert "imgs changed after the job validated it (i0230.png is not what was read then)" in one_line(stderr)
    assert not list(out.glob(".*.tmp"))
    assert main(cmd[3:]) == 0
    assert embed("--verify", out) == 0
    assert len(read_rows(out)["index"]) == 240


# ---- the folder's own names: a user's files, another job's files, a trainer's files ------------------------

@pytest.mark.parametrize("name", ["empty.safetensors", "shard-00000.safetensors", "scan-lengths.npy"])
def test_a_users_file_at_one_of_the_jobs_names_is_never_replaced(tmp_path, models, capsys, name):
    caps = write_txt(tmp_path / "caps.txt", ["a red fox", "a blue cat", "a green dog"])
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"the user's own file")
    code = embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 2)
    assert (out / name).is_file(), f"the user's {name} was removed"
    assert (out / name).read_bytes() == b"the user's own file"
    assert code == 2 and name in one_line(capsys.readouterr().err)


def test_a_folder_of_another_jobs_shards_is_not_taken_over(tmp_path, models, capsys):
    caps = write_txt(tmp_path / "caps.txt", ["a red fox", "a blue cat", "a green dog"])
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--weighting", "comfy") == 0
    (out / "manifest.json").unlink()
    theirs = (out / "shard-00000.safetensors").read_bytes()
    code = embed("--model", models["sd1"], "--captions", caps, "--out", out)
    assert (out / "shard-00000.safetensors").read_bytes() == theirs
    assert code == 2 and "shard-00000.safetensors" in one_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def wan(tmp_path_factory) -> Path:
    from test_embed_families import build

    return build(tmp_path_factory.mktemp("wan"), "wan")


def _trainer_file(tmp_path: Path, models: dict[str, Path], fmt: str) -> Path:
    """Where --format FMT puts image i0000's file ("imgs/…" beside the images, "out/…" in --out), its name
    learned from a run on a scratch copy of the same captions where it depends on them."""
    if fmt in ("kohya", "musubi"):
        return Path({"kohya": "imgs/i0000_te_outputs.npz", "musubi": "out/i0000_wan_te.safetensors"}[fmt])
    scratch = image_folder(tmp_path / "scratch", ["caption 0", "caption 1"])
    assert embed("--model", models["sdxl"], "--captions", scratch, "--out", tmp_path / "scratch-out", "--format",
                 fmt) == 0
    if fmt == "ai-toolkit":
        return Path("imgs/_t_e_cache") / sorted(p.name for p in (scratch / "_t_e_cache").iterdir())[0]
    return Path("out") / sorted(p.name for p in (tmp_path / "scratch-out").glob("*.pt"))[0]


@pytest.mark.parametrize("fmt", ["kohya", "simpletuner", "ai-toolkit", "musubi"])
def test_a_trainer_folder_with_foreign_files_of_the_trainers_names_loses_none(tmp_path, models, wan, capsys, fmt):
    target = tmp_path / _trainer_file(tmp_path, models, fmt)
    image_folder(tmp_path / "imgs", ["caption 0", "caption 1"])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"the trainer's own cache, made from another model")
    capsys.readouterr()
    model = ["--model", wan, "--preset", "diffusers"] if fmt == "musubi" else ["--model", models["sdxl"]]
    code = embed(*model, "--captions", tmp_path / "imgs", "--out", tmp_path / "out", "--format", fmt)
    assert target.read_bytes() == b"the trainer's own cache, made from another model"
    assert code == 2 and target.name in one_line(capsys.readouterr().err)


def test_an_image_whose_name_is_not_utf8_is_that_images_error_not_the_jobs(tmp_path, models, capsys):
    images = image_folder(tmp_path / "imgs", ["a red fox", "a blue cat"])
    (images / os.fsdecode(b"\xff.png")).write_bytes(b"not an image")
    (images / os.fsdecode(b"\xff.txt")).write_text("a green dog", encoding="utf-8")
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", images, "--out", out, "--on-error", "skip") == 0
    assert embed("--verify", out) == 0 and len(read_rows(out)["index"]) == 2
    errors = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["errors"]
    assert len(errors) == 1 and "not UTF-8" in errors[0]["error"]
    capsys.readouterr()
    assert embed("--model", models["sd1"], "--captions", images, "--out", tmp_path / "out2") == 2  # no skip: listed
    err = capsys.readouterr().err
    assert "\\xff.png" in err and "not UTF-8" in err and not (tmp_path / "out2" / "manifest.json").exists()


@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_a_broken_parquet_file_is_one_line_naming_it(tmp_path, models, capsys, damage):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"caption": [f"caption {i}" for i in range(100)]}), good)
    path = tmp_path / "caps.parquet"
    raw = good.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "cut" else b"PAR1" + bytes(100) + b"PAR1")
    assert embed("--model", models["sd1"], "--captions", path, "--out", tmp_path / "out") == 2  # garbage: raises
    assert "caps.parquet" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_manifest_that_is_a_fifo_is_one_line_not_a_hang(tmp_path, models):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "manifest.json")
    caps = write_txt(tmp_path / "caps.txt", ["a red fox"])
    for args in (["--verify", str(out)], ["--model", str(models["sd1"]), "--captions", str(caps), "--out", str(out)]):
        run = subprocess.run([sys.executable, "-m", "sdclip", "embed", *args], env=env(), capture_output=True,
                             text=True, timeout=10)  # TimeoutExpired: the hang
        assert run.returncode == 2 and "manifest.json" in one_line(run.stderr)


# ---- two jobs on one folder ------------------------------------------------------------------------------


def _job_running(tmp_path: Path, model, until: str):  # noqa: ANN001, ANN202
    """An `sdclip embed` subprocess on 300 captions in shards of 10, returned once it has written `until`:
    (the process, its arguments, its --out)."""
    caps = write_txt(tmp_path / "caps.txt", [f"caption {i}, a red fox number {i}" for i in range(300)])
    out = tmp_path / "out"
    args = ["--model", str(model), "--captions", str(caps), "--out", str(out), "--shard-size", "10",
            "--batch-size", "4"]
    proc = subprocess.Popen([sys.executable, "-m", "sdclip", "embed", *args], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / until).exists():
        assert proc.poll() is None and time.monotonic() < deadline, f"the job ended before it wrote {until}"
        time.sleep(0.01)
    return proc, args, out

def test_a_second_job_on_a_folder_being_written_is_one_line_and_the_first_finishes(tmp_path, models, capsys):
    first, args, out = _job_running(tmp_path, models["sd1"], "shard-00000.safetensors")
    assert embed(*args) == 2
    assert one_line(capsys.readouterr().err) == f"sdclip: {out}: another `sdclip embed` is writing this folder\n"
    _, stderr = first.communicate(timeout=180)
    assert first.returncode == 0, stderr
    assert embed("--verify", out) == 0 and read_rows(out)["index"].tolist() == list(range(300))


# ---- a full disk under trainer files -------------------------------------------------------------------------

def _full_disk_kohya(tmp_path: Path, models: dict[str, Path]) -> tuple[subprocess.CompletedProcess, list[str], Path]:
    images = image_folder(tmp_path / "imgs", [f"caption {i}" for i in range(8)])
    cmd = [sys.executable, "-m", "sdclip", "embed", "--model", str(models["sdxl"]), "--captions", str(images), "--out",
           str(tmp_path / "out"), "--format", "kohya", "--shard-size", "4"]
    run = subprocess.run(cmd, env=env(), capture_output=True, text=True, preexec_fn=file_size_limit(50_000),
                         timeout=120)  # an SDXL npz of the tiny model is ~100 kB: the first one fails
    return run, cmd, images


def test_a_full_disk_under_trainer_files_is_one_line_and_resumes(tmp_path, models):
    run, cmd, images = _full_disk_kohya(tmp_path, models)
    assert run.returncode == 2 and one_line(run.stderr) and "File too large" in run.stderr
    assert not list(tmp_path.rglob(".*.tmp")) and not list(images.glob("*.npz"))
    assert main(cmd[3:]) == 0
    assert len(list(images.glob("*_te_outputs.npz"))) == 8 and embed("--verify", tmp_path / "out") == 0


def test_a_full_disk_under_trainer_files_names_the_file_that_failed(tmp_path, models):
    run, _, _ = _full_disk_kohya(tmp_path, models)
    assert "_te_outputs.npz" in run.stderr and "shard-00000.safetensors" not in run.stderr, run.stderr


# ---- caption bytes -----------------------------------------------------------------------------------------

def test_crlf_empty_and_long_captions(tmp_path, models, capsys):
    """CRLF lines are the LF lines' captions; an empty file is a finished job of no rows; captions longer than the
    slots are counted and named in the summary (old code: a count alone, the indices only in the manifest)."""
    lf = write_txt(tmp_path / "lf.txt", ["a red fox", "", "a blue cat"])
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"a red fox\r\n\r\na blue cat\r\n")
    assert embed("--model", models["sd1"], "--captions", lf, "--out", tmp_path / "lf") == 0
    assert embed("--model", models["sd1"], "--captions", crlf, "--out", tmp_path / "crlf") == 0
    assert torch.equal(read_rows(tmp_path / "lf")["prompt_embeds"], read_rows(tmp_path / "crlf")["prompt_embeds"])
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert embed("--model", models["sd1"], "--captions", empty, "--out", tmp_path / "empty") == 0
    assert embed("--verify", tmp_path / "empty") == 0
    long = ", ".join(f"a fox number {i}" for i in range(40))  # ≈ 160 tokens: past one row of 77 slots
    caps = write_txt(tmp_path / "long.txt", ["a red fox", long, "a cat", long + " again"])
    capsys.readouterr()
    assert embed("--model", models["sd1"], "--captions", caps, "--out", tmp_path / "long") == 0
    said = capsys.readouterr()
    assert "; 2 truncated (input index 1, 3), 0 error(s) skipped" in said.out
    assert json.loads((tmp_path / "long" / "manifest.json").read_text())["truncated"] == {"count": 2, "indices": [1, 3]}


@pytest.mark.slow
def test_a_one_megabyte_caption_is_one_line_and_nul_bytes_are_text(tmp_path, models, capsys):
    huge = "a fox, " * 150_000  # 1.05 MB on one line
    caps = write_txt(tmp_path / "caps.txt", ["a red fox", huge, "a\x00cat"])
    assert embed("--model", models["sd1"], "--captions", caps, "--out", tmp_path / "out") == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("sdclip: 1 invalid caption(s)") and lines[1].startswith("  line 2: this prompt needs "
                                                                                          "more than row_limit=64")
    assert not (tmp_path / "out").exists()
    assert embed("--model", models["sd1"], "--captions", caps, "--out", tmp_path / "out", "--on-error", "skip") == 0
    assert read_rows(tmp_path / "out")["index"].tolist() == [0, 2] and embed("--verify", tmp_path / "out") == 0


# ---- kill -9 at random moments, every format ------------------------------------------------------------

KILL_CASES = {  # name → (model, captions kind, extra flags)
    "sdxl-kohya": ("sdxl", "images", ["--format", "kohya"]),
    "sdxl-simpletuner": ("sdxl", "images", ["--format", "simpletuner"]),
    "sdxl-ai-toolkit": ("sdxl", "images", ["--format", "ai-toolkit"]),
    "sd1-caption-lines-no-dedupe": ("sd1", "images", ["--caption-lines", "--no-dedupe", "--store-dtype", "bf16"]),
}


def _trainer_files(images: Path, out: Path) -> dict[str, bytes]:
    found = {f"imgs/{k}": v for k, v in listing(images).items() if not k.endswith((".png", ".txt"))}
    return found | {f"out/{k}": v for k, v in listing(out).items() if k.endswith((".pt",))}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(KILL_CASES))
def test_kill_9_at_random_moments_then_resume_equals_an_undisturbed_run(tmp_path, models, case):
    """SIGKILL after a random delay (seeded; twice per case), then the same command: every caption once, the
    same files (trainer formats: byte for byte) or rows as an undisturbed run, --verify passes, nothing left."""
    model, _, extra = KILL_CASES[case]
    captions = [f"caption {i % 30}, a {('red', 'blue', 'green')[i % 3]} fox\nline two of {i}" for i in range(80)]
    rng = random.Random(case)
    ref_images = image_folder(tmp_path / "ref-imgs", captions)
    assert embed("--model", models[model], "--captions", ref_images, "--out", tmp_path / "ref", "--shard-size", 8,
                 "--batch-size", 4, *extra) == 0
    started = time.monotonic()
    for attempt in range(2):
        images = image_folder(tmp_path / f"imgs{attempt}", captions)
        out = tmp_path / f"out{attempt}"
        cmd = [sys.executable, "-m", "sdclip", "embed", "--model", str(models[model]), "--captions", str(images),
               "--out", str(out), "--shard-size", "8", "--batch-size", "4", *extra]
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(2.0, 14.0)  # the start alone takes seconds
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert main(cmd[3:]) == 0, f"resume after a kill at {delay:.1f} s"
        assert embed("--verify", out) == 0
        # (a killed trainer-file writer's temporary beside the images is removed: tests/jobs/test_embed_owned_files.py)
        assert not list(out.glob(".*.tmp")) and not list(out.glob("scan-*")) and not (out / ".lock").exists()
        if "--format" in extra:
            assert _trainer_files(images, out) == _trainer_files(ref_images, tmp_path / "ref"), f"kill at {delay:.1f} s"
        else:
            a, b = read_rows(out), read_rows(tmp_path / "ref")
            assert all(torch.equal(a[k], b[k]) for k in b), f"kill at {delay:.1f} s"
    assert time.monotonic() - started < 600


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_trainer_writers_temporary_file_beside_the_images_is_removed_by_the_next_run(tmp_path, models):
    """The file a SIGKILL leaves (its writer's pid is gone), made directly: the kill -9 loop above met it when a
    kill landed inside an npz write. The same leftover in --out is removed (the control)."""
    images = image_folder(tmp_path / "imgs", ["caption 0", "caption 1"])
    out = tmp_path / "out"
    out.mkdir()
    pid = _dead_pid()
    in_out = out / f".shard-00000.safetensors.{pid}.abcd1234.tmp"
    beside = images / f".i0000_te_outputs.npz.{pid}.abcd1234.tmp"
    for leftover in (in_out, beside):
        leftover.write_bytes(b"half an npz")
    assert embed("--model", models["sdxl"], "--captions", images, "--out", out, "--format", "kohya") == 0
    assert not in_out.exists()
    assert not beside.exists()


# ---- Ctrl-C under a pty with trainer files --------------------------------------------------------------------

def test_ctrl_c_in_a_terminal_during_a_kohya_job_is_one_line_and_resumes(tmp_path, models):
    from cli.test_cli_terminal import Terminal

    images = image_folder(tmp_path / "imgs", [f"caption {i}, a red fox" for i in range(200)])
    out = tmp_path / "out"
    args = ["embed", "--model", str(models["sdxl"]), "--captions", str(images), "--out", str(out), "--format", "kohya",
            "--shard-size", "10", "--batch-size", "4"]
    term = Terminal(args)
    deadline = time.monotonic() + 120
    while not list(images.glob("*_te_outputs.npz")):
        term.read(0.02)
        assert term.proc.poll() is None and time.monotonic() < deadline, "ended before it could be interrupted"
    os.kill(term.proc.pid, signal.SIGINT)
    code, text = term.wait()
    lines = [line for line in text.splitlines() if line.strip() and "━" not in line]
    assert code == 130 and lines == ["sdclip: interrupted; finished shards are kept: re-run the same command to "
                                     "resume"], text
    assert not list(tmp_path.rglob(".*.tmp"))
    assert main(args) == 0 and embed("--verify", out) == 0
    assert len(list(images.glob("*_te_outputs.npz"))) == 200


def test_sigterm_ends_a_job_as_ctrl_c_does(tmp_path, models):
    """`kill PID` (docker stop, a scheduler's preemption). Old code: the process died silently (exit -15), its lock,
    scan arrays and any temporary file left for the next run. Now: one line, exit 130, the shards handed over
    listed, nothing left but results and the scan's arrays; the same command finishes every caption once."""
    proc, args, out = _job_running(tmp_path, models["sd1"], "shard-00001.safetensors")
    proc.terminate()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr == "sdclip: interrupted; finished shards are kept: re-run the same command to resume\n"
    assert not list(out.glob(".*")), "the lock or a temporary file was left"
    listed = json.loads((out / "manifest.json").read_text())["shards"]
    assert sorted(p.name for p in out.glob("shard-*.safetensors")) == sorted(r["file"] for r in listed)
    assert embed(*args) == 0 and embed("--verify", out) == 0
    assert read_rows(out)["index"].tolist() == list(range(300))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # in-process: the handler is put back


# ---- Ray: a killed job resumes -------------------------------------------------------------------------------

@pytest.mark.slow
def test_ray_job_killed_with_its_process_group_resumes_with_ray(tmp_path, models):
    pytest.importorskip("ray")
    caps = write_txt(tmp_path / "caps.txt", [f"caption {i}, a red fox" for i in range(120)])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sdclip", "embed", "--model", str(models["sd1"]), "--captions", str(caps),
           "--out", str(out), "--shard-size", "10", "--engine", "ray"]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / "shard-00002.safetensors").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr
    assert "shard(s) to do" in run.stderr and embed("--verify", out) == 0
    assert read_rows(out)["index"].tolist() == list(range(120))
