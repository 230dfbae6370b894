"""The embed job's manifest does not grow with the job (issue 21): it is rewritten after every shard, so what
grows with the rows is written once beside it — a trainer format's per-row lists in the shard's sidecar
`shard-NNNNN.json`, `--on-error skip`'s errors in `errors.jsonl` — and named there by sha256.

Oracle: the bytes each manifest write really carries (counted at the atomic writer the manifest uses), the
sidecar and errors files read back, `--verify`, resume and edit detection on real job folders, and folders in
the earlier shape (lists inline in manifest.json) made by writing that shape back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import sdclip.jobs.manifest as manifest_module
from sdclip.cli.main import main
from tiny_models import tiny_family, write_layout
from embed_rows import write_txt


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("manifest-models")
    return {"sd1": write_layout("single.safetensors", tiny_family("sd1"), root / "sd1"),
            "sdxl": write_layout("single.safetensors", tiny_family("sdxl"), root / "sdxl")}


def embed(*args: object) -> int:
    return main(["embed", *map(str, args)])


@pytest.fixture
def manifest_writes(monkeypatch) -> list[int]:
    """The size of every manifest.json the job writes, in order (the manifest's own atomic writer)."""
    sizes: list[int] = []
    real = manifest_module.write_bytes_atomic

    def counting(final: Path, data: bytes) -> None:
        if final.name == "manifest.json":
            sizes.append(len(data))
        real(final, data)

    monkeypatch.setattr(manifest_module, "write_bytes_atomic", counting)
    return sizes


def captions_with_errors(bad: int, rows: int = 96) -> list[str]:
    """`rows` captions, `bad` of them invalid (two A1111 AND parts), spread evenly."""
    step = rows / bad
    wrong = {int(j * step) for j in range(bad)}
    return [f"cat {i} AND dog {i}" if i in wrong else f"a fox number {i}" for i in range(rows)]


def test_manifest_writes_stay_bounded_with_many_invalid_captions(tmp_path, models, manifest_writes, capsys):
    """8 shards of 12 captions, 9 vs 80 invalid: every manifest write is about the same size (the old manifest
    listed every error in each of its writes: +~5 KB here, and without bound as errors grow)."""
    sizes = {}
    for bad in (9, 80):
        caps = write_txt(tmp_path / f"caps{bad}.txt", captions_with_errors(bad))
        out = tmp_path / f"out{bad}"
        manifest_writes.clear()
        assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 12,
                     "--on-error", "skip") == 0
        assert f"{bad} error(s) skipped" in capsys.readouterr().out
        sizes[bad] = list(manifest_writes)
    assert len(sizes[9]) >= 8 and max(sizes[80]) < max(sizes[9]) + 1_200, (max(sizes[9]), max(sizes[80]))
    out = tmp_path / "out80"
    m = json.loads((out / "manifest.json").read_text())
    every = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    wrong = [i for i, c in enumerate(captions_with_errors(80)) if " AND " in c]
    assert [e["index"] for e in every] == wrong and [e["where"] for e in every[:2]] == ["line 1", "line 2"]
    assert m["error_count"] == 80 and m["errors"] == every[:10]
    assert m["errors_file"] == {"file": "errors.jsonl", "bytes": (out / "errors.jsonl").stat().st_size,
                                "sha256": hashlib.sha256((out / "errors.jsonl").read_bytes()).hexdigest()}
    assert not (tmp_path / "out9" / "errors.jsonl").exists()  # all 9 listed in the manifest itself
    assert embed("--verify", out) == 0
    # the errors file is untrusted like the manifest: other bytes are one line from --verify
    (out / "errors.jsonl").write_text((out / "errors.jsonl").read_text().replace('"index": 1,', '"index": 2,'))
    capsys.readouterr()
    assert embed("--verify", out) == 2
    assert "errors.jsonl: sha256 differs from the manifest" in capsys.readouterr().err
    # --overwrite removes it (its sha256 restored: the job's own), a re-run with no errors leaves none
    (out / "errors.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in every))
    caps = write_txt(tmp_path / "caps80.txt", [f"a fox number {i}" for i in range(96)])
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 12,
                 "--on-error", "skip") == 0
    assert not (out / "errors.jsonl").exists() and json.loads((out / "manifest.json").read_text())["error_count"] == 0


def test_old_manifest_with_every_error_inline_still_verifies_and_resumes(tmp_path, models, capsys):
    caps = write_txt(tmp_path / "caps.txt", captions_with_errors(30, 48))
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 12,
                 "--on-error", "skip") == 0
    m = json.loads((out / "manifest.json").read_text())
    every = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    m["errors"] = every  # the earlier shape: every error listed, no count, no file
    del m["error_count"], m["errors_file"]
    (out / "errors.jsonl").unlink()
    (out / "manifest.json").write_text(json.dumps(m))
    assert embed("--verify", out) == 0
    capsys.readouterr()
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 12,
                 "--on-error", "skip") == 0
    assert "0 encoded now" in capsys.readouterr().out


def image_folder(root: Path, n: int) -> Path:
    root.mkdir()
    for i in range(n):
        (root / f"img{i:03d}.png").write_bytes(b"png")
        (root / f"img{i:03d}.txt").write_text(f"a photo of fox number {i}")
    return root


def kohya(models: dict, images: Path, out: Path, shard_size: int, *extra: str) -> int:
    return embed("--model", models["sdxl"], "--captions", images, "--out", out, "--format", "kohya",
                 "--shard-size", shard_size, *extra)


def test_kohya_manifest_writes_grow_by_a_short_record_per_shard_whatever_its_rows(tmp_path, models,
                                                                                   manifest_writes, capsys):
    """24 images, shards of 12 vs of 3: what a shard adds to the manifest is one short record either way (the
    old manifest held every row's file, sha256, index and caption sha256: ~2 KB a shard of 12)."""
    images = image_folder(tmp_path / "imgs", 24)
    growth = {}
    for size in (3, 12):  # the shards of 12 last: the npz files beside the images are theirs
        manifest_writes.clear()
        out = tmp_path / f"out{size}"
        assert kohya(models, images, out, size, "--overwrite") == 0
        steps = [b - a for a, b in zip(manifest_writes, manifest_writes[1:]) if b > a]
        growth[size] = max(steps)
    assert growth[12] < 600 and abs(growth[12] - growth[3]) < 40, growth
    out = tmp_path / "out12"
    m = json.loads((out / "manifest.json").read_text())
    rec = m["shards"][1]
    assert not {"files", "indices", "caption_sha256"} & set(rec)
    side = out / "shard-00001.json"
    assert rec["sidecar"] == {"file": side.name, "sha256": hashlib.sha256(side.read_bytes()).hexdigest(),
                              "bytes": side.stat().st_size, "files": 12}
    lists = json.loads(side.read_text())
    assert lists["indices"] == list(range(12, 24))
    assert lists["caption_sha256"] == [hashlib.sha256(f"a photo of fox number {i}".encode()).hexdigest()
                                       for i in range(12, 24)]
    assert lists["files"] == {f"img{i:03d}_te_outputs.npz": hashlib.sha256(
        (images / f"img{i:03d}_te_outputs.npz").read_bytes()).hexdigest() for i in range(12, 24)}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.json", "shard-00001.json"]
    assert embed("--verify", out) == 0


def test_kohya_sidecars_resume_verify_and_edits(tmp_path, models, capsys):
    images = image_folder(tmp_path / "imgs", 8)
    out = tmp_path / "out"
    assert kohya(models, images, out, 4) == 0
    capsys.readouterr()
    assert kohya(models, images, out, 4) == 0
    assert "0 encoded now" in capsys.readouterr().out
    # a sidecar that is not the recorded bytes: --verify says so, and that shard is not done (re-encoded)
    side = out / "shard-00001.json"
    good = side.read_bytes()
    side.write_bytes(good.replace(b'"indices": [4,', b'"indices": [0,'))
    assert embed("--verify", out) == 2
    assert "shard 1: its sidecar shard-00001.json is missing or not the one the manifest records" in capsys.readouterr().err
    npz = images / "img005_te_outputs.npz"
    before = npz.stat().st_mtime_ns
    assert kohya(models, images, out, 4) == 0
    assert "4 encoded now" in capsys.readouterr().out and npz.stat().st_mtime_ns != before
    assert side.read_bytes() == good and embed("--verify", out) == 0
    side.unlink()
    assert kohya(models, images, out, 4) == 0
    assert "4 encoded now" in capsys.readouterr().out and side.read_bytes() == good
    # an edited caption: --verify names it (read through the sidecar), a re-run redoes its shard only
    (images / "img006.txt").write_text("an edited caption")
    assert embed("--verify", out) == 2
    assert "1 caption(s) no longer match the cache (img006.png)" in capsys.readouterr().err
    first = (out / "shard-00000.json").stat().st_mtime_ns
    assert kohya(models, images, out, 4) == 0
    said = capsys.readouterr()
    assert "1 shard(s) re-encoded (1; 4 caption(s)), 1 kept" in said.err + said.out
    assert (out / "shard-00000.json").stat().st_mtime_ns == first
    assert hashlib.sha256(b"an edited caption").hexdigest() in side.read_text()
    assert embed("--verify", out) == 0
    # --overwrite with an altered sidecar: the npz files it lists are not known to be the job's: left, said
    side.write_text(side.read_text().replace("]", "] ", 1))
    capsys.readouterr()
    assert kohya(models, images, out, 4, "--overwrite", "--shard-size", 8) == 0
    assert "1 shard sidecar(s) of the old job are missing or not the ones its manifest records" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.json"]


def test_kohya_folder_of_the_earlier_shape_resumes_verifies_and_overwrites(tmp_path, models, capsys):
    """A folder written before sidecars (every row's lists inline in manifest.json) still resumes, verifies,
    notices an edit and is cleared by --overwrite."""
    images = image_folder(tmp_path / "imgs", 8)
    out = tmp_path / "out"
    assert kohya(models, images, out, 4) == 0
    m = json.loads((out / "manifest.json").read_text())
    for rec in m["shards"]:
        side = out / rec.pop("sidecar")["file"]
        lists = json.loads(side.read_text())
        rec.update(files=lists["files"], indices=lists["indices"], caption_sha256=lists["caption_sha256"])
        side.unlink()
    (out / "manifest.json").write_text(json.dumps(m))
    assert embed("--verify", out) == 0
    capsys.readouterr()
    assert kohya(models, images, out, 4) == 0
    assert "0 encoded now" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]  # nothing redone, so no sidecar written
    (images / "img001.txt").write_text("an edited caption")
    assert embed("--verify", out) == 2
    assert "(img001.png)" in capsys.readouterr().err
    assert kohya(models, images, out, 4) == 0
    said = capsys.readouterr()
    assert "1 shard(s) re-encoded (0; 4 caption(s)), 1 kept" in said.err + said.out
    assert embed("--verify", out) == 0  # shard 0 now has a sidecar, shard 1 its inline lists
    rec = {r["shard"]: r for r in json.loads((out / "manifest.json").read_text())["shards"]}
    assert "sidecar" in rec[0] and "files" in rec[1]
    assert kohya(models, images, out, 4, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.json", "shard-00001.json"]
    assert not capsys.readouterr().err  # every old file was the job's own: removed, none left


def test_overwrite_removes_an_unlisted_sidecar_a_killed_job_wrote_and_nothing_else(tmp_path, models, capsys):
    images = image_folder(tmp_path / "imgs", 4)
    out = tmp_path / "out"
    assert kohya(models, images, out, 2) == 0
    m = json.loads((out / "manifest.json").read_text())
    m["shards"], m["complete"] = m["shards"][:1], False  # killed after writing shard 1's sidecar, before listing it
    (out / "manifest.json").write_text(json.dumps(m))
    mine = out / "shard-00007.json"
    mine.write_text('{"the user": "a file named like a sidecar"}')
    assert kohya(models, images, out, 2, "--overwrite") == 0
    assert mine.read_text() == '{"the user": "a file named like a sidecar"}'
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.json", "shard-00001.json",
                                                     "shard-00007.json"]
    assert embed("--verify", out) == 0


@pytest.mark.slow
def test_ray_engine_kohya_records_go_to_sidecars(tmp_path, models):
    """Ray actors return whole records (lists included); the driver moves the lists to sidecars as the local
    engine's writer does, so the folders are the same."""
    ray = pytest.importorskip("ray")
    images = image_folder(tmp_path / "imgs", 6)
    assert kohya(models, images, tmp_path / "local", 3) == 0
    def lists(out: Path) -> dict:  # the npz files' hashes aside: Ray's batches may round differently
        docs = {p.name: json.loads(p.read_text()) for p in out.glob("shard-*.json")}
        return {name: (d["indices"], d["caption_sha256"], sorted(d["files"])) for name, d in docs.items()}

    local = lists(tmp_path / "local")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert kohya(models, images, tmp_path / "ray", 3, "--engine", "ray", "--workers", "2", "--overwrite") == 0
    finally:
        ray.shutdown()
    assert lists(tmp_path / "ray") == local and len(local) == 2
    assert embed("--verify", tmp_path / "ray") == 0
