"""What an `sdclip embed` job keeps in memory does not grow with its captions: the Conditioner's row cache is
bounded to a few rows during a job (its 1,024-row default would hold gigabytes of T5 rows, never read again:
the job encodes each distinct caption once). Peak RSS itself is measured in bench/bench_embed.py --memory."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from sdclip.conventions.presets import Options
from sdclip.jobs.driver import Job
from sdclip.jobs.encode import CaptionEncoder
from sdclip.jobs.local import run_local
from sdclip.jobs.plan import JobSpec
from sdclip.jobs.work import JOB_ROW_CACHE
from tiny_models import tiny_family, write_layout


def test_a_job_keeps_a_bounded_row_cache_whatever_its_captions(tmp_path):
    model = write_layout("single.safetensors", tiny_family("sd1"), tmp_path / "sd1")
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(f"caption {i}, a fox in a forest\n" for i in range(3 * JOB_ROW_CACHE)))
    spec = JobSpec(model=str(model), captions=str(caps), out=str(tmp_path / "out"),
                   options=asdict(Options.preset("a1111")), shard_size=8, batch_size=8)
    job = Job(spec)
    try:
        encoder = CaptionEncoder(spec)
        job.prepare(encoder)
        run_local(job, encoder)
        assert job.finish()["written"] == 3 * JOB_ROW_CACHE
    finally:
        job.close()
    cache = encoder.cond.cache
    assert cache.max_rows == JOB_ROW_CACHE and len(cache._data) <= JOB_ROW_CACHE
    assert cache.stats.misses >= 3 * JOB_ROW_CACHE  # every caption's row was encoded, none served twice


def test_the_manifest_lists_a_bounded_number_of_truncated_captions(tmp_path, monkeypatch):
    """Every truncated caption is counted; only the first MAX_LISTED_TRUNCATED are listed (the list was one
    entry per truncated caption, in memory and in a manifest rewritten after every shard)."""
    import json

    from sdclip.cli.main import main
    from sdclip.jobs import plan

    monkeypatch.setattr(plan, "MAX_LISTED_TRUNCATED", 2)
    model = write_layout("single.safetensors", tiny_family("sd1"), tmp_path / "sd1")
    long = ", ".join(f"a fox number {k} in a forest" for k in range(20))
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(f"{long} {i}\n" if i % 2 else f"short {i}\n" for i in range(10)))
    out = tmp_path / "out"
    assert main(["embed", "--model", str(model), "--captions", str(caps), "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["truncated"] == {"count": 5, "indices": [1, 3], "more": 3}
