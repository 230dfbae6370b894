"""`sdclip embed` against hostile or changing inputs and failing disks (issues 19 and 24).

Each test builds real files and runs the CLI's `main()` in-process (or `python -m sdclip` where the failure
must be a real one: a file-size limit the kernel enforces). Oracle: the victims' bytes, the folder's listing,
the manifest, and the rows of an undisturbed run.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdclip.cli.main import main
from tiny_models import tiny_family, write_layout
from embed_rows import file_size_limit, read_rows, write_txt

ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = ["a red fox", "a blue cat", "a green dog", "a red fox", "golden hour", "two birds", "misty forest"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"sd1": write_layout("single.safetensors", tiny_family("sd1"), root / "sd1"),
            "sdxl": write_layout("single.safetensors", tiny_family("sdxl"), root / "sdxl")}


def embed(*args: object) -> int:
    return main(["embed", *map(str, args)])


def read_all(out: Path) -> dict[str, torch.Tensor]:
    return read_rows(out)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


# ---- 24.0: --overwrite and a crafted manifest ------------------------------------------------------------

def test_overwrite_never_removes_files_a_crafted_manifest_names(tmp_path, models, capsys):
    """A manifest listing `../victim.txt`, an absolute path and a symlink out of the folder (as shard files and
    as kohya npz files), plus a symlink named like a shard: every victim survives; the job's own files go."""
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 0
    victims = {name: tmp_path / name for name in ("victim.txt", "abs_victim.txt", "linked_victim.txt",
                                                  "victim_te_outputs.npz", "shard_victim.safetensors")}
    for name, path in victims.items():
        path.write_bytes(name.encode())
    (out / "link_te_outputs.npz").symlink_to(victims["linked_victim.txt"])
    (out / "shard-00042.safetensors").symlink_to(victims["shard_victim.safetensors"])
    stranger = out / "shard-00099.safetensors"
    stranger.write_bytes(b"the user's own file that happens to have a shard's name")
    m = json.loads((out / "manifest.json").read_text())
    digest = {n: __import__("hashlib").sha256(p.read_bytes()).hexdigest() for n, p in victims.items()}
    m["info"]["captions"] = str(out)
    m["shards"].append({"shard": 7, "start": 0, "stop": 1, "rows": 1, "indices": [0], "files": {
        "../victim.txt": digest["victim.txt"], str(victims["abs_victim.txt"]): digest["abs_victim.txt"],
        "link_te_outputs.npz": digest["linked_victim.txt"], "../victim_te_outputs.npz": digest["victim_te_outputs.npz"],
    }})
    m["shards"].append({"shard": 8, "start": 0, "stop": 1, "rows": 1, "file": "../shard_victim.safetensors",
                        "sha256": digest["shard_victim.safetensors"], "bytes": 10})
    (out / "manifest.json").write_text(json.dumps(m))
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4, "--overwrite") == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite: the old manifest lists 5 file(s) that are not this job's own" in err
    for name, path in victims.items():
        assert path.read_bytes() == name.encode(), f"{name} was touched"
    assert stranger.read_bytes().startswith(b"the user's own file")
    assert (out / "shard-00042.safetensors").is_symlink()
    assert embed("--verify", out) == 0
    # --format kohya: the npz files the manifest names outside the image folder survive too
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.png").write_bytes(b"x")
    (images / "a.txt").write_text("a red fox")
    kout = tmp_path / "kout"
    assert embed("--model", models["sdxl"], "--captions", images, "--out", kout, "--format", "kohya") == 0
    own = images / "a_te_outputs.npz"
    assert own.exists()
    km = json.loads((kout / "manifest.json").read_text())
    # the shard's per-row lists live in its sidecar: crafted there, its sha256 in the manifest made to match
    side = kout / km["shards"][0]["sidecar"]["file"]
    lists = json.loads(side.read_text())
    lists["files"]["../victim_te_outputs.npz"] = digest["victim_te_outputs.npz"]
    lists["files"][str(victims["abs_victim.txt"])] = digest["abs_victim.txt"]
    side.write_text(json.dumps(lists))
    km["shards"][0]["sidecar"]["sha256"] = __import__("hashlib").sha256(side.read_bytes()).hexdigest()
    (kout / "manifest.json").write_text(json.dumps(km))
    own.write_bytes(b"changed by the user: not what the job wrote")
    assert embed("--model", models["sdxl"], "--captions", images, "--out", kout, "--format", "kohya",
                 "--overwrite") == 0
    for name, path in victims.items():
        assert path.read_bytes() == name.encode(), f"{name} was touched"
    assert sorted(p.name for p in kout.iterdir()) == ["manifest.json", "shard-00000.json"]
    assert "3 file(s) that are not this job's own" in capsys.readouterr().err  # 2 crafted, 1 edited by the user


def test_overwrite_refuses_a_manifest_sdclip_did_not_write(tmp_path, models, capsys):
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "manifest.json"
    foreign.write_text(json.dumps({"name": "someone else's project", "files": ["../victim.txt"]}))
    for bad in (foreign.read_text(), json.dumps({"schema": "sdclip-embed/1", "config": {}, "shards": "x"}),
                "[" * 5000):
        foreign.write_text(bad)
        assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--overwrite") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("sdclip: --overwrite:") and "another --out" in err
        assert foreign.read_text() == bad


# ---- 24.0b: every caption exactly once, or a clear error -----------------------------------------------

def test_csv_field_longer_than_the_csv_modules_limit_loses_no_row(tmp_path, models, capsys):
    path = tmp_path / "caps.csv"
    captions = [f"caption {i}" for i in range(50)]
    captions[2] = "a fox, " * 20_000  # 140,000 characters: past csv.field_size_limit()'s 131,072
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["caption"])
        w.writerows([c] for c in captions)
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", path, "--out", out, "--shard-size", 16,
                 "--on-error", "skip", "--row-limit", "4096") == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["rows"] == 50
    assert read_all(out)["index"].tolist() == [i for i in range(50) if i not in {e["index"] for e in m["errors"]}]
    assert len(read_all(out)["index"]) + len(m["errors"]) == 50


def test_broken_csv_is_a_clear_error_not_lost_rows(tmp_path, models, monkeypatch, capsys):
    """A row the csv module cannot parse (here: past a lowered field limit) ends the job with one line naming
    it, instead of silently ending the file there."""
    import sdclip.jobs.readers as readers

    monkeypatch.setattr(readers, "CSV_FIELD_LIMIT", 10)
    old = readers.csv.field_size_limit(10)
    try:
        path = tmp_path / "caps.csv"
        path.write_text("caption\na fox\n" + "x" * 50 + "\na dog\n", encoding="utf-8")
        assert embed("--model", models["sd1"], "--captions", path, "--out", tmp_path / "o", "--on-error",
                     "skip") == 2
    finally:
        readers.csv.field_size_limit(old)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 3: CSV error" in err and "fix the file" in err


def test_captions_edited_while_the_job_runs_are_detected_before_a_shard_is_written(tmp_path, models, monkeypatch,
                                                                                      capsys):
    """A line inserted at the top after the scan: no shard is written from the changed file, one clear line;
    the shards written before the edit are right and kept."""
    import sdclip.jobs.work as work

    captions = [f"caption number {i}" for i in range(12)]
    caps = write_txt(tmp_path / "caps.txt", captions)
    real_prepare = work.ShardWork.prepare

    def edit_after_first_shard(self, k, seek, rows):  # noqa: ANN001, ANN202
        if k == 1:
            caps.write_text("an inserted line\n" + caps.read_text(encoding="utf-8"), encoding="utf-8")
        return real_prepare(self, k, seek, rows)

    monkeypatch.setattr(work.ShardWork, "prepare", edit_after_first_shard)
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "changed after the job validated it" in err and "shard 1" in err
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors"]
    assert read_all(out)["index"].tolist() == [0, 1, 2, 3]
    m = json.loads((out / "manifest.json").read_text())
    assert not m["complete"] and [s["shard"] for s in m["shards"]] == [0]
    # the file as it was: the same command finishes, every caption once
    monkeypatch.setattr(work.ShardWork, "prepare", real_prepare)
    write_txt(caps, captions)
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 0
    assert read_all(out)["index"].tolist() == list(range(12))
    assert embed("--verify", out) == 0


# ---- 24.5: a full disk ---------------------------------------------------------------------------------

def test_a_real_failing_write_before_the_first_shard_is_one_line_and_resumes(tmp_path, models):
    """The kernel refuses the shard's bytes (RLIMIT_FSIZE below one shard): one line, exit 2, nothing
    half-written; without the limit the same command finishes every caption once."""
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sdclip", "embed", "--model", str(models["sd1"]), "--captions", str(caps),
           "--out", str(out), "--shard-size", "4"]
    run = subprocess.run(cmd, env=env(), capture_output=True, text=True, preexec_fn=file_size_limit(60_000), timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "cannot write shard-00000.safetensors" in run.stderr
    assert "Traceback" not in run.stderr and not list(out.glob("shard-*")) and not list(out.glob(".*.tmp"))
    assert main(cmd[3:]) == 0  # without the limit (in-process: no second interpreter start)
    assert read_all(out)["index"].tolist() == list(range(len(CAPTIONS)))
    assert embed("--verify", out) == 0


def test_disk_full_while_scanning_is_one_line(tmp_path, models, monkeypatch, capsys):
    import errno

    import sdclip.jobs.plan as plan

    def full(path, arr):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plan, "_save_npy", full)
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    assert embed("--model", models["sd1"], "--captions", caps, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "disk full" in err
    assert not (tmp_path / "out").exists()


# ---- 24.7b: hostile sidecars and JSON lines --------------------------------------------------------------

def test_sidecar_folder_fifo_and_deep_json_are_one_line_each(tmp_path, models, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("a", "b", "c"):
        (images / f"{name}.png").write_bytes(b"x")
    (images / "a.txt").write_text("a red fox")
    (images / "b.txt").mkdir()
    os.mkfifo(images / "c.txt")
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", images, "--out", out, "--on-error", "skip") == 0
    m = json.loads((out / "manifest.json").read_text())
    assert [(e["where"], e["error"]) for e in m["errors"]] == [
        ("b.png", "caption file b.txt is a folder"), ("c.png", "caption file c.txt is not a regular file")]
    assert embed("--model", models["sd1"], "--captions", images, "--out", tmp_path / "o2") == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("sdclip: 2 invalid caption(s)") and len(lines) == 3
    deep = tmp_path / "deep.jsonl"
    deep.write_text(json.dumps({"caption": "fine"}) + "\n" + "[" * 5000 + "]" * 5000 + "\n"
                    + '{"caption": ' + "9" * 5000 + "}\n")
    assert embed("--model", models["sd1"], "--captions", deep, "--out", tmp_path / "o3") == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[1:] == ["  line 2: invalid JSON: nested too deeply",
                         lines[2]] and lines[2].startswith("  line 3: invalid JSON: Exceeds the limit")


# ---- 19.6 / 19.9 / 19.17: failed starts leave nothing; finished jobs leave only their results ------------

def test_failed_starts_leave_no_folder_and_no_lock(tmp_path, models, capsys):
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    sd3 = tmp_path / "sd3"
    sd3.mkdir()
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    from safetensors.torch import save_file

    sd3_file = tmp_path / "sd3.safetensors"  # an SD3 single file's text-encoder keys, read from the header only
    save_file({"text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": torch.ones(4)}, sd3_file)
    cases = [
        (["--model", models["sd1"], "--device", "gpu"], "did you mean --device cuda"),
        (["--model", sd3], "needs text_encoder/"),  # T5 families are embedded now: the loader's own line
        (["--model", sd3_file], ""),
        (["--model", models["sd1"], "--family", "flux"], ""),
        (["--model", tmp_path / "no-such-model"], ""),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model", models["sd1"], "--device", "cuda"], "sees no CUDA GPU"))
    for extra, says in cases:
        out = tmp_path / "new" / "out"
        assert embed(*extra, "--captions", caps, "--out", out) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("sdclip: ") and says in err, err
        assert not (tmp_path / "new").exists(), extra
    # a folder the user made stays, even if the start fails
    mine = tmp_path / "mine"
    mine.mkdir()
    assert embed("--model", tmp_path / "no-such-model", "--captions", caps, "--out", mine) == 2
    assert mine.is_dir() and list(mine.iterdir()) == []


def test_a_finished_job_keeps_only_its_results_and_reruns_without_rescanning(tmp_path, models, capsys):
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 0
    assert sorted(p.name for p in out.iterdir()) == ["empty.safetensors", "manifest.json", "shard-00000.safetensors",
                                                     "shard-00001.safetensors"]
    before = read_all(out)
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 0
    assert "0 encoded now" in capsys.readouterr().out
    # a shard lost after the job finished: the scan is redone and only that shard written again
    (out / "shard-00001.safetensors").unlink()
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 0
    assert "1 of 2 shard(s) to do" in capsys.readouterr().err
    assert torch.equal(read_all(out)["prompt_embeds"], before["prompt_embeds"])
    assert sorted(p.name for p in out.iterdir())[:2] == ["empty.safetensors", "manifest.json"]


# ---- 19.7 / 19.18: the same AND rule as encode; wording --------------------------------------------------

def test_a_single_weighted_part_is_a_warning_as_in_encode(tmp_path, models, capsys):
    caps = write_txt(tmp_path / "caps.txt", ["a photo of a forest, 16:9", "a red fox", "a cat AND a dog"])
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--on-error", "skip") == 0
    captured = capsys.readouterr()
    assert "sdclip: warning: line 1: its AUTOMATIC1111 AND weight 9" in captured.err
    m = json.loads((out / "manifest.json").read_text())
    assert [e["where"] for e in m["errors"]] == ["line 3"] and m["warnings"]["count"] == 1
    assert read_all(out)["index"].tolist() == [0, 1]
    enc = tmp_path / "enc.safetensors"
    assert main(["encode", "--model", str(models["sd1"]), "--prompt", "a photo of a forest, 16:9", "--out", str(enc)]) == 0
    assert "AND weight 9" in capsys.readouterr().err


def test_many_invalid_captions_are_listed_one_per_line_and_cut(tmp_path, models, capsys):
    caps = write_txt(tmp_path / "caps.txt", [f"a{i} AND b{'x' * 300}" for i in range(14)])
    assert embed("--model", models["sd1"], "--captions", caps, "--out", tmp_path / "out") == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 12 and lines[-1] == "  … and 4 more"
    assert all(len(line) <= 202 for line in lines[1:])


def test_verify_says_plainly_which_captions_are_missing(tmp_path, models, capsys):
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 2) == 0
    m = json.loads((out / "manifest.json").read_text())
    m["shards"] = m["shards"][:1]
    (out / "manifest.json").write_text(json.dumps(m))
    assert embed("--verify", out) == 2
    err = capsys.readouterr().err
    assert "5 captions are in no shard, the first is caption 3 (index 2)" in err and "(first" not in err


def test_csv_without_the_column_suggests_column(tmp_path, models, capsys):
    path = tmp_path / "c.csv"
    path.write_text("id,prompt\n1,a fox\n")
    assert embed("--model", models["sd1"], "--captions", path, "--out", tmp_path / "out") == 2
    assert "--column" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_verify_follows_no_path_a_crafted_manifest_names(tmp_path, models, capsys):
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out, "--shard-size", 4) == 0
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((out / "shard-00001.safetensors").read_bytes())
    m = json.loads((out / "manifest.json").read_text())
    m["shards"][1]["file"] = "../outside.safetensors"
    m["shards"].append({"shard": 9, "start": 36, "stop": 40, "rows": 0, "indices": [],
                        "files": {"/dev/zero": "0" * 64, "../caps.txt": "0" * 64}})
    (out / "manifest.json").write_text(json.dumps(m))
    assert embed("--verify", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'../outside.safetensors' is not its name" in err
    assert "'/dev/zero': not a trainer file inside the image folder" in err


def test_captions_edited_during_the_scan_are_refused(tmp_path, models, monkeypatch, capsys):
    import sdclip.jobs.driver as driver

    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    real_scan = driver.scan

    def scan_then_edit(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = real_scan(*args, **kwargs)
        write_txt(caps, ["an inserted line", *CAPTIONS])
        return result

    monkeypatch.setattr(driver, "scan", scan_then_edit)
    out = tmp_path / "out"
    assert embed("--model", models["sd1"], "--captions", caps, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "changed while the job validated it" in err and not out.exists()
