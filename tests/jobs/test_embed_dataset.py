"""Sizes and what a training step reads: `--store-dtype`, `--varlen` (padding dropped, lengths kept, rebuilt by
`sdclip.dataset.open`), the dataset's cached empty caption, and a Flux item's `txt_ids`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import sdclip.dataset
from sdclip.cli.main import main
from test_embed_families import build

CAPTIONS = ["a red fox", "", "a (blue:1.3) cat in a misty forest", "golden hour, highly detailed"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds-models")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = build(root, family)
        return cache[family]

    return get


def embed(model: Path, caps: Path, out: Path, *extra: str) -> None:
    assert main(["embed", "--model", str(model), "--captions", str(caps), "--out", str(out), "--preset", "diffusers",
                 "--shard-size", "3", *extra]) == 0


def size(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob("shard-*.safetensors"))


@pytest.mark.parametrize("family", ["wan", "chroma"])
def test_varlen_shards_rebuild_the_padded_rows(tmp_path, models, family):
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(c + "\n" for c in CAPTIONS))
    padded, varlen = tmp_path / "padded", tmp_path / "varlen"
    embed(models(family), caps, padded)
    embed(models(family), caps, varlen, "--varlen")
    keys = load_file(varlen / "shard-00000.safetensors").keys()
    assert "prompt_embeds" not in keys and {"prompt_embeds_varlen", "prompt_lengths"} <= set(keys)
    assert size(varlen) * 5 < size(padded)
    a, b = sdclip.dataset.open(padded), sdclip.dataset.open(varlen)
    assert len(a) == len(b) == len(CAPTIONS)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert y["prompt_embeds"].shape == x["prompt_embeds"].shape
        if family == "wan":  # zeros after the prompt in the pipeline: bitwise the padded row
            assert torch.equal(x["prompt_embeds"], y["prompt_embeds"])
        else:  # the consumer masks padding: equal wherever the mask is 1, and the mask kept
            m = x["attention_mask"].bool()
            assert torch.equal(x["attention_mask"], y["attention_mask"])
            assert torch.equal(x["prompt_embeds"][m], y["prompt_embeds"][m]) and not y["prompt_embeds"][~m].any()
    assert main(["embed", "--verify", str(varlen)]) == 0


def test_store_dtype_empty_caption_and_flux_step_tensors(tmp_path, models):
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(c + "\n" for c in CAPTIONS))
    full, half = tmp_path / "fp32", tmp_path / "bf16"
    embed(models("flux"), caps, full)
    embed(models("flux"), caps, half, "--store-dtype", "bf16")
    with safe_open(str(half / "shard-00000.safetensors"), framework="pt") as f:
        assert f.get_slice("prompt_embeds").get_dtype() == "BF16" and f.get_slice("token_counts").get_dtype() == "I32"
    assert size(half) < 0.6 * size(full)
    a, b = sdclip.dataset.open(full), sdclip.dataset.open(half)
    assert torch.equal(b[2]["prompt_embeds"], a[2]["prompt_embeds"].to(torch.bfloat16))
    item = a[0]
    assert item["txt_ids"].shape == (512, 3) and not item["txt_ids"].any()
    assert item["pooled_prompt_embeds"].shape == (128,)
    empty = a.empty
    assert empty is not None and empty["index"] == -1
    assert torch.equal(empty["prompt_embeds"], a[1]["prompt_embeds"])  # line 2 is the empty caption
    assert torch.equal(empty["pooled_prompt_embeds"], a[1]["pooled_prompt_embeds"])
    # --overwrite removes the empty row too (sdclip wrote it), and writes it again
    embed(models("flux"), caps, full, "--overwrite")
    assert (full / "empty.safetensors").is_file()


def test_multi_line_sidecars_are_several_captions_per_image(tmp_path):
    from tiny_models import tiny_family, write_layout

    model = write_layout("single.safetensors", tiny_family("sd1"), tmp_path / "sd1")
    images = tmp_path / "images"
    images.mkdir()
    sidecars = {"a": "a red fox\n\nthe same fox, from the left\n", "b": "one caption", "c": "x\ny\nz"}
    for stem, text in sidecars.items():
        (images / f"{stem}.png").write_bytes(b"png")
        (images / f"{stem}.txt").write_text(text)
    out = tmp_path / "out"
    assert main(["embed", "--model", str(model), "--captions", str(images), "--out", str(out), "--caption-lines",
                 "--shard-size", "2"]) == 0
    ds = sdclip.dataset.open(out)
    pairs = [(int(r["image_index"]), int(r["caption_line"])) for r in ds]
    assert pairs == [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (2, 2)]
    one = tmp_path / "one"
    caps = tmp_path / "caps.txt"
    caps.write_text("the same fox, from the left\n")
    assert main(["embed", "--model", str(model), "--captions", str(caps), "--out", str(one)]) == 0
    assert torch.equal(ds[1]["prompt_embeds"], sdclip.dataset.open(one)[0]["prompt_embeds"])
    assert main(["embed", "--verify", str(out)]) == 0
    # an edited line is noticed by --verify, named by image and line
    (images / "c.txt").write_text("x\nY changed\nz")
    assert main(["embed", "--verify", str(out)]) == 2
    # a per-image trainer format cannot hold several captions an image
    assert main(["embed", "--model", str(model), "--captions", str(images), "--out", str(tmp_path / "k"),
                 "--caption-lines", "--format", "kohya"]) == 2


def test_an_unfinished_job_reads_as_the_rows_it_has(tmp_path):
    """Ray writes shards out of order (or a kill stops a job): here shards 1-3 are written and listed, shard 0
    is not (its file never renamed in, no record), as the driver leaves it. Rows referring to a caption whose
    first row is in shard 0 are not rows yet: not counted, not yielded, `get` says why; the others read
    exactly as in a finished job. A re-run finishes it and they appear."""
    import json

    from test_embed_dedupe import CAPTIONS
    from tiny_models import tiny_family, write_layout
    from embed_rows import write_txt

    model = write_layout("single.safetensors", tiny_family("sdxl"), tmp_path / "sdxl")
    caps = write_txt(tmp_path / "caps.txt", CAPTIONS)
    every, out = tmp_path / "every", tmp_path / "out"
    run = ["embed", "--model", str(model), "--captions", str(caps), "--shard-size", "4"]
    assert main([*run, "--out", str(every), "--no-dedupe"]) == 0
    assert main([*run, "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    m["shards"], m["complete"] = [r for r in m["shards"] if r["shard"] != 0], False
    (out / "manifest.json").write_text(json.dumps(m))
    (out / "shard-00000.safetensors").unlink()
    ds, full = sdclip.dataset.open(out), sdclip.dataset.open(every)
    # 8, 12 repeat index 0; 9 repeats 2; 13 repeats 1 (all in shard 0); 6 repeats 4 (shard 1: written)
    have = [4, 5, 6, 7, 10, 11, 14, 15]
    assert [int(item["index"]) for item in ds] == have and len(ds) == len(have)
    assert not ds.complete and ds.waiting == {8: 0, 9: 2, 12: 0, 13: 1}
    for pos, i in enumerate(have):
        assert torch.equal(ds[pos]["prompt_embeds"], full[i]["prompt_embeds"])
        assert torch.equal(ds.get(i)["caption_sha256"], full[i]["caption_sha256"])
    with pytest.raises(KeyError, match="index 8 repeats the caption of index 0, which is not in .* re-run the job"):
        ds.get(8)
    with pytest.raises(KeyError, match="input index 2 is not in"):
        ds.get(2)
    with pytest.raises(IndexError):
        ds[len(have)]
    assert main([*run, "--out", str(out)]) == 0
    ds = sdclip.dataset.open(out)
    assert ds.complete and not ds.waiting and len(ds) == len(CAPTIONS)
    assert all(torch.equal(ds[i]["prompt_embeds"], full[i]["prompt_embeds"]) for i in range(len(CAPTIONS)))
