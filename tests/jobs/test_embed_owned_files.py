"""Which files `sdclip embed` may replace: only its own (sdclip.jobs.formats.owned, sdclip.jobs.driver).

A trainer format journals each file where it writes it (`.sdclip-trainer-files.jsonl`) before writing it: a re-run after a
kill replaces what the killed job wrote, even unlisted by any sidecar; a file of the same name the journal
does not list is someone else's and is refused. Real jobs on the tests' tiny models, real files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdclip.cli.main import main
from sdclip.jobs.formats.owned import JOURNAL
from tiny_models import tiny_family, write_layout
from test_embed_campaign import image_folder, one_line


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory) -> Path:
    return write_layout("single.safetensors", tiny_family("sdxl"), tmp_path_factory.mktemp("sdxl"))


def kohya(model: Path, images: Path, out: Path, *extra: object) -> int:
    return main(["embed", "--model", str(model), "--captions", str(images), "--out", str(out), "--format", "kohya",
                 "--shard-size", "1", *map(str, extra)])


def _as_if_killed_before_listing(out: Path) -> None:
    """What a kill -9 leaves after the files were written but before any shard was listed: no manifest, no
    sidecar, the lock file still there (the journal is what remains of the job's own record)."""
    for p in [out / "manifest.json", *out.glob("shard-*.json")]:
        p.unlink()
    (out / ".lock").write_bytes(b"")


def test_files_the_journal_lists_are_replaced_on_resume_and_others_refused(tmp_path, sdxl, capsys):
    images = image_folder(tmp_path / "imgs", ["a red fox", "a blue cat"])
    out = tmp_path / "out"
    assert kohya(sdxl, images, out) == 0
    lines = [json.loads(line) for line in (images / JOURNAL).read_text().splitlines()]
    assert lines == ["i0000_te_outputs.npz", "i0001_te_outputs.npz"]
    done = {p.name: p.read_bytes() for p in images.glob("*.npz")}

    _as_if_killed_before_listing(out)
    assert kohya(sdxl, images, out) == 0  # its own files, known from the journal alone
    assert {p.name: p.read_bytes() for p in images.glob("*.npz")} == done
    assert main(["embed", "--verify", str(out)]) == 0

    _as_if_killed_before_listing(out)
    (images / JOURNAL).unlink()  # nothing says sdclip wrote them: a trainer's cache as far as sdclip can tell
    (images / "i0000_te_outputs.npz").write_bytes(b"sd-scripts' own cache")
    capsys.readouterr()
    assert kohya(sdxl, images, out) == 2
    assert "i0000_te_outputs.npz" in one_line(capsys.readouterr().err)
    assert (images / "i0000_te_outputs.npz").read_bytes() == b"sd-scripts' own cache"


def test_a_file_written_by_a_finished_shard_of_an_older_folder_is_known_from_its_sidecar(tmp_path, sdxl):
    """Folders written before the journal: what the recorded shards' sidecars list is the job's own (an edit
    re-encodes a shard whose file is still there)."""
    images = image_folder(tmp_path / "imgs", ["a red fox", "a blue cat"])
    out = tmp_path / "out"
    assert kohya(sdxl, images, out) == 0
    (images / JOURNAL).unlink()
    (images / "i0001.txt").write_text("a green dog", encoding="utf-8")
    assert kohya(sdxl, images, out) == 0
    assert main(["embed", "--verify", str(out)]) == 0


def test_a_second_out_on_the_same_images_replaces_what_sdclip_wrote_there(tmp_path, sdxl, capsys):
    """The journal is beside the images: a job with another --out knows sdclip's npz files there."""
    images = image_folder(tmp_path / "imgs", ["a red fox", "a blue cat"])
    assert kohya(sdxl, images, tmp_path / "a") == 0
    assert kohya(sdxl, images, tmp_path / "b", "--max-rows", 1) == 0
    assert main(["embed", "--verify", str(tmp_path / "b")]) == 0


def test_only_a_dead_writers_temporary_of_a_file_the_job_writes_is_removed(tmp_path, sdxl):
    images = image_folder(tmp_path / "imgs", ["a red fox", "a blue cat"])
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead, alive = child.pid, subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = images / f".i0001_te_outputs.npz.{dead}.k2j_x9q0.tmp"
        kept = {images / f".i0000_te_outputs.npz.{alive.pid}.abcd1234.tmp",  # its writer still runs
                images / f".notes.npz.{dead}.abcd1234.tmp",  # a file the job never writes
                images / f".i0000_te_outputs.npz.{dead}.abc.tmp",  # not mkstemp's name
                images / f"i0000_te_outputs.npz.{dead}.abcd1234.tmp"}  # not hidden: not atomic_path's
        for p in (gone, *kept):
            p.write_bytes(b"half a file")
        assert kohya(sdxl, images, tmp_path / "out") == 0
        assert not gone.exists() and all(p.read_bytes() == b"half a file" for p in kept)
    finally:
        alive.kill()
        alive.wait()
