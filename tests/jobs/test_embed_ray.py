"""`sdclip embed --engine ray` on a real local Ray (2 CPUs): the same shards as the local engine, and a job
started by one engine resumed by the other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdclip.cli.main import main
from tiny_models import tiny_family, write_layout
from embed_rows import read_rows

ray = pytest.importorskip("ray")

CAPTIONS = [f"a {c} fox number {i}, (detailed:1.2)" for i, c in enumerate(["red", "blue", "green", "gold"] * 5)]


def read_all(out: Path) -> dict[str, torch.Tensor]:
    return read_rows(out)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_matches_local_and_resumes_across_engines(tmp_path, local_ray):
    model = write_layout("single.safetensors", tiny_family("sdxl"), tmp_path / "sdxl")
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(c + "\n" for c in CAPTIONS))
    args = ["embed", "--model", str(model), "--captions", str(caps), "--shard-size", "6", "--batch-size", "4"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"]) == 0
    a, b = read_all(tmp_path / "local"), read_all(tmp_path / "ray")
    assert torch.equal(a["index"], b["index"])
    for name in ("prompt_embeds", "pooled_prompt_embeds"):
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-5)
    assert main(["embed", "--verify", str(tmp_path / "ray")]) == 0
    # a local job cut short is finished by Ray: same shard names, same manifest
    part = tmp_path / "mixed"
    assert main([*args, "--out", str(part)]) == 0
    m = json.loads((part / "manifest.json").read_text())
    (part / m["shards"][1]["file"]).unlink()
    assert main([*args, "--out", str(part), "--engine", "ray", "--workers", "1"]) == 0
    torch.testing.assert_close(read_all(part)["prompt_embeds"], a["prompt_embeds"], atol=1e-5, rtol=1e-5)
    assert main(["embed", "--verify", str(part)]) == 0


@pytest.mark.slow
def test_ray_workers_store_a_repeated_caption_once_like_the_local_engine(tmp_path, local_ray):
    """Two actors write shards in any order; a reference may name a row whose shard another actor has not
    written yet (the scan decides, not the disk): the finished folder reads back every row."""
    model = write_layout("single.safetensors", tiny_family("sd1"), tmp_path / "sd1")
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(f"a {c} fox\n" for c in ["red", "blue", "green"] * 6))
    args = ["embed", "--model", str(model), "--captions", str(caps), "--shard-size", "4"]
    assert main([*args, "--out", str(tmp_path / "local"), "--no-dedupe"]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"]) == 0
    a, b = read_all(tmp_path / "local"), read_all(tmp_path / "ray")
    assert torch.equal(a["index"], b["index"]) and torch.equal(a["caption_sha256"], b["caption_sha256"])
    torch.testing.assert_close(b["prompt_embeds"], a["prompt_embeds"], atol=1e-5, rtol=1e-5)
    stored = sum(json.loads((tmp_path / "ray" / "manifest.json").read_text())["shards"][k]["rows"]
                 - json.loads((tmp_path / "ray" / "manifest.json").read_text())["shards"][k]["references"]
                 for k in range(5))
    assert stored == 3
    assert main(["embed", "--verify", str(tmp_path / "ray")]) == 0


@pytest.mark.slow
def test_embed_dataset_for_an_existing_ray_pipeline(tmp_path, local_ray):
    from sdclip.jobs.ray_engine import EmbedCaptions, embed_dataset

    model = write_layout("single.safetensors", tiny_family("sd1"), tmp_path / "sd1")
    ds = ray.data.from_items([{"caption": c, "id": i} for i, c in enumerate(CAPTIONS[:6])])
    rows = sorted(embed_dataset(ds, str(model), workers=1, batch_size=3).take_all(), key=lambda r: r["id"])
    direct = EmbedCaptions(str(model))({"caption": CAPTIONS[:6]})
    assert len(rows) == 6 and rows[0]["prompt_embeds"].shape == (77, 128)
    for r in rows:
        torch.testing.assert_close(torch.from_numpy(r["prompt_embeds"]),
                                   torch.from_numpy(direct["prompt_embeds"][r["id"]]), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_ray_engine_is_quiet_unless_verbose(tmp_path):
    """19.12: Ray's own INFO logs (cluster start, execution plans) stay out of the terminal by default."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    model = write_layout("single.safetensors", tiny_family("sd1"), tmp_path / "sd1")
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(c + "\n" for c in CAPTIONS))
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "sdclip", "embed", "--model", str(model), "--captions", str(caps),
                          "--out", str(tmp_path / "out"), "--shard-size", "10", "--engine", "ray",
                          "--workers", "8"],  # more workers than shards: no Ray Data warning of idle actors
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    noise = [line for line in run.stderr.splitlines() if line.strip()]
    assert not any(" INFO " in line or "Started a local Ray" in line for line in noise), run.stderr
    assert not any("Warning" in line for line in noise), run.stderr
    assert len(noise) <= 1, run.stderr  # Ray's core announces the log level it was given, once, in C++


@pytest.mark.slow
def test_ray_engine_embeds_flux_like_the_local_engine(tmp_path, local_ray):
    """A T5 family on Ray: the same shards (CLIP pooled + T5 rows, token counts) as the local engine."""
    from test_embed_families import build

    model = build(tmp_path, "flux")
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(c + "\n" for c in CAPTIONS[:8]))
    args = ["embed", "--model", str(model), "--captions", str(caps), "--shard-size", "3", "--preset", "diffusers"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "1"]) == 0
    a, b = read_all(tmp_path / "local"), read_all(tmp_path / "ray")
    assert set(a) == set(b) and a["prompt_embeds"].shape[1] == 512
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-5)
    assert main(["embed", "--verify", str(tmp_path / "ray")]) == 0
