"""`sdclip embed --format kohya|musubi|simpletuner|ai-toolkit`: each trainer's own files, read back as that
trainer's loader reads them (transliterated below from the commits named in sdclip.jobs.formats), equal to
sdclip's own shards of the same job (which tests/jobs/test_embed_families.py checks against the Conditioner).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sdclip.cli.main import main
from test_embed_families import build
from embed_rows import read_rows
from tiny_models import tiny_family, write_layout

CAPTIONS = {"a.png": "a red fox", "b.png": "a (blue:1.3) cat in a misty forest", "sub/c.png": "a red fox",
            "d.png": "golden hour"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("format-models")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = (write_layout("single.safetensors", tiny_family("sdxl"), root / "sdxl")
                             if family == "sdxl" else build(root, family))
        return cache[family]

    return get


def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    for rel, caption in CAPTIONS.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"\x89PNG not decoded")
        (folder / rel).with_suffix(".txt").write_text(caption)
    return folder


def run(model: Path, folder: Path, out: Path, fmt: str, *extra: str) -> dict[str, torch.Tensor]:
    """Embed with --format fmt; returns sdclip's own shards of the same job (by image, sorted order)."""
    args = ["embed", "--model", str(model), "--captions", str(folder), "--preset", "diffusers", *extra]
    assert main([*args, "--out", str(out), "--format", fmt]) == 0
    native = out.parent / (out.name + "-native")
    assert main([*args, "--out", str(native)]) == 0
    return read_rows(native)


RELS = sorted(CAPTIONS)  # the image folder's index order


def close(a, b) -> None:  # noqa: ANN001
    torch.testing.assert_close(torch.as_tensor(np.asarray(a)).float(), torch.as_tensor(b).float(), atol=1e-6, rtol=1e-6)


# -- kohya sd-scripts (library/strategy_{sdxl,sd3,flux}.py, is_disk_cached_outputs_expected / load_outputs_npz)

def kohya_expected(npz_path: str, family: str, apply_lg: bool = False, apply_t5: bool = False) -> bool:
    if not os.path.exists(npz_path):
        return False
    npz = np.load(npz_path)
    if family == "sdxl":
        return "hidden_state1" in npz and "hidden_state2" in npz and "pool2" in npz
    if family == "sd3":
        for k in ("lg_out", "lg_pooled"):
            if k not in npz:
                return False
        if "clip_l_attn_mask" not in npz or "clip_g_attn_mask" not in npz or "apply_lg_attn_mask" not in npz:
            return False
        if "t5_out" not in npz or "t5_attn_mask" not in npz or npz["apply_lg_attn_mask"] != apply_lg:
            return False
        return "apply_t5_attn_mask" in npz and npz["apply_t5_attn_mask"] == apply_t5
    for k in ("l_pooled", "t5_out", "txt_ids", "t5_attn_mask", "apply_t5_attn_mask"):
        if k not in npz:
            return False
    return npz["apply_t5_attn_mask"] == apply_t5


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_kohya_sd3_and_flux_npz(tmp_path, models, family):
    folder = images(tmp_path)
    ref = run(models(family), folder, tmp_path / "out", "kohya")
    suffix = {"sd3": "_sd3_te.npz", "flux": "_flux_te.npz"}[family]
    for k, rel in enumerate(RELS):
        path = str(folder / (os.path.splitext(rel)[0] + suffix))
        assert kohya_expected(path, family) and not kohya_expected(path, family, apply_t5=True)
        data = np.load(path)
        e, counts = ref["prompt_embeds"][k], ref["token_counts"][k]
        if family == "sd3":
            lg_out, t5_out, lg_pooled = data["lg_out"], data["t5_out"], data["lg_pooled"]
            assert lg_out.shape == (77, 128 + 64 + 0) or lg_out.shape[0] == 77
            close(lg_out, e[:77, : lg_out.shape[1]])
            assert not e[:77, lg_out.shape[1]:].any()  # sdclip's zero padding to T5's width is not in lg_out
            close(t5_out, e[77:])
            close(lg_pooled, ref["pooled_prompt_embeds"][k])
            assert data["clip_l_attn_mask"].dtype == np.int64 and data["clip_l_attn_mask"].sum() == counts[0]
            assert data["t5_attn_mask"].shape == (256,) and data["t5_attn_mask"].sum() == counts[2]
        else:
            close(data["l_pooled"], ref["pooled_prompt_embeds"][k])
            close(data["t5_out"], e)
            assert data["txt_ids"].shape == (512, 3) and data["txt_ids"].dtype == np.float32 and not data["txt_ids"].any()
            assert data["t5_attn_mask"].dtype == np.int64 and data["t5_attn_mask"][: int(counts[1])].all()
            assert data["t5_attn_mask"].sum() == counts[1]
    assert main(["embed", "--verify", str(tmp_path / "out")]) == 0


def test_kohya_bf16_is_stored_as_float32(tmp_path, models):
    folder = images(tmp_path)
    run(models("flux"), folder, tmp_path / "out", "kohya", "--dtype", "bf16")
    data = np.load(folder / "a_flux_te.npz")
    assert data["t5_out"].dtype == np.float32 and data["l_pooled"].dtype == np.float32


@pytest.mark.parametrize("preset, rows, said", [
    ("kohya", "4", ("150 or 225", "SD3 and Flux always cache 77 CLIP slots", "--max-rows 1")),
    ("a1111", "4", ("150 or 225", "SD3 and Flux always cache 77 CLIP slots", "--max-rows 1")),
    ("a1111", "2", ("152 slots", "only --preset kohya lays out", "--max-rows 1")),
])
def test_kohya_refuses_more_rows_than_sd_scripts_holds_before_any_model_loads(tmp_path, capsys, preset, rows, said):
    """sd-scripts 48d368fa: `--max_token_length` choices [None, 150, 225] (train_util.py), joined as n·75 + 2
    slots (strategy_sdxl.py), and not used by sd3/flux_train_network.py (77 CLIP slots); SDXL's 2 / 3 rows are
    sd-scripts' only under --preset kohya (tests/jobs/test_kohya_long.py). The model is a file of garbage
    bytes: a refusal that came after loading would be a loader error instead."""
    folder = images(tmp_path)
    model = tmp_path / "not-a-model.safetensors"
    model.write_bytes(b"\x00" * 64)
    out = tmp_path / "o"
    code = main(["embed", "--model", str(model), "--captions", str(folder), "--out", str(out), "--format", "kohya",
                 "--preset", preset, "--max-rows", rows])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"sdclip: --format kohya --max-rows {rows}:")
    assert all(words in err for words in said), err
    assert not out.exists() and not list(folder.rglob("*.npz"))


def test_kohya_two_rows_without_family_are_refused_once_the_model_names_sd3(tmp_path, models, capsys):
    """Before loading, 2 rows could be SDXL's 150 (nothing refused); the loaded SD3 model is refused in one
    line, before any file is written."""
    folder = images(tmp_path)
    out = tmp_path / "o"
    code = main(["embed", "--model", str(models("sd3")), "--captions", str(folder), "--out", str(out), "--format",
                 "kohya", "--preset", "kohya", "--max-rows", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("sdclip: --format kohya --max-rows 2:")
    assert "no sd3 caption of 2 rows" in err and not list(folder.rglob("*.npz")) and not out.exists()


# -- musubi-tuner (dataset/cache_io.py save_*; dataset/bucket.py BucketBatchManager.__getitem__ key handling)

def musubi_collate(paths: list[str]) -> dict:
    """bucket.py's text-encoder half of `__getitem__`: varlen keys listed, others stacked, dtype removed."""
    from sdclip.jobs.formats.musubi import dtype_to_str

    dtypes = [dtype_to_str(d) for d in (torch.float32, torch.float16, torch.bfloat16)]

    def remove_dtype_suffix(name: str) -> str:
        for d in dtypes:
            if name.endswith("_" + d):
                return name[: -len(d) - 1]
        return name

    batch: dict = {}
    varlen = set()
    for p in paths:
        sd = load_file(p)
        for key in sd:
            is_varlen = key.startswith("varlen_")
            content = key.replace("varlen_", "") if is_varlen else key
            if not content.endswith("_mask"):
                content = remove_dtype_suffix(content)
            batch.setdefault(content, []).append(sd[key])
            if is_varlen:
                varlen.add(content)
    return {k: (v if k in varlen else torch.stack(v)) for k, v in batch.items()}


@pytest.mark.parametrize("family,arch,full,key", [
    ("flux", "fk", "flux_kontext", "t5_vec"), ("wan", "wan", "wan", "t5"),
    ("qwen-image", "qi", "qwen_image", "vl_embed"), ("z-image", "zi", "z_image", "llm_embed")])
def test_musubi_caches(tmp_path, models, family, arch, full, key):
    from sdclip.conventions.family import FAMILIES

    if family not in FAMILIES:
        pytest.skip(f"{family} has not landed")
    folder = images(tmp_path)
    out = tmp_path / "cache"
    ref = run(models(family), folder, out, "musubi", "--dtype", "bf16")
    paths = [str(out / f"{Path(rel).stem}_{arch}_te.safetensors") for rel in RELS]
    batch = musubi_collate(paths)
    for k, (rel, p) in enumerate(zip(RELS, paths)):
        with safe_open(p, framework="pt") as f:
            meta = f.metadata()
            assert all(name.endswith("_bfloat16") for name in f.keys())
        assert meta == {"architecture": full, "caption1": CAPTIONS[rel], "format_version": "1.0.1"}
        e = ref["prompt_embeds"][k]
        if family == "flux":
            assert torch.equal(batch["t5_vec"][k], e) and torch.equal(batch["clip_l_pooler"][k], ref["pooled_prompt_embeds"][k])
        else:
            n = int(ref["attention_mask"][k].sum()) if "attention_mask" in ref else int(ref["token_counts"][k][0])
            assert torch.equal(batch[key][k], e[:n]) and not e[n:].any()  # padding dropped: zeros in the pipeline
    assert main(["embed", "--verify", str(out)]) == 0


def test_musubi_refuses_sdxl_naming_the_formats_that_can(tmp_path, models, capsys):
    folder = images(tmp_path)
    assert main(["embed", "--model", str(models("sdxl")), "--captions", str(folder), "--out", str(tmp_path / "o"),
                 "--format", "musubi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not sdxl" in err
    for name in ("safetensors", "kohya", "simpletuner", "ai-toolkit"):
        assert name in err


# -- SimpleTuner (caching/text_embeds.py create_hash / load_from_cache; data_backend/local.py torch_load)

@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_simpletuner_pt_by_caption_md5(tmp_path, models, family):
    folder = images(tmp_path)
    out = tmp_path / "cache"
    ref = run(models(family), folder, out, "simpletuner")
    files = sorted(p.name for p in out.glob("*.pt"))
    assert len(files) == len(set(CAPTIONS.values()))  # content-addressed: the repeated caption once
    for k, rel in enumerate(RELS):
        name = hashlib.md5(str(CAPTIONS[rel]).encode()).hexdigest() + f"-{family}"
        item = torch.load(out / (name + ".pt"), map_location="cpu", weights_only=True)
        assert torch.equal(item["prompt_embeds"], ref["prompt_embeds"][k][None])
        assert torch.equal(item["pooled_prompt_embeds"], ref["pooled_prompt_embeds"][k])
        if family == "flux":
            assert set(item) == {"prompt_embeds", "pooled_prompt_embeds", "time_ids", "attention_masks"}
            assert item["time_ids"].shape == (1, 512, 3) and item["attention_masks"].sum() == ref["token_counts"][k][1]
    # a caption file is not needed: a .txt of captions works too
    caps = tmp_path / "caps.txt"
    caps.write_text("a red fox\n")
    assert main(["embed", "--model", str(models(family)), "--captions", str(caps), "--preset", "diffusers",
                 "--out", str(tmp_path / "from-txt"), "--format", "simpletuner"]) == 0


# -- ai-toolkit (dataloader_mixins.py _build_text_embedding_path; prompt_utils.py PromptEmbeds.load)

def ai_toolkit_path(image: Path, caption: str, arch: str) -> Path:
    info = OrderedDict([("caption", caption), ("text_embedding_space_version", arch), ("text_embedding_version", 1)])
    h = base64.urlsafe_b64encode(hashlib.md5(json.dumps(info, sort_keys=True).encode("utf-8")).digest())
    return image.parent / "_t_e_cache" / f"{image.stem}_{h.decode('ascii').replace('=', '')}.safetensors"


def prompt_embeds_load(path: Path) -> dict:
    sd = load_file(str(path), device="cpu")
    text, pooled, mask = [], None, []
    for key in sorted(sd):
        if key == "text_embed" or key.startswith("text_embed_"):
            text.append(sd[key])
        elif key == "pooled_embed":
            pooled = sd[key]
        elif key == "attention_mask" or key.startswith("attention_mask_"):
            mask.append(sd[key])
    return {"text_embeds": text[0], "pooled_embeds": pooled, "attention_mask": mask[0] if mask else None}


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_ai_toolkit_t_e_cache(tmp_path, models, family):
    folder = images(tmp_path)
    ref = run(models(family), folder, tmp_path / "out", "ai-toolkit")
    for k, rel in enumerate(RELS):
        pe = prompt_embeds_load(ai_toolkit_path(folder / rel, CAPTIONS[rel], family))
        assert torch.equal(pe["text_embeds"], ref["prompt_embeds"][k][None])
        assert torch.equal(pe["pooled_embeds"], ref["pooled_prompt_embeds"][k][None])
        assert (pe["attention_mask"] is not None) == (family == "flux")
    # an edited caption is a new file name, as in ai-toolkit
    assert main(["embed", "--verify", str(tmp_path / "out")]) == 0
