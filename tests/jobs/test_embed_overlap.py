"""`sdclip embed`'s local engine writes shard k in a background thread while shard k+1 encodes (issue 21).

Oracles: the order of real calls (the write of shard 0 waits until shard 1's encoding has begun: a serial
engine never gets there), the number of shards encoded while the writer is held (the queue's bound), and for
failures the folder's listing, the manifest, one line on stderr, and the rows of an undisturbed run. The
mid-job disk failures are an injected ENOSPC at the shard writer's own `os.pwrite` and a real kernel
file-size limit (RLIMIT_FSIZE) in a subprocess.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdclip.cli.main import main
from sdclip.jobs import local, work
from tiny_models import tiny_family, write_layout
from embed_rows import file_size_limit, write_txt

ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = [f"caption {i}, a {('red', 'blue', 'green')[i % 3]} fox" for i in range(18)]


@pytest.fixture(scope="module")
def sd1(tmp_path_factory) -> Path:
    return write_layout("single.safetensors", tiny_family("sd1"), tmp_path_factory.mktemp("models") / "sd1")


def embed(*args: object) -> int:
    return main(["embed", *map(str, args)])


def read_all(out: Path) -> dict[str, torch.Tensor]:
    parts = [load_file(p) for p in sorted(out.glob("shard-*.safetensors"))]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def listed(out: Path) -> list[int]:
    return [s["shard"] for s in json.loads((out / "manifest.json").read_text())["shards"]]


def test_the_next_shard_encodes_while_the_previous_one_is_written(tmp_path, sd1, monkeypatch):
    """Shard 0's write holds until shard 1's encoding has begun (a serial engine would wait in vain); the
    rows equal a run with that wait removed."""
    encoding = {k: threading.Event() for k in range(3)}
    overlapped = []
    real_encode, real_write = work.ShardWork.encode, work.ShardWork.write

    def encode(self, shard):  # noqa: ANN001, ANN202
        encoding[shard.k].set()
        return real_encode(self, shard)

    def write(self, shard, tensors):  # noqa: ANN001, ANN202
        if shard.k + 1 in encoding:
            overlapped.append(encoding[shard.k + 1].wait(timeout=5))
        return real_write(self, shard, tensors)

    monkeypatch.setattr(work.ShardWork, "encode", encode)
    monkeypatch.setattr(work.ShardWork, "write", write)
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    assert embed("--model", sd1, "--captions", caps, "--out", out, "--shard-size", 6) == 0
    assert overlapped == [True, True]
    monkeypatch.undo()
    assert embed("--model", sd1, "--captions", caps, "--out", tmp_path / "ref", "--shard-size", 6) == 0
    a, b = read_all(out), read_all(tmp_path / "ref")
    assert a["index"].tolist() == list(range(18)) and torch.equal(a["prompt_embeds"], b["prompt_embeds"])
    assert listed(out) == [0, 1, 2] and embed("--verify", out) == 0


def test_a_slow_writer_holds_back_encoding_so_memory_stays_a_few_shards(tmp_path, sd1, monkeypatch):
    """While the writer is held on shard 0, at most DEPTH + 2 shards are encoded (written, queued, handed
    over): the engine never runs ahead of its disk."""
    encoded: list[int] = []
    most = []
    real_encode, real_write = work.ShardWork.encode, work.ShardWork.write

    def encode(self, shard):  # noqa: ANN001, ANN202
        encoded.append(shard.k)
        return real_encode(self, shard)

    def write(self, shard, tensors):  # noqa: ANN001, ANN202
        if shard.k == 0:  # held until DEPTH + 2 shards are encoded (or 3 s), then 1 s more to run ahead
            for _ in range(300):
                if len(encoded) >= local.DEPTH + 2:
                    break
                time.sleep(0.01)
            time.sleep(1)
            most.append(len(encoded))
        return real_write(self, shard, tensors)

    monkeypatch.setattr(work.ShardWork, "encode", encode)
    monkeypatch.setattr(work.ShardWork, "write", write)
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    assert embed("--model", sd1, "--captions", caps, "--out", out, "--shard-size", 2) == 0
    assert most == [local.DEPTH + 2] and encoded == list(range(9))
    assert read_all(out)["index"].tolist() == list(range(18))


def test_a_writer_failure_mid_job_is_one_line_lists_only_finished_shards_and_resumes(tmp_path, sd1, monkeypatch,
                                                                                     capsys):
    """ENOSPC at the writer's own write of shard 2 while shard 3 encodes: one line naming shard 2, shards 0
    and 1 on disk and in the manifest, nothing half-written, encoding stops at the next hand-over; the same
    command then finishes and equals an undisturbed run."""
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    assert embed("--model", sd1, "--captions", caps, "--out", tmp_path / "ref", "--shard-size", 3) == 0
    real_pwrite = os.pwrite
    real_encode = work.ShardWork.encode
    encoded: list[int] = []

    def full_disk(fd, data, offset):  # noqa: ANN001, ANN202
        if ".shard-00002.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    def encode(self, shard):  # noqa: ANN001, ANN202
        encoded.append(shard.k)
        return real_encode(self, shard)

    monkeypatch.setattr(os, "pwrite", full_disk)
    monkeypatch.setattr(work.ShardWork, "encode", encode)
    out = tmp_path / "out"
    capsys.readouterr()
    assert embed("--model", sd1, "--captions", caps, "--out", out, "--shard-size", 3) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write shard-00002.safetensors: disk full" in err, err
    assert "2 completed shard(s)" in err
    assert max(encoded) <= 2 + local.DEPTH + 1  # stopped at the next hand-over, not at the end of the job
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("shard", "."))) == [
        "shard-00000.safetensors", "shard-00001.safetensors"]
    m = json.loads((out / "manifest.json").read_text())
    assert [s["shard"] for s in m["shards"]] == [0, 1] and not m["complete"]
    monkeypatch.undo()
    assert embed("--model", sd1, "--captions", caps, "--out", out, "--shard-size", 3) == 0
    assert "4 of 6 shard(s) to do (2 kept)" in capsys.readouterr().err
    assert torch.equal(read_all(out)["prompt_embeds"], read_all(tmp_path / "ref")["prompt_embeds"])
    assert embed("--verify", out) == 0


def test_a_real_write_refused_mid_job_by_the_kernel_is_one_line_and_resumes(tmp_path, sd1):
    """Shards 0 and 1 hold one valid caption each (the rest are skipped), shard 2 four: under a file-size limit
    between their sizes the kernel refuses shard 2's bytes in the writer thread. One line, exit 2, the small
    shards kept and listed, no temporary file; without the limit the same command finishes."""
    captions = ["a AND b"] * 3 + ["ok 0"] + ["c AND d"] * 3 + ["ok 1"] + [f"fine {i}" for i in range(4)]
    caps = write_txt(tmp_path / "caps.txt", captions)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sdclip", "embed", "--model", str(sd1), "--captions", str(caps), "--out", str(out),
           "--shard-size", "4", "--on-error", "skip"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=file_size_limit(100_000),
                         timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "cannot write shard-00002.safetensors" in run.stderr, run.stderr
    assert "2 completed shard(s)" in run.stderr and "Traceback" not in run.stderr
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert listed(out) == [0, 1] and not list(out.glob(".*.tmp"))
    assert main(cmd[3:]) == 0
    assert read_all(out)["index"].tolist() == [3, 7, 8, 9, 10, 11]
    assert embed("--verify", out) == 0
