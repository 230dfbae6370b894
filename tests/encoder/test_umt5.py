"""umT5 (UMT5EncoderModel: a relative-attention table in every block) through sdclip's T5 encoder and loader,
from a transformers folder and ComfyUI's umt5 files (fp16, scaled fp8); scaled-fp8 files missing scales."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdclip.encoder.loading.checkpoint import CheckpointError
from sdclip.encoder.loading.t5 import load_t5
from tiny_t5_families import comfy_files, tiny_umt5

IDS = torch.tensor([[5, 17, 42, 9, 1, 0, 0, 0], [33, 8, 120, 77, 64, 21, 3, 1]])
MASK = (torch.arange(8)[None, :] < torch.tensor([5, 8])[:, None]).long()


@pytest.fixture(scope="module")
def model():
    return tiny_umt5(seed=4)


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    return comfy_files(model, tmp_path_factory.mktemp("umt5"))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("masked", [False, True])
def test_folder_equals_transformers(model, tmp_path, masked):
    # the old loader read block 0's table for every block: a umT5 folder was refused by its config, and a
    # umT5 file loaded silently wrong
    model.save_pretrained(str(tmp_path / "text_encoder"))
    enc = load_t5(tmp_path / "text_encoder")
    assert enc.config.per_layer_bias
    mask = MASK if masked else None
    with torch.no_grad():
        want = model(IDS, attention_mask=mask).last_hidden_state
    assert _rel(enc(IDS, attention_mask=mask), want) <= 1e-5


def test_comfy_fp16_file(model, files):
    enc = load_t5(files["fp16"])
    ref = tiny_umt5(seed=4)
    with torch.no_grad():
        for k, p in ref.named_parameters():
            p.copy_(files["state"][k].half().float())
        want = ref(IDS, attention_mask=MASK).last_hidden_state
    assert enc.config.per_layer_bias
    assert _rel(enc(IDS, attention_mask=MASK), want) <= 1e-5


def test_comfy_scaled_fp8_file(files):
    enc = load_t5(files["fp8_scaled"])
    assert enc.blocks[1].q.scale is not None and enc.blocks[1].q.weight.dtype == torch.float8_e4m3fn
    ref = tiny_umt5(seed=4)
    with torch.no_grad():
        for k, p in ref.named_parameters():
            v = files["state"][k]
            if ("SelfAttention" in k or "DenseReluDense" in k) and "relative" not in k:
                s = v.abs().max().float() / 448.0
                p.copy_((v.float() / s).to(torch.float8_e4m3fn).float() * s)
            else:
                p.copy_(v.half().float())
        want = ref(IDS, attention_mask=MASK).last_hidden_state
    assert _rel(enc(IDS, attention_mask=MASK), want) <= 1e-5


def test_scaled_fp8_missing_a_scale_is_refused(files, tmp_path):
    sd = load_file(str(files["fp8_scaled"]))
    del sd["encoder.block.1.layer.1.DenseReluDense.wo.scale_weight"]
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as e:
        load_t5(path)
    msg = str(e.value)
    assert "\n" not in msg and "encoder.block.1.layer.1.DenseReluDense.wo.scale_weight" in msg and "scaled-fp8" in msg


def test_scaled_fp8_without_any_scales_is_refused(files, tmp_path):
    # named scaled, fp8 weights, no scales and no marker: read as plain fp8 it would be off by each scale
    sd = {k: v for k, v in load_file(str(files["fp8_scaled"])).items() if not k.endswith("scale_weight") and k != "scaled_fp8"}
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="no scale_weight tensors") as e:
        load_t5(path)
    assert "\n" not in str(e.value)


def test_config_disagreeing_with_tensors(model, tmp_path):
    model.save_pretrained(str(tmp_path / "te"))
    import json

    cfg = json.loads((tmp_path / "te" / "config.json").read_text())
    cfg["model_type"] = "t5"
    (tmp_path / "te" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="umT5"):
        load_t5(tmp_path / "te")
