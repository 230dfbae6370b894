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
