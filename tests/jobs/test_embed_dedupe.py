"""Identical captions stored once in sdclip's own shards: a repeated caption's row is a reference (`ref_index`,
`ref_source`, its own `ref_caption_sha256`) to the first row holding it. Oracle: the same job with
`--no-dedupe` (every row stored, the layout before), item for item through `sdclip.dataset.open`, and a fresh
job after an edit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import sdclip.dataset
from sdclip.cli.main import main
from test_embed_families import build
from tiny_models import tiny_family, write_layout
from embed_rows import write_txt

#: shards of 4: "a red fox" first in shard 0 and repeated in shards 0, 2 and 3; "" twice in shard 1
CAPTIONS = ["a red fox", "golden hour", "a (blue:1.3) cat", "a red fox", "", "two dogs", "", "misty forest",
            "a red fox", "a (blue:1.3) cat", "sunset", "boats", "a red fox", "golden hour", "x", "y"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_layout("single.safetensors", tiny_family("sdxl"), tmp_path_factory.mktemp("dd") / "sdxl")


def embed(model: Path, caps: Path, out: Path, *extra: str) -> None:
    assert main(["embed", "--model", str(model), "--captions", str(caps), "--out", str(out), "--shard-size", "4",
                 *extra]) == 0


def same_items(a: Path, b: Path) -> None:
    x, y = sdclip.dataset.open(a), sdclip.dataset.open(b)
    assert len(x) == len(y)
    for i in range(len(x)):
        p, q = x[i], y[i]
        assert p.keys() == q.keys() and p["index"] == q["index"] == i
        for k in p:
            assert torch.equal(torch.as_tensor(p[k]), torch.as_tensor(q[k])), (i, k)
        assert torch.equal(x.get(i)["prompt_embeds"], q["prompt_embeds"])


def shard_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob("shard-*.safetensors"))


def test_repeated_captions_are_stored_once_and_read_back_as_every_row(tmp_path, model, capsys):
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    once, every = tmp_path / "once", tmp_path / "every"
    embed(model, caps, once)
    embed(model, caps, every, "--no-dedupe")
    with safe_open(str(once / "shard-00002.safetensors"), framework="pt") as f:
        assert f.metadata()["sdclip_shard"] == "2"
        assert f.get_tensor("index").tolist() == [10, 11] and f.get_tensor("prompt_embeds").shape[0] == 2
        assert f.get_tensor("ref_index").tolist() == [8, 9] and f.get_tensor("ref_source").tolist() == [0, 2]
        assert f.get_tensor("ref_caption_sha256").shape == (2, 32)
    with safe_open(str(every / "shard-00002.safetensors"), framework="pt") as f:
        assert f.get_tensor("index").tolist() == [8, 9, 10, 11] and "ref_index" not in f.keys()
    same_items(once, every)
    saved = 1 - shard_bytes(once) / shard_bytes(every)
    assert saved > 0.3  # 6 of 16 rows are repeats
    capsys.readouterr()
    assert main(["embed", "--verify", str(once)]) == 0
    assert "16 row(s)" in capsys.readouterr().out
    embed(model, caps, once)  # a re-run of the finished job: nothing to do, nothing changed
    same_items(once, every)


def test_an_edited_first_occurrence_re_encodes_the_rows_that_referred_to_it(tmp_path, model, capsys):
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out = tmp_path / "out"
    embed(model, caps, out)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    # an edit in shard 0 (row 3, itself a reference): shards 2 and 3 refer to its rows 0, 1 and 2, which keep
    # their captions: kept
    edited = list(CAPTIONS)
    edited[3] = "an edited caption"
    write_txt(caps, edited)
    capsys.readouterr()
    embed(model, caps, out)
    said = capsys.readouterr()
    assert "1 shard(s) re-encoded (0; 4 caption(s)), 3 kept" in said.err + said.out
    now = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert [n for n in sorted(now) if now[n] != stamp[n]] == ["shard-00000.safetensors"]
    fresh = tmp_path / "fresh"
    embed(model, caps, fresh, "--no-dedupe")
    same_items(out, fresh)
    # the first "a red fox" (row 0) edited: rows 8 and 12 held references to it; shards 2 and 3 are
    # re-encoded (row 8 is now the caption's first row), never left reading the new row 0
    edited[0] = "a blue fox now"
    write_txt(caps, edited)
    capsys.readouterr()
    embed(model, caps, out)
    said = capsys.readouterr()
    assert "3 shard(s) re-encoded (0, 2, 3; 12 caption(s)), 1 kept" in said.err + said.out
    with safe_open(str(out / "shard-00002.safetensors"), framework="pt") as f:
        assert f.get_tensor("index").tolist() == [8, 10, 11] and f.get_tensor("ref_source").tolist() == [2]
    with safe_open(str(out / "shard-00003.safetensors"), framework="pt") as f:
        assert f.get_tensor("ref_index").tolist() == [12, 13] and f.get_tensor("ref_source").tolist() == [8, 1]
    assert main(["embed", "--verify", str(out)]) == 0
    fresh2 = tmp_path / "fresh2"
    embed(model, caps, fresh2, "--no-dedupe")
    same_items(out, fresh2)


def test_a_reference_to_a_row_holding_another_caption_is_an_error_never_its_tensors(tmp_path, model, capsys):
    """A shard swapped in from elsewhere (by hand, a copy): the reader checks the caption sha256 of the row a
    reference reads, and --verify names it."""
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    out, other = tmp_path / "out", tmp_path / "other"
    embed(model, caps, out)
    embed(model, write_txt(tmp_path / "other.txt", ["a green fox", *CAPTIONS[1:]]), other)
    shutil.copy(other / "shard-00000.safetensors", out / "shard-00000.safetensors")
    ds = sdclip.dataset.open(out)
    with pytest.raises(ValueError, match="input index 8 refers to index 0, which now holds another caption"):
        ds.get(8)
    assert torch.equal(ds.get(9)["prompt_embeds"], sdclip.dataset.open(other).get(9)["prompt_embeds"])
    capsys.readouterr()
    assert main(["embed", "--verify", str(out)]) == 2
    assert "refer to a row that is not stored with their caption (index 8 → index 0)" in capsys.readouterr().err


def test_resume_after_a_kill_and_varlen_with_repeats(tmp_path, capsys):
    """A job stopped after its first shard (the rest pending, as a kill leaves it) resumes with references
    into the kept shard; --varlen shards store references too."""
    folder = build(tmp_path, "wan")
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    every = tmp_path / "every"
    args = ["--preset", "diffusers"]
    embed(folder, caps, every, "--no-dedupe", *args)
    out = tmp_path / "out"
    embed(folder, caps, out, "--varlen", *args)
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:1]
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    for k in (1, 2, 3):
        (out / f"shard-0000{k}.safetensors").unlink()
    capsys.readouterr()
    embed(folder, caps, out, "--varlen", *args)
    assert "3 of 4 shard(s) to do (1 kept)" in capsys.readouterr().err
    with safe_open(str(out / "shard-00003.safetensors"), framework="pt") as f:
        assert "prompt_embeds_varlen" in f.keys() and f.get_tensor("ref_source").tolist() == [0, 1]
    x, y = sdclip.dataset.open(out), sdclip.dataset.open(every)
    for i in range(len(CAPTIONS)):
        assert torch.equal(x[i]["prompt_embeds"], y[i]["prompt_embeds"]), i  # Wan pads with zeros: bitwise
    assert main(["embed", "--verify", str(out)]) == 0


def test_caption_lines_references_keep_their_own_image_and_line(tmp_path, model):
    images = tmp_path / "images"
    images.mkdir()
    for name, text in {"a.png": "a red fox\ngolden hour", "b.png": "golden hour\na red fox\nsunset"}.items():
        (images / name).write_bytes(b"\x89PNG")
        (images / name).with_suffix(".txt").write_text(text)
    once, every = tmp_path / "once", tmp_path / "every"
    embed(model, images, once, "--caption-lines")
    embed(model, images, every, "--caption-lines", "--no-dedupe")
    same_items(once, every)
    items = list(sdclip.dataset.open(once))
    assert [(int(i["image_index"]), int(i["caption_line"])) for i in items] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    with safe_open(str(once / "shard-00000.safetensors"), framework="pt") as f:
        assert f.get_tensor("ref_index").tolist() == [2, 3]
