"""`sdclip embed`'s leftovers from the reliability campaign (issue 21, "Bad input"): two jobs in threads of one
process, inputs that hold no caption, the Ray engine's write error, `--verify` beside a running job, a Parquet
file damaged past its first row group. Each case fails on the code before its fix; real files, real
subprocesses, the tests' tiny models."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from sdclip.jobs.formats import owned
from sdclip.jobs.formats.owned import JOURNAL
from tiny_models import tiny_family, write_layout
from embed_rows import read_rows
from test_embed_campaign import _job_running, embed, one_line


@pytest.fixture(scope="module")
def sd1(tmp_path_factory) -> Path:
    return write_layout("single.safetensors", tiny_family("sd1"), tmp_path_factory.mktemp("models") / "sd1")


# ---- ownership caches shared by two jobs in threads of one process ------------------------------------------

def _journal(root: Path) -> list[str]:
    return sorted(json.loads(line) for line in (root / JOURNAL).read_text().splitlines())


def _one_job(out: Path, root: Path, name: str, rounds: int, errors: list) -> None:
    """What one job's writer does to the caches: a new job forgets `out`, then claims its files, some of them
    already on disk (a re-run's)."""
    try:
        for r in range(rounds):
            owned.forget(out)
            for i in range(12):
                rel = f"{name}/{r:03d}-{i:02d}.npz"
                owned.claim(out, root, rel)
                if i % 3 == 0:  # written: the next claim of it must find it sdclip's
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    (root / rel).write_bytes(b"x")
                    owned.claim(out, root, rel)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def _jobs(tmp_path: Path, threaded: bool) -> dict[str, list[str]]:
    """Four jobs: two on one image folder (different --out), two on another; their journals afterwards."""
    roots = [tmp_path / "imgs-a", tmp_path / "imgs-b"]
    plan = [(tmp_path / f"out{j}", roots[j // 2], f"job{j}") for j in range(4)]
    errors: list = []
    if threaded:
        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can: the races show
        try:
            threads = [threading.Thread(target=_one_job, args=(*p, 40, errors)) for p in plan]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(old)
    else:
        for p in plan:
            _one_job(*p, 40, errors)
    assert not errors, errors[0]
    for out, root, name in plan:  # every file written is known to be sdclip's, by a fresh job too
        owned.forget(out)
        for path in sorted((root / name).iterdir()):
            owned.claim(out, root, path.relative_to(root).as_posix())
    return {root.name: _journal(root) for root in roots}


def test_two_jobs_in_threads_share_the_ownership_caches_safely(tmp_path):
    """A library caller runs jobs in threads of one process. Old code: the caches were module dicts changed without
    a lock (`forget` iterated one while another job's writer added to it: RuntimeError). Now: the journals equal
    a serial run's, every path once, none lost."""
    serial = _jobs(tmp_path / "serial", threaded=False)
    threaded = _jobs(tmp_path / "threaded", threaded=True)
    assert threaded == serial
    for lines in threaded.values():
        assert len(lines) == len(set(lines)) == 2 * 40 * 12


# ---- --verify beside a running job -----------------------------------------------------------------------

def test_verify_of_a_folder_a_job_is_writing_says_so_and_leaves_the_job_alone(tmp_path, sd1, capsys):
    """Old code: "… captions are in no shard …: the job is not finished; re-run it to resume" (a second job
    there would be refused). Now: one line saying a job is running there, exit 2; the job finishes undisturbed
    and the same --verify then passes."""
    job, _, out = _job_running(tmp_path, sd1, "shard-00000.safetensors")
    capsys.readouterr()
    assert embed("--verify", out) == 2
    assert one_line(capsys.readouterr().err) == (f"sdclip: {out}: an `sdclip embed` job is running in this folder: "
                                                  "--verify it once that job has ended\n")
    _, stderr = job.communicate(timeout=180)
    assert job.returncode == 0, stderr
    assert embed("--verify", out) == 0 and read_rows(out)["index"].tolist() == list(range(300))
    assert not (out / ".lock").exists()


# ---- a Parquet file damaged past its first row group ----------------------------------------------------------

def _damage_row_group(path: Path, group: int) -> bytes:
    """Overwrite the first bytes of row group `group`'s caption column (its page header) with 0xff; returns the
    file's bytes before."""
    import pyarrow.parquet as pq

    chunk = pq.ParquetFile(path).metadata.row_group(group).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    before = path.read_bytes()
    path.write_bytes(before[:start] + b"\xff" * 8 + before[start + 8:])
    return before


def test_a_parquet_row_group_past_the_first_that_cannot_be_read_is_one_line_naming_its_rows(tmp_path, sd1, capsys):
    """Three row groups of ten captions, the second damaged (the first reads). Old code: one line naming the
    file and "row group 2 of 3", not which captions. Now the rows too; nothing written on a first run; a
    finished folder keeps every shard (and --verify says the same line) until the file is whole again."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "caps.parquet"
    pq.write_table(pa.table({"caption": [f"caption {i}, a red fox" for i in range(30)]}), path, row_group_size=10)
    args = ["--model", sd1, "--captions", path, "--shard-size", "5"]
    assert embed(*args, "--out", tmp_path / "done") == 0
    kept = {p.name: p.read_bytes() for p in (tmp_path / "done").iterdir()}
    whole = _damage_row_group(path, 1)
    assert pq.ParquetFile(path).read_row_group(0).num_rows == 10  # the first group still reads
    capsys.readouterr()
    assert embed(*args, "--out", tmp_path / "new") == 2
    said = one_line(capsys.readouterr().err)  # pyarrow's reason in the brackets, printable
    assert said.startswith(f"sdclip: {path}: row group 2 of 3 (rows 11–20) is not readable Parquet (")
    assert said.endswith("); the rows before it read\n") and said[:-1].isprintable()
    assert not (tmp_path / "new").exists()
    for again in (args + ["--out", tmp_path / "done"], ["--verify", tmp_path / "done"]):
        assert embed(*again) == 2
        assert one_line(capsys.readouterr().err) == said
    assert {p.name: p.read_bytes() for p in (tmp_path / "done").iterdir()} == kept
    path.write_bytes(whole)
    assert embed(*args, "--out", tmp_path / "done") == 0 and embed("--verify", tmp_path / "done") == 0
    assert read_rows(tmp_path / "done")["index"].tolist() == list(range(30))
