"""The compact T5 encoder against transformers' T5EncoderModel: every layer, fp32 / bf16 / fp16, masks."""

from __future__ import annotations

import pytest
import torch

from sdclip.encoder.loading.t5 import load_t5
from sdclip.encoder.t5 import T5Config, T5ConfigError, relative_buckets
from tiny_t5 import tiny_t5, write_layout


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _reference_layers(model, ids, mask=None) -> list[torch.Tensor]:
    """transformers' per-block outputs (forward hooks) and last hidden state."""
    outs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o[0].detach().clone())) for b in model.encoder.block]
    try:
        with torch.no_grad():
            last = model(ids, attention_mask=mask).last_hidden_state
    finally:
        for h in hooks:
            h.remove()
    return outs + [last]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    model = tiny_t5(seed=1)
    path = write_layout("folder", model, tmp_path_factory.mktemp("t5enc"))
    return model, path


@pytest.mark.parametrize("n", [1, 7, 77, 300])
def test_every_layer_fp32(pair, onednn, n):
    model, path = pair
    ours = load_t5(path)
    ids = torch.randint(0, 640, (2, n), generator=torch.Generator().manual_seed(n))
    ref = _reference_layers(model, ids)
    mine = ours.hidden_states(ids)[1:]
    assert len(mine) == len(ref)
    for layer, (a, b) in enumerate(zip(mine, ref)):
        assert _rel(a, b) <= 1e-5, (layer, _rel(a, b))
    assert _rel(ours(ids), ref[-1]) <= 1e-5


def test_attention_mask(pair):
    model, path = pair
    ours = load_t5(path)
    ids = torch.randint(0, 640, (3, 20), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 12:] = 0
    mask[2, 3:] = 0
    ref = _reference_layers(model, ids, mask)[-1]
    assert _rel(ours(ids, mask), ref) <= 1e-5


def test_bf16_as_transformers(pair):
    model, path = pair
    ref_model = tiny_t5(seed=1).to(torch.bfloat16)
    ours = load_t5(path, dtype=torch.bfloat16)
    ids = torch.randint(0, 640, (2, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = ref_model(ids).last_hidden_state
        exact = model(ids).last_hidden_state
    out = ours(ids)
    assert out.dtype == torch.bfloat16
    # as close to transformers' bf16 as transformers' bf16 is to fp32
    # random tiny weights amplify bf16 rounding (≈ 4% from fp32 here): ours must be no further off than
    # transformers' bf16, and nearer to it than either is to fp32
    assert _rel(out, exact) <= 1.25 * _rel(ref, exact) and _rel(out, ref) <= _rel(ref, exact)


def test_fp16_keeps_wo_fp32_and_clamps(pair):
    from transformers import T5EncoderModel

    model, path = pair
    ref_model = T5EncoderModel.from_pretrained(str(path), dtype=torch.float16)
    assert ref_model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    ours = load_t5(path, dtype=torch.float16)
    assert ours.blocks[0].wo.weight.dtype == torch.float32
    ids = torch.randint(0, 640, (2, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = ref_model(ids).last_hidden_state
    out = ours(ids)
    assert out.dtype == ref.dtype == torch.float16
    assert _rel(out, ref) <= 5e-3


def test_fp16_overflow_is_clamped_like_transformers(tmp_path):
    """Huge FFN weights overflow fp16 inside the first block: both clamp and stay finite."""
    model = tiny_t5(seed=2)
    with torch.no_grad():
        model.encoder.block[0].layer[0].SelfAttention.o.weight.mul_(30000.0)
    path = write_layout("folder", model, tmp_path)
    ref_model = tiny_t5(seed=2)
    with torch.no_grad():
        ref_model.encoder.block[0].layer[0].SelfAttention.o.weight.mul_(30000.0)
    ref_model = ref_model.half()
    ours = load_t5(path, dtype=torch.float16, fp16_wo_fp32=False)
    ids = torch.randint(0, 640, (1, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref_states = _reference_layers(ref_model, ids)
    mine = ours.hidden_states(ids)[1:]
    assert torch.isfinite(mine[0]).all() and torch.isfinite(ref_states[0]).all()
    assert float(ref_states[0].abs().max()) >= 6e4  # the clamp was reached
    assert _rel(mine[-1], ref_states[-1]) <= 1e-2


def test_relative_buckets_equal_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    for n, buckets, dist in ((700, 32, 128), (50, 16, 20)):
        pos = torch.arange(n)
        want = T5Attention._relative_position_bucket(pos[None, :] - pos[:, None], True, buckets, dist)
        assert torch.equal(relative_buckets(n, buckets, dist), want)


def test_config_from_transformers_json():
    from tiny_t5 import tiny_config

    cfg = T5Config.from_dict(tiny_config().to_dict())
    assert (cfg.d_model, cfg.num_heads, cfg.gated, cfg.activation) == (64, 4, True, "gelu_new")
    assert T5Config.from_dict({"feed_forward_proj": "relu"}).activation == "relu"
    for bad, match in (({"d_model": 0}, "d_model"), ({"num_heads": "8"}, "num_heads"),
                       ({"feed_forward_proj": "gated-tanh"}, "unsupported"), ({"feed_forward_proj": "x-y-z"}, "ACT"),
                       ({"model_type": "bert"}, "not T5"), ({"layer_norm_epsilon": 2}, "epsilon")):
        with pytest.raises(T5ConfigError, match=match):
            T5Config.from_dict(bad)


def test_bad_ids(pair):
    ours = load_t5(pair[1])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours(torch.tensor([[1, 640]]))
    with pytest.raises(ValueError, match="integer tensor"):
        ours(torch.tensor([1.0, 2.0]))
