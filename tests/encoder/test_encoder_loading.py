"""Every real weight layout loads and equals transformers; hostile or broken input is a CheckpointError."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import (
    FAMILY_LAYOUTS,
    reference,
    sample_ids,
    save_state_dict,
    single_file_state_dict,
    tiny_family,
    write_layout,
)

from sdclip.encoder import CheckpointError, LayerSelect, load_text_encoders
from sdclip.encoder.loading import checkpoint as checkpoint_mod

TOL = 1e-5
CASES = [(f, lay) for f, lays in FAMILY_LAYOUTS.items() for lay in lays]


@pytest.fixture(scope="module")
def families():
    return {f: tiny_family(f, seed=10 * i) for i, f in enumerate(FAMILY_LAYOUTS)}


@pytest.fixture(scope="module")
def written(families, tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {(f, lay): write_layout(lay, families[f], root / f / lay.replace(".", "_")) for f, lay in CASES}


def _family_arg(family, layout):
    return family if layout == "openclip" else None  # a bare tiny open_clip dict cannot say its family


@pytest.mark.parametrize("family, layout", CASES)
def test_layout_equals_transformers(families, written, family, layout):
    fam = families[family]
    loaded = load_text_encoders(written[(family, layout)], family=_family_arg(family, layout))
    assert loaded.family == family
    assert len(loaded.encoders) == len(fam.models)
    for enc, model in zip(loaded.encoders, fam.models):
        ids = sample_ids(3, enc.config.positions, seed=1)
        ref = reference(model, ids)
        hs = enc.hidden_states(ids)
        for i in range(enc.config.layers + 1):
            assert (hs[i] - ref["hidden_states"][i]).abs().max() <= TOL, f"layer {i}"
        if enc.config.layers == enc.config.depth:
            out = enc(ids, pooled=True)
            assert (out.hidden - ref["last"]).abs().max() <= TOL
            assert (out.pooled - ref["pooled"]).abs().max() <= TOL
        else:  # diffusers' SD2: the last block is not stored; the penultimate + LN is what SD2 uses
            out = enc(ids, LayerSelect.a1111(2))
            want = model.final_layer_norm(ref["hidden_states"][-2])
            assert (out.hidden - want).abs().max() <= TOL


def test_sd2_diffusers_keeps_depth_and_refuses_unstored_layers(families, written):
    enc = load_text_encoders(written[("sd2", "diffusers")]).encoders[0]
    assert (enc.config.depth, enc.config.layers) == (5, 4)
    ids = sample_ids(1)
    with pytest.raises(ValueError, match="not stored"):
        enc(ids, LayerSelect())
    with pytest.raises(ValueError, match="needs all"):
        enc(ids, LayerSelect(1), pooled=True)
    ref = reference(families["sd2"].models[0], ids)
    # diffusers' own convention on its 23-layer folder: hidden_states[-1] of the stored layers
    got = enc(ids, LayerSelect(enc.config.depth - enc.config.layers)).hidden
    assert (got - families["sd2"].models[0].final_layer_norm(ref["hidden_states"][-2])).abs().max() <= TOL


def test_fingerprint_is_layout_independent_and_weight_dependent(written, tmp_path):
    prints = {lay: load_text_encoders(written[("sd1", lay)], family=_family_arg("sd1", lay)).fingerprint
              for lay in FAMILY_LAYOUTS["sd1"]}
    assert len(set(prints.values())) == 1
    other = save_state_dict(single_file_state_dict(tiny_family("sd1", seed=99)), tmp_path / "o.safetensors")
    assert load_text_encoders(other).fingerprint != prints["hf"]
    assert load_text_encoders(written[("sd1", "hf")], dtype=torch.float16).fingerprint == prints["hf"]


def test_tokenizer_dirs_and_real_tokenizer_files(written):
    from transformers import CLIPTokenizer

    loaded = load_text_encoders(written[("sdxl", "diffusers")])
    assert [d.name for d in loaded.tokenizer_dirs] == ["tokenizer", "tokenizer_2"]
    tok = CLIPTokenizer.from_pretrained(loaded.tokenizer_dirs[0])
    # the canonical CLIP example ("a"=320, "photo"=1125, "of"=539, "cat"=2368)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert load_text_encoders(written[("sd1", "single.safetensors")]).tokenizer_dirs == (None,)
    assert load_text_encoders(written[("sd1", "hf")]).tokenizer_dirs == (written[("sd1", "hf")],)


def test_written_folder_is_what_transformers_loads(families, written):
    """Our writer's 4.x spelling is a real layout: transformers reads it back to the same model."""
    from transformers import CLIPTextModel

    model = CLIPTextModel.from_pretrained(written[("sd1", "diffusers")] / "text_encoder").eval()
    ids = sample_ids(2)
    assert torch.equal(reference(model, ids)["last"], reference(families["sd1"].models[0], ids)["last"])


def test_single_file_reads_only_text_encoder_tensors(written, monkeypatch):
    read: list[str] = []
    real_get = checkpoint_mod.SafetensorsFile.get
    monkeypatch.setattr(checkpoint_mod.SafetensorsFile, "get", lambda self, k: read.append(k) or real_get(self, k))
    load_text_encoders(written[("sdxl", "single.safetensors")])
    assert read and all(k.startswith("conditioner.embedders.") for k in read)
    # the .ckpt's fake UNet tensors are NaN: loading succeeds only because they are never read
    load_text_encoders(written[("sdxl", "single.ckpt")])


# ---- family detection ---------------------------------------------------------------------------

def test_family_contradiction_is_an_error(written):
    with pytest.raises(CheckpointError, match="keys say 'sd1'"):
        load_text_encoders(written[("sd1", "single.safetensors")], family="sd2")
    with pytest.raises(CheckpointError, match="sdxl"):
        load_text_encoders(written[("sdxl", "diffusers")], family="sd1")
    with pytest.raises(CheckpointError, match="unknown family"):
        load_text_encoders(written[("sd1", "hf")], family="sd9")


def test_bare_open_clip_needs_family_unless_shapes_say(written):
    with pytest.raises(CheckpointError, match="family="):
        load_text_encoders(written[("sd1", "openclip")])
    with pytest.raises(CheckpointError, match="needs 2 encoders"):
        load_text_encoders(written[("sd1", "openclip")], family="sdxl")
    assert load_text_encoders(written[("longclip", "longclip")]).family == "longclip"  # 248 positions say it


def test_unknown_layout_lists_what_was_found(tmp_path):
    path = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.out.0.weight": torch.zeros(2), "first_stage_model.x": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=r"model.diffusion_model.\* ×1"):
        load_text_encoders(path)


# ---- hostile and broken input --------------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_code_executing_pickle_is_refused(tmp_path):
    evil = _Evil()
    evil.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": evil}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_text_encoders(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_corrupt_files(written, tmp_path):
    src = written[("sd1", "single.safetensors")].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(src[: len(src) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + bytes(64))
    ck = written[("sd1", "single.ckpt")].read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(ck[: len(ck) // 2])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    for name in ("cut.safetensors", "junk.safetensors", "cut.ckpt", "empty.ckpt"):
        with pytest.raises(CheckpointError):
            load_text_encoders(tmp_path / name)
    with pytest.raises(CheckpointError, match="no such file"):
        load_text_encoders(tmp_path / "missing.safetensors")


def _broken(families, tmp_path, edit):
    sd = single_file_state_dict(families["sd1"])
    edit(sd)
    return save_state_dict(sd, tmp_path / "broken.safetensors")


P = "cond_stage_model.transformer.text_model."


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.pop(P + "encoder.layers.1.mlp.fc2.bias"), "missing tensor"),
    (lambda sd: sd.pop(P + "final_layer_norm.weight"), "missing tensor"),
    (lambda sd: [sd.pop(k) for k in list(sd) if ".layers.2." in k], r"layers \[2\] missing"),
    (lambda sd: sd.__setitem__(P + "encoder.layers.0.self_attn.k_proj.weight", torch.zeros(128, 64)), "has shape"),
    (lambda sd: sd.__setitem__(P + "embeddings.position_embedding.weight", torch.zeros(76, 128)), "has shape"),
    (lambda sd: sd[P + "encoder.layers.3.mlp.fc1.weight"].__setitem__((0, 0), float("nan")), "NaN or infinite"),
    (lambda sd: sd[P + "final_layer_norm.bias"].__setitem__(0, float("inf")), "NaN or infinite"),
    (lambda sd: sd.__setitem__(P + "encoder.layers.0.self_attn.extra.weight", torch.zeros(2)), "unexpected tensor"),
])
def test_broken_weights_are_refused(families, tmp_path, edit, match):
    with pytest.raises(CheckpointError, match=match):
        load_text_encoders(_broken(families, tmp_path, edit))


def test_sdxl_without_projection_is_refused(families, tmp_path):
    sd = single_file_state_dict(families["sdxl"])
    del sd["conditioner.embedders.1.model.text_projection"]
    with pytest.raises(CheckpointError, match="projection"):
        load_text_encoders(save_state_dict(sd, tmp_path / "x.safetensors"))


def test_hf_folder_config_must_match_weights(families, written, tmp_path):
    folder = shutil.copytree(written[("sd1", "hf")], tmp_path / "hf")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"] = 256
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="disagrees"):
        load_text_encoders(folder)


def test_hf5_spelling_without_text_model_prefix(families, tmp_path):
    """transformers 5 saves CLIPTextModel without `text_model.`: read that too."""
    model = families["sd1"].models[0]
    path = tmp_path / "hf5.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    enc = load_text_encoders(path, family="sd1").encoders[0]
    ids = sample_ids(2)
    assert (enc(ids).hidden - reference(model, ids)["last"]).abs().max() <= TOL


# ---- hub ids -------------------------------------------------------------------------------------

def test_hub_id_offline_and_not_cached_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="local path") as err:
        load_text_encoders("someone/not-a-cached-model")
    assert "offline" in str(err.value)
    with pytest.raises(CheckpointError, match="local path"):
        load_text_encoders("someone/repo/sd_xl_base_1.0.safetensors")


def test_hub_id_offline_found_in_cache(families, tmp_path, monkeypatch):
    """A pipeline in the HF cache layout (models--owner--name/refs/main → snapshots/<commit>) loads offline."""
    cache = tmp_path / "cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--tiny-sd"
    write_layout("diffusers", families["sd1"], repo / "snapshots" / commit)
    snap = repo / "snapshots" / commit
    for p in (snap / "pipeline").iterdir():
        shutil.move(str(p), snap / p.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    loaded = load_text_encoders("someone/tiny-sd")
    assert loaded.family == "sd1" and loaded.source == "someone/tiny-sd"
    assert loaded.tokenizer_dirs[0].name == "tokenizer"
