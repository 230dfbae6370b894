"""`sdclip embed` for every family the family table has a tiny model for: SD3 / Flux (CLIP + T5), the T5-only
families (Chroma, Wan) and the LLM families (Qwen-Image, Z-Image), on real diffusers folders.

Oracle: the Conditioner itself, one caption at a time (`--preset diffusers`: T5 rows are exactly
max_sequence_length, so nothing is padded; an LLM caption's states end at its length and are zero after, as
the pipeline pads them). A T5 caption past max_sequence_length is counted and listed as truncated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sdclip.dataset
from sdclip.cli.main import main
from sdclip.conditioner import Conditioner
from embed_rows import read_rows

CAPTIONS = ["a red fox", "", "a (blue:1.3) cat in a misty forest", "a red fox", "golden hour, highly detailed"]


def build(root: Path, family: str) -> Path:
    """A diffusers folder of the family with tiny random text encoders (tests/tiny_*)."""
    folder = root / family
    if family == "flux":
        from tiny_pipelines import flux_pipeline

        flux_pipeline(seed=1).save_pretrained(str(folder))
    elif family == "sd3":
        from tiny_pipelines import sd3_pipeline

        sd3_pipeline(seed=1).save_pretrained(str(folder))
    elif family in ("chroma", "wan"):
        import tiny_t5_families as tf

        tf.save_folder(tf.pipeline(family, 1), folder)
    else:
        from tiny_llm import tiny_folder

        tiny_folder(root, family)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("family-models")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = build(root, family)
        return cache[family]

    return get


def read_all(out: Path) -> dict[str, torch.Tensor]:
    return read_rows(out)


def oracle(cond: Conditioner, caption: str, n: int) -> dict[str, torch.Tensor]:
    pos = cond(caption).positive
    e = pos.embeds[0]
    out = {"prompt_embeds": torch.cat([e, e.new_zeros(n - e.shape[0], e.shape[1])])}
    if pos.pooled is not None:
        out["pooled_prompt_embeds"] = pos.pooled[0]
    if pos.mask is not None:
        m = pos.mask[0]
        out["attention_mask"] = torch.cat([m, m.new_zeros(n - m.shape[0])])
    return out


FAMILIES = {  # family → (N slots, pooled width or None, has a mask)
    "flux": (512, True, False),
    "sd3": (77 + 256, True, False),
    "chroma": (512, False, True),
    "wan": (512, False, False),
    "qwen-image": (1024, False, True),
    "z-image": (512, False, True),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_embeds_like_the_conditioner(tmp_path, models, family):
    from sdclip.conventions.family import FAMILIES as TABLE

    if family not in TABLE:
        pytest.skip(f"{family} has not landed in the family table")
    model = models(family)
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(c + "\n" for c in CAPTIONS), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["embed", "--model", str(model), "--captions", str(caps), "--out", str(out), "--preset", "diffusers",
                 "--shard-size", "2", "--batch-size", "3"]) == 0
    got = read_all(out)
    n, pooled, masked = FAMILIES[family]
    assert got["index"].tolist() == list(range(len(CAPTIONS)))
    assert got["prompt_embeds"].shape[:2] == (len(CAPTIONS), n)
    assert ("pooled_prompt_embeds" in got) == pooled and ("attention_mask" in got) == masked
    cond = Conditioner.from_pretrained(model, "diffusers")
    for i, c in enumerate(CAPTIONS):
        ref = oracle(cond, c, n)
        for name, t in ref.items():  # alone vs in a batch of 3: other GEMM kernels (kernels.ONEDNN_MAX_ROWS), fp32 rounding
            torch.testing.assert_close(got[name][i], t, atol=5e-5, rtol=1e-5, msg=lambda m: f"{family} {name} {i}: {m}")
    assert torch.equal(got["prompt_embeds"][0], got["prompt_embeds"][3])  # one encoding for a repeated caption
    counts = got["token_counts"]
    assert counts.shape == (len(CAPTIONS), len(TABLE[family].roles)) and counts.dtype == torch.int32
    assert (counts[2] > counts[0]).all() and (counts[1] <= counts[0]).all()
    if masked and family != "chroma":  # the pipeline's mask covers exactly the text's positions
        assert got["attention_mask"].sum(1).tolist() == counts[:, 0].tolist()
    assert main(["embed", "--verify", str(out)]) == 0
    ds = sdclip.dataset.open(out)
    assert len(ds) == len(CAPTIONS) and torch.equal(ds.get(4)["prompt_embeds"], got["prompt_embeds"][4])


def test_t5_overflow_is_counted_and_sd3_clip_length_rows(tmp_path, models):
    model = models("sd3")
    long = " ".join(f"word{i}" for i in range(400))
    caps = tmp_path / "caps.txt"
    caps.write_text(f"a red fox\n{long}\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["embed", "--model", str(model), "--captions", str(caps), "--out", str(out), "--preset", "diffusers"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["truncated"] == {"count": 1, "indices": [1]}
    # AUTOMATIC1111 / Forge lay SD3's T5 out at CLIP length: 77·K + 77·K slots
    out2 = tmp_path / "a1111"
    assert main(["embed", "--model", str(model), "--captions", str(caps), "--out", str(out2), "--max-rows", "2"]) == 0
    assert read_all(out2)["prompt_embeds"].shape[1] == 2 * 154
