"""What an `sdclip embed` job keeps in memory does not grow with its captions: the Conditioner's row cache is
bounded to a few rows during a job (its 1,024-row default would hold gigabytes of T5 rows, never read again:
the job encodes each distinct caption once). Peak RSS itself is measured in bench/bench_embed.py --memory."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from embed_rows import read_rows, write_txt
from sdclip.conventions.presets import Options
from sdclip.jobs.driver import Job
from sdclip.jobs.encode import CaptionEncoder
from sdclip.jobs import local
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


# ---- Wan (masked T5): the shapes a job encodes, and the empty row, do not grow with its captions ----------
WORDS = ("fox", "castle", "misty", "river", "golden", "hour", "watercolor", "old", "boat", "forest", "night")


def wan_captions(n: int) -> list[str]:
    """Captions of 1 … n words (every real length a pass could take)."""
    return [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(i + 1)) for i in range(n)]


@pytest.fixture(scope="module")
def wan(tmp_path_factory) -> tuple:
    import tiny_t5_families as tf

    pipe = tf.pipeline("wan", 1)
    return pipe, tf.save_folder(pipe, tmp_path_factory.mktemp("wan") / "wan")


def record_t5_passes(monkeypatch) -> list[torch.Tensor]:  # noqa: ANN001
    """Every T5 forward's input ids, as the runner hands them over."""
    from sdclip.encoder.t5 import T5Encoder

    seen: list[torch.Tensor] = []
    real = T5Encoder.forward

    def forward(self, ids, *args, **kwargs):  # noqa: ANN001, ANN202
        seen.append(ids.clone())
        return real(self, ids, *args, **kwargs)

    monkeypatch.setattr(T5Encoder, "forward", forward)
    return seen


def test_a_wan_job_encodes_a_few_lengths_whatever_its_captions(tmp_path, wan, monkeypatch):
    """Each pass ran at its rows' longest real length, so a job of varied captions compiled a oneDNN kernel
    per length and its memory grew with its captions (+24% peak RSS, 1k → 4k captions); now the lengths
    are rounded up to a fixed set (multiples of 8 up to 64, of 16 up to 128), and the rows are still diffusers' own."""
    from sdclip.cli.main import main

    pipe, folder = wan
    caps = wan_captions(40)
    seen = record_t5_passes(monkeypatch)
    out = tmp_path / "out"
    assert main(["embed", "--model", str(folder), "--captions", str(write_txt(tmp_path / "caps.txt", caps)),
                 "--out", str(out), "--preset", "diffusers", "--batch-size", "4", "--shard-size", "8",
                 "--varlen"]) == 0
    real = {n for ids in seen for n in (ids != 0).sum(1).tolist()}  # each row's real length (umT5 pads with 0)
    lengths = {ids.shape[1] for ids in seen}
    assert len(real) >= 30 and max(real) <= 128  # the captions reach many real lengths …
    assert lengths <= {*range(8, 65, 8), *range(80, 129, 16)}  # … the passes a few
    got = read_rows(out)["prompt_embeds"]
    ref, _ = pipe.encode_prompt(caps, None, do_classifier_free_guidance=False, device="cpu",
                                max_sequence_length=512)
    torch.testing.assert_close(got, ref, atol=5e-5, rtol=1e-5)


def test_a_job_encodes_the_empty_row_once(tmp_path, wan, monkeypatch):
    """Every batch's conditioning pads with the empty prompt's row: the job's small row cache evicted it
    among each batch's new rows, so it was encoded again batch after batch (5 extra passes in 8 Wan
    batches); a row served again now outlives rows never served."""
    from sdclip.cli.main import main
    from sdclip.jobs import work

    monkeypatch.setattr(work, "JOB_ROW_CACHE", 4)  # fewer than a batch's rows, as 16 is for batches of 32
    _, folder = wan
    seen = record_t5_passes(monkeypatch)
    caps = [f"caption {i}, a {WORDS[i % len(WORDS)]} in the {WORDS[(3 * i) % len(WORDS)]}" for i in range(32)]
    assert main(["embed", "--model", str(folder), "--captions", str(write_txt(tmp_path / "caps.txt", caps)),
                 "--out", str(tmp_path / "out"), "--preset", "diffusers", "--batch-size", "8",
                 "--shard-size", "8"]) == 0
    empty = sum(int(((ids != 0).sum(1) == 1).sum()) for ids in seen)  # `</s>` alone: the empty prompt
    assert empty == 1
    assert sum(ids.shape[0] for ids in seen) == len(caps) + 1  # every caption once, the empty row once


def test_a_varlen_job_hands_the_writer_packed_rows(tmp_path, wan, monkeypatch):
    """Up to DEPTH + 1 shards wait for or sit in the writer while the next one encodes: with `--varlen` they
    wait packed (the rows' real positions), not as [n, 512, D] padded rows that the writer packed only
    then (a 1-shard job held one padded shard, a longer job three: its peak grew with the job)."""
    from sdclip.cli.main import main

    handed: list[dict] = []
    real_put = local.ShardWriter.put
    monkeypatch.setattr(local.ShardWriter, "put", lambda self, shard, t: (handed.append(t), real_put(self, shard, t))[1])
    _, folder = wan
    caps = wan_captions(12)
    out = tmp_path / "out"
    assert main(["embed", "--model", str(folder), "--captions", str(write_txt(tmp_path / "caps.txt", caps)),
                 "--out", str(out), "--preset", "diffusers", "--batch-size", "4", "--shard-size", "4",
                 "--varlen"]) == 0
    assert len(handed) == 3
    rows = read_rows(out)["prompt_embeds"]  # [12, 512, D], as sdclip.dataset rebuilds them
    padded = rows[:4].numel() * rows.element_size()
    for t in handed:
        assert "prompt_embeds" not in t and sum(v.numel() * v.element_size() for v in t.values()) < padded / 4


def test_rows_of_mixed_lengths_run_in_few_passes(wan, monkeypatch):
    """Rows are cut into passes of the runner's batch size after sorting by real length, so a pass holds
    rows of about one length: captions given in any order run in few passes of few shapes (given in input
    order, each pass of 8 split by length into passes of 1 … 8 rows: every new shape a new oneDNN kernel)."""
    import random

    from sdclip.conditioner import Conditioner

    _, folder = wan
    caps = wan_captions(32)
    random.Random(0).shuffle(caps)
    cond = Conditioner.from_pretrained(folder, "diffusers")
    seen = record_t5_passes(monkeypatch)
    with torch.no_grad():
        cond.encode(caps)
    shapes = [tuple(ids.shape) for ids in seen]
    assert len(shapes) <= 10  # 33 rows, 8 a pass: 5 passes, and where one pass's rows differ too much in length, 2
    assert sum(r for r, _ in shapes) == len(caps) + 1  # every caption once, the empty row once


def test_the_writer_hands_freed_memory_back_after_every_shard(tmp_path, monkeypatch):
    """The writer thread's malloc arena kept what each shard's write freed, and the engine's loop held each
    shard until the next had encoded (peak RSS grew with a job's shards; bench/bench_embed.py --memory
    measures it): after each shard, its tensors are gone and the arenas trimmed (glibc's malloc_trim)."""
    import gc
    import weakref

    if local._malloc_trim() is None:
        pytest.skip("no malloc_trim in this C library")
    trims: list[bool] = []  # per trim: whether the shard handed over was already freed
    handed: list[weakref.ref] = []
    real_put = local.ShardWriter.put
    monkeypatch.setattr(local.ShardWriter, "put",
                        lambda self, shard, t: (handed.append(weakref.ref(t["token_counts"])), real_put(self, shard, t))[1])
    monkeypatch.setattr(local, "_malloc_trim", lambda: lambda pad: trims.append(handed[len(trims)]() is None) or 1)
    model = write_layout("single.safetensors", tiny_family("sd1"), tmp_path / "sd1")
    caps = write_txt(tmp_path / "caps.txt", [f"caption {i}, a fox" for i in range(10)])
    from sdclip.cli.main import main

    gc.disable()  # only reference counting frees the shard
    try:
        assert main(["embed", "--model", str(model), "--captions", str(caps), "--out", str(tmp_path / "out"),
                     "--shard-size", "4"]) == 0
    finally:
        gc.enable()
    assert trims == [True, True, True]  # the shard was held by the engine's loop until the next one encoded
