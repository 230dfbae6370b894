"""A cache that notices an edited caption: every item records the sha256 of its caption (and the shard its
options), `--verify` names captions that no longer match, and a re-run re-encodes only the shards holding
them, saying so; the result equals a fresh job on the edited captions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sdclip.cli.main import main
from tiny_models import tiny_family, write_layout
from embed_rows import read_rows, write_txt

CAPTIONS = [f"a photo of fox number {i}, (detailed:1.1)" for i in range(24)]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_layout("single.safetensors", tiny_family("sdxl"), tmp_path_factory.mktemp("m") / "sdxl")


def embed(model: Path, caps: Path, out: Path, *extra: str) -> int:
    return main(["embed", "--model", str(model), "--captions", str(caps), "--out", str(out), "--shard-size", "4",
                 *extra])


def read_all(out: Path) -> dict[str, torch.Tensor]:
    return read_rows(out)


def test_editing_three_captions_re_encodes_only_their_shards(tmp_path, model, capsys):
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    assert embed(model, caps, out) == 0
    got = read_all(out)
    assert got["caption_sha256"].shape == (24, 32) and got["caption_sha256"].dtype == torch.uint8
    assert bytes(got["caption_sha256"][5].tolist()) == hashlib.sha256(CAPTIONS[5].encode()).digest()
    with safe_open(str(out / "shard-00000.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["options"])["weighting"] == "a1111"
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    edited = list(CAPTIONS)
    for i in (2, 13, 21):  # shards 0, 3, 5
        edited[i] = f"an edited caption {i}"
    write_txt(caps, edited)
    capsys.readouterr()
    assert main(["embed", "--verify", str(out)]) == 2
    err = capsys.readouterr().err
    assert "3 caption(s) no longer match the cache (line 3, line 14, line 22)" in err
    assert embed(model, caps, out) == 0
    said = capsys.readouterr()
    assert "3 shard(s) re-encoded (0, 3, 5; 12 caption(s)), 3 kept" in said.err + said.out
    assert "12 encoded now" in said.out
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert [n for n in sorted(after) if after[n] != before[n]] == [
        "shard-00000.safetensors", "shard-00003.safetensors", "shard-00005.safetensors"]
    assert main(["embed", "--verify", str(out)]) == 0
    fresh = tmp_path / "fresh"
    assert embed(model, caps, fresh) == 0
    a, b = read_all(out), read_all(fresh)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_inserted_and_removed_lines_re_encode_from_the_change_on(tmp_path, model, capsys):
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    assert embed(model, caps, out) == 0
    write_txt(caps, CAPTIONS[:9] + CAPTIONS[10:])  # one line removed: shards 2… move, and the last one goes
    assert embed(model, caps, out) == 0
    assert sorted(p.name for p in out.glob("shard-*")) == [f"shard-{k:05d}.safetensors" for k in range(6)]
    fresh = tmp_path / "fresh"
    assert embed(model, write_txt(tmp_path / "c2.txt", CAPTIONS[:9] + CAPTIONS[10:]), fresh) == 0
    assert torch.equal(read_all(out)["prompt_embeds"], read_all(fresh)["prompt_embeds"])
    assert main(["embed", "--verify", str(out)]) == 0


def test_trainer_files_follow_an_edited_caption(tmp_path, model, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        (images / f"{i}.png").write_bytes(b"png")
        (images / f"{i}.txt").write_text(CAPTIONS[i])
    out = tmp_path / "out"
    args = ("--format", "ai-toolkit", "--preset", "diffusers")
    assert embed(model, images, out, *args) == 0
    old = sorted(p.name for p in (images / "_t_e_cache").iterdir())
    (images / "4.txt").write_text("an edited caption")
    assert main(["embed", "--verify", str(out)]) == 2
    assert "4.png" in capsys.readouterr().err
    assert embed(model, images, out, *args) == 0
    new = sorted(p.name for p in (images / "_t_e_cache").iterdir())
    assert len(new) == 6 and len(set(old) - set(new)) == 1  # the stale file of the old caption is gone
    assert [n for n in set(old) - set(new)][0].startswith("4_")
    assert main(["embed", "--verify", str(out)]) == 0
