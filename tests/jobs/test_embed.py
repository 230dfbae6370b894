"""`sdclip embed` end to end on tiny random models written as real files (sdclip.cli.embed, sdclip.jobs).

Oracle: the Conditioner itself, one caption at a time, cut or padded with the empty prompt's encoding to
N = 77·K slots. Failure paths: one-line `sdclip: …` errors with exit 2, nothing half-written, resumable.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sdclip.dataset
from sdclip.assemble.combine import pad_with_empty
from sdclip.cli.main import main
from sdclip.conditioner import Conditioner
from tiny_models import tiny_family, write_layout
from embed_rows import read_rows, write_txt

LONG = ", ".join(f"a {c} fox with {c} eyes under a {c} sky" for c in
                 ("red", "blue", "green", "golden", "silver", "purple", "orange", "white", "black", "pink"))
CAPTIONS = ["a red fox", "", "a (blue:1.3) cat in a [misty] forest", "a red fox", LONG, "golden hour, highly detailed",
            "a red fox", "two (dogs:0.8) playing"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "sd1": write_layout("single.safetensors", tiny_family("sd1"), root / "sd1"),
        "sdxl": write_layout("single.safetensors", tiny_family("sdxl"), root / "sdxl"),
    }


@pytest.fixture(scope="module")
def reference(models):
    cache: dict = {}

    def get(model: str, captions: list[str], rows: int = 1) -> dict[str, torch.Tensor]:
        if model not in cache:
            cache[model] = Conditioner.from_pretrained(models[model], "a1111")
        cond = cache[model]
        n = rows * cond.family.length
        embeds, pooled = [], []
        for c in captions:
            pos = cond(c).positive
            e = pos.embeds[0]
            embeds.append(e[:n] if e.shape[0] >= n else pad_with_empty(e, n, cond.empty_sequence()))
            if pos.pooled is not None:
                pooled.append(pos.pooled[0])
        out = {"prompt_embeds": torch.stack(embeds)}
        if pooled:
            out["pooled_prompt_embeds"] = torch.stack(pooled)
        return out

    return get


def embed(*args: object) -> int:
    return main(["embed", *map(str, args)])


def read_all(out: Path) -> dict[str, torch.Tensor]:
    """Every shard of a folder, concatenated in index order."""
    return read_rows(out)


def test_txt_job_matches_the_conditioner_and_reads_back(tmp_path, models, reference, capsys):
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    assert embed("--model", models["sdxl"], "--captions", caps, "--out", out, "--shard-size", 3, "--batch-size", 2) == 0
    assert "8 of 8 caption(s) in 3 shard(s)" in capsys.readouterr().out
    got = read_all(out)
    ref = reference("sdxl", CAPTIONS)
    assert got["index"].tolist() == list(range(8))
    assert got["prompt_embeds"].shape == (8, 77, ref["prompt_embeds"].shape[-1])
    torch.testing.assert_close(got["prompt_embeds"], ref["prompt_embeds"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["pooled_prompt_embeds"], ref["pooled_prompt_embeds"], atol=1e-5, rtol=1e-5)
    # identical captions are encoded once: bit-identical rows
    assert torch.equal(got["prompt_embeds"][0], got["prompt_embeds"][3])
    assert torch.equal(got["prompt_embeds"][0], got["prompt_embeds"][6])
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["rows"] == 8 and m["truncated"] == {"count": 1, "indices": [4]}
    assert m["config"]["options"]["weighting"] == "a1111" and m["info"]["input"]["size"] == caps.stat().st_size
    assert [s["rows"] for s in m["shards"]] == [3, 3, 2] and all(len(s["sha256"]) == 64 for s in m["shards"])
    assert embed("--verify", out) == 0
    ds = sdclip.dataset.open(out)
    assert len(ds) == 8 and ds.complete
    row = ds[4]
    assert row["index"] == 4 and torch.equal(row["prompt_embeds"], got["prompt_embeds"][4])
    assert torch.equal(ds.get(7)["pooled_prompt_embeds"], got["pooled_prompt_embeds"][7])
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    batches = list(loader)
    assert torch.equal(torch.cat([b["prompt_embeds"] for b in batches]), got["prompt_embeds"])
    assert [r["index"] for r in ds] == list(range(8))


def test_blank_line_is_the_empty_prompt_and_rows_give_longer_n(tmp_path, models, reference):
    caps = write_txt(tmp_path / "caps.txt", ["", LONG])
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--max-rows", 2) == 0
    got = read_all(out)
    ref = reference("sd1", ["", LONG], rows=2)
    assert got["prompt_embeds"].shape[1] == 154 and "pooled_prompt_embeds" not in got
    torch.testing.assert_close(got["prompt_embeds"], ref["prompt_embeds"], atol=1e-5, rtol=1e-5)
    assert json.loads((out / "manifest.json").read_text())["truncated"]["count"] == 0


def test_same_tensors_whatever_the_shard_and_batch_size(tmp_path, models):
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS * 2)
    results = []
    for shard, batch in ((16, 64), (3, 1), (5, 2)):
        out = tmp_path / f"out-{shard}-{batch}"
        assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", shard,
                     "--batch-size", batch) == 0
        results.append(read_all(out))
    for r in results[1:]:
        assert torch.equal(r["index"], results[0]["index"])
        torch.testing.assert_close(r["prompt_embeds"], results[0]["prompt_embeds"], atol=1e-5, rtol=1e-5)


def test_bad_lines_are_listed_with_line_numbers_before_any_encoding(tmp_path, models, capsys):
    caps = tmp_path / "caps.txt"
    caps.write_bytes(b"a red fox\nbad \xff\xfe bytes\na cat AND a dog\nfine\n")
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 3 and lines[0].startswith("sdclip: 2 invalid caption(s)")  # one line per caption
    assert lines[1].startswith("  line 2: invalid UTF-8") and lines[2].startswith("  line 3: AUTOMATIC1111 AND")
    assert not out.exists()  # a failed start leaves no folder it made
    # --on-error skip records them and goes on
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--on-error", "skip") == 0
    m = json.loads((out / "manifest.json").read_text())
    assert [(e["index"], e["where"]) for e in m["errors"]] == [(1, "line 2"), (2, "line 3")]
    assert read_all(out)["index"].tolist() == [0, 3]
    assert embed("--verify", out) == 0
    assert len(sdclip.dataset.open(out)) == 2


def test_output_location_checked_before_the_model_loads(tmp_path, capsys):
    caps = write_txt(tmp_path / "caps.txt", ["a"])
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert embed("--model", tmp_path / "no-such-model", "--captions", caps, "--out", a_file) == 2
    err = capsys.readouterr().err
    assert err == f"sdclip: --out {a_file} is a file, not a folder\n"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert embed("--model", tmp_path / "no-such-model", "--captions", caps, "--out", locked / "x") == 2
        assert "cannot write to --out" in capsys.readouterr().err


def test_different_configuration_is_refused_by_name_and_overwrite_restarts(tmp_path, models, capsys):
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out) == 0
    first = read_all(out)
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--weighting", "comfy") == 2
    err = capsys.readouterr().err
    assert "options.weighting" in err and '"a1111" in the folder, "comfy" now' in err and "--overwrite" in err
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 2
    assert "shard_size" in capsys.readouterr().err
    assert torch.equal(read_all(out)["prompt_embeds"], first["prompt_embeds"])  # untouched
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--weighting", "comfy", "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["options"]["weighting"] == "comfy"
    # a changed input is the same job: its changed shards are re-encoded (tests/jobs/test_embed_edits.py)
    write_txt(caps, CAPTIONS[:-1])
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--weighting", "comfy") == 0
    assert read_all(out)["index"].tolist() == list(range(len(CAPTIONS) - 1))


def test_disk_full_keeps_completed_shards_and_resumes(tmp_path, models, monkeypatch, capsys):
    """ENOSPC injected at the shard writer's own write call (os.pwrite) on the second shard: one line, the
    first shard kept, no temporary file; with space back, the same command finishes every caption once."""
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    ref_out = tmp_path / "ref"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", ref_out, "--shard-size", 3) == 0
    real = os.pwrite

    def full_disk(fd, data, offset):  # noqa: ANN001, ANN202
        if ".shard-00001.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):  # shard 0 fits, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk)
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 3) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shard-00001.safetensors: disk full" in err and "1 completed shard(s)" in err
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("shard", "."))) == ["shard-00000.safetensors"]
    monkeypatch.setattr(os, "pwrite", real)
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 3) == 0
    assert "2 of 3 shard(s) to do (1 kept)" in capsys.readouterr().err
    assert torch.equal(read_all(out)["prompt_embeds"], read_all(ref_out)["prompt_embeds"])
    assert embed("--verify", out) == 0


def test_verify_catches_a_changed_shard_and_a_missing_index(tmp_path, models, capsys):
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 0
    shard = out / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    assert embed("--verify", out) == 2
    assert "shard-00001.safetensors: sha256 differs" in capsys.readouterr().err
    shard.unlink()
    assert embed("--verify", out) == 2
    assert "missing" in capsys.readouterr().err
    # a re-run notices the missing shard and redoes just that one
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 0
    assert "1 of 2 shard(s) to do" in capsys.readouterr().err
    assert embed("--verify", out) == 0


def test_sigkill_mid_job_then_resume_equals_an_uninterrupted_run(tmp_path, models):
    captions = [f"caption {i}, a {('red', 'blue', 'green')[i % 3]} fox number {i}" for i in range(600)]
    caps = write_txt(tmp_path / "caps.txt", captions)
    args = ["--model", str(models["sd1"]), "--captions", str(caps), "--shard-size", "20", "--batch-size", "8"]
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sdclip", "embed", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "shard-00002.safetensors").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads((out / "manifest.json").read_text())["shards"]
    assert 0 < len(done) < 30
    assert embed(*args, "--out", out) == 0
    assert embed("--verify", out) == 0
    assert not list(out.glob(".*.tmp"))
    whole = tmp_path / "whole"
    assert embed(*args, "--out", whole) == 0
    a, b = read_all(out), read_all(whole)
    assert torch.equal(a["index"], b["index"]) and torch.equal(a["prompt_embeds"], b["prompt_embeds"])


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "parquet"])
def test_table_formats_and_column(tmp_path, models, reference, fmt):
    caps = ["a red fox", "", "a cat, with a comma\nand a newline", "\"quoted\" dog"]
    path = tmp_path / f"caps.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"id": i, "text": c}) + "\n" for i, c in enumerate(caps)))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": list(range(4)), "text": caps}), path, row_group_size=3)
    else:
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
            w.writerow(["id", "text"])
            w.writerows(enumerate(caps))
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", path, "--out", out, "--shard-size", 3) == 0
    torch.testing.assert_close(read_all(out)["prompt_embeds"], reference("sd1", caps)["prompt_embeds"],
                               atol=1e-5, rtol=1e-5)
    assert embed("--model", models["sd1"], "--captions", path, "--out", tmp_path / "o2", "--column", "nope") == 2


def test_readers_restart_from_a_saved_seek(tmp_path):
    from sdclip.jobs.readers import open_source

    path = tmp_path / "c.csv"
    path.write_text('caption\n"multi\nline",x\nb\n\nc\n', encoding="utf-8")
    src = open_source(path)
    recs = list(src.records())
    assert [r.text for r in recs] == ["multi\nline", "b", None, "c"] or [r.text for r in recs][:2] == ["multi\nline", "b"]
    for r in recs:
        again = list(src.read(r.seek, r.index, None))
        assert [x.text for x in again] == [x.text for x in recs[r.index:]]
    txt = tmp_path / "c.txt"
    txt.write_bytes(b"\xef\xbb\xbfone\r\n\r\nthree")
    assert [r.text for r in open_source(txt).records()] == ["one", "", "three"]


def test_image_folder_and_kohya_npz(tmp_path, models, reference, capsys):
    import numpy as np

    images = tmp_path / "imgs"
    (images / "sub").mkdir(parents=True)
    for rel, cap in (("b.png", "a red fox"), ("a.jpg", "a blue cat"), ("sub/c.webp", "")):
        (images / rel).write_bytes(b"not really an image")
        (images / rel).with_suffix(".txt").write_text(cap + "\n")
    (images / "nocap.png").write_bytes(b"x")
    out = tmp_path / "out"
    assert embed("--model", models["sdxl"], "--captions", images, "--out", out, "--format", "kohya",
                 "--on-error", "skip") == 0
    m = json.loads((out / "manifest.json").read_text())
    # sd-scripts trains an image without a caption file on the empty caption: so does the cache, with a warning
    assert m["errors"] == [] and m["warnings"]["count"] == 1
    assert m["warnings"]["first"][0]["where"] == "nocap.png" and "no caption file nocap.txt" in m["warnings"]["first"][0]["warning"]
    assert "sdclip: warning: nocap.png: no caption file nocap.txt" in capsys.readouterr().err
    ref = reference("sdxl", ["a blue cat", "a red fox", "", ""])
    for k, rel in enumerate(("a", "b", "nocap", "sub/c")):
        with np.load(images / f"{rel}_te_outputs.npz", allow_pickle=False) as z:
            assert sorted(z.files) == ["hidden_state1", "hidden_state2", "pool2"]
            assert z["hidden_state1"].shape == (77, 128) and z["hidden_state1"].dtype == np.float32
            both = np.concatenate([z["hidden_state1"], z["hidden_state2"]], axis=-1)
            np.testing.assert_allclose(both, ref["prompt_embeds"][k].numpy(), atol=1e-5)
            np.testing.assert_allclose(z["pool2"], ref["pooled_prompt_embeds"][k].numpy(), atol=1e-5)
    assert embed("--verify", out) == 0
    assert embed("--model", models["sd1"], "--captions", images, "--out", tmp_path / "o1", "--format", "kohya") == 2
    err = capsys.readouterr().err  # one line naming the formats that can hold SD1
    assert err.count("\n") == 1 and "not sd1" in err and "--format safetensors" in err
