"""T5 weights from every layout users have: folders, shards, SD3 single files, ComfyUI fp16 / fp8 files."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from sdclip.encoder.loading.checkpoint import CheckpointError
from sdclip.encoder.loading.t5 import find_t5_prefix, load_t5
from sdclip.encoder.t5 import STORAGE_ONLY
from tiny_t5 import LAYOUTS, SINGLE_PREFIX, state, tiny_t5, to_fp8, write_layout


def _rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def model():
    return tiny_t5(seed=3)


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("t5files")
    return {layout: write_layout(layout, model, root / layout) for layout in LAYOUTS}


IDS = torch.randint(0, 640, (2, 33), generator=torch.Generator().manual_seed(0))


def _reference(model, transform) -> torch.Tensor:
    """transformers' output with every weight passed through `transform` (what a file stores, widened)."""
    ref = tiny_t5(seed=3)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(transform(p))
        return ref(IDS).last_hidden_state


@pytest.mark.parametrize("layout", ["folder", "sharded", "single"])
def test_full_precision_layouts(model, files, layout):
    with torch.no_grad():
        want = model(IDS).last_hidden_state
    assert _rel(load_t5(files[layout])(IDS), want) <= 1e-5


def test_pipeline_root_finds_text_encoder(files, model):
    root = files["folder"].parent  # holds text_encoder_3/
    with torch.no_grad():
        assert _rel(load_t5(root)(IDS), model(IDS).last_hidden_state) <= 1e-5


def test_fp16_file(model, files):
    want = _reference(model, lambda p: p.half().float())
    assert _rel(load_t5(files["fp16"])(IDS), want) <= 1e-5


def test_fp8_file_equals_fp16_weights_cast(model, files):
    enc = load_t5(files["fp8"])
    assert enc.blocks[0].q.weight.dtype == torch.float8_e4m3fn and enc.embed.dtype == torch.float8_e4m3fn
    assert enc.final_norm.dtype == torch.float32
    want = _reference(model, lambda p: (to_fp8(p) if p.dim() == 2 else p.half()).float())
    assert _rel(enc(IDS), want) <= 1e-5
    wide = load_t5(files["fp8"], keep_fp8=False)
    assert wide.blocks[0].q.weight.dtype == torch.float32
    assert _rel(wide(IDS), want) <= 1e-5


def test_fp8_bf16_compute(files):
    enc = load_t5(files["fp8"], dtype=torch.bfloat16)
    wide = load_t5(files["fp8"], dtype=torch.bfloat16, keep_fp8=False)
    assert enc(IDS).dtype == torch.bfloat16
    assert torch.equal(enc(IDS), wide(IDS))


def test_scaled_fp8(model, files):
    sd = state(model)
    enc = load_t5(files["fp8_scaled"])
    assert enc.blocks[1].wo.scale is not None and enc.blocks[1].wo.weight.dtype == torch.float8_e4m3fn

    def deq(k):
        v = sd[k]
        s = v.abs().max().float() / 448.0
        return to_fp8(v.float() / s).float() * s

    ref = tiny_t5(seed=3)
    with torch.no_grad():
        for k, p in ref.named_parameters():
            lin = ("SelfAttention" in k or "DenseReluDense" in k) and "relative" not in k
            p.copy_(deq(k) if lin else sd[k].half().float())
        want = ref(IDS).last_hidden_state
    assert _rel(enc(IDS), want) <= 1e-5
    assert _rel(load_t5(files["fp8_scaled"], keep_fp8=False)(IDS), want) <= 1e-5


def test_single_file_reads_only_text_encoder(files):
    # the NaN transformer tensor in the file would fail the finiteness check if it were read
    from sdclip.encoder.loading.checkpoint import open_tensor_file

    assert find_t5_prefix(open_tensor_file(files["single"])) == SINGLE_PREFIX
    load_t5(files["single"])


def test_transformer_only_file_names_the_missing_files(tmp_path):
    path = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(CheckpointError, match="t5xxl_fp16.safetensors"):
        load_t5(path)


def test_corrupt_and_hostile_files(tmp_path, files, model):
    trunc = tmp_path / "t5xxl_trunc.safetensors"
    trunc.write_bytes(files["fp16"].read_bytes()[:2000])
    with pytest.raises(CheckpointError):
        load_t5(trunc)

    nan = state(model)
    nan["encoder.block.1.layer.0.SelfAttention.k.weight"][0, 0] = float("nan")
    save_file(nan, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError, match="NaN"):
        load_t5(tmp_path / "nan.safetensors")

    nan8 = {k: to_fp8(v) if v.dim() == 2 else v for k, v in state(model).items()}
    nan8["encoder.block.0.layer.1.DenseReluDense.wo.weight"].view(torch.uint8)[0, 0] = 0x7F
    save_file(nan8, str(tmp_path / "nan8.safetensors"))
    with pytest.raises(CheckpointError, match="NaN"):
        load_t5(tmp_path / "nan8.safetensors")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "t5.bin"
    evil.write_bytes(pickle.dumps({"shared.weight": Evil()}))
    with pytest.raises(CheckpointError):
        load_t5(evil)

    quant = {**state(model), "encoder.block.0.layer.0.SelfAttention.q.weight_scale": torch.ones(1)}
    save_file(quant, str(tmp_path / "quant.safetensors"))
    with pytest.raises(CheckpointError, match="quantised format"):
        load_t5(tmp_path / "quant.safetensors")

    extra = {**state(model), "encoder.block.0.layer.2.layer_norm.weight": torch.ones(64)}
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected T5 encoder tensor"):
        load_t5(tmp_path / "extra.safetensors")

    wrong = state(model)
    wrong["encoder.block.2.layer.1.DenseReluDense.wo.weight"] = torch.zeros(64, 95)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError, match="shape"):
        load_t5(tmp_path / "wrong.safetensors")


def test_config_json_must_agree(files, tmp_path):
    import json
    import shutil

    folder = tmp_path / "te"
    shutil.copytree(files["folder"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_heads"] = 8
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="num_heads"):
        load_t5(folder)
    with pytest.raises(ValueError, match="compute float dtype"):
        load_t5(files["fp16"], dtype=torch.float8_e4m3fn)
    assert torch.float8_e4m3fn in STORAGE_ONLY
