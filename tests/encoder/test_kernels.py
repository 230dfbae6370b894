"""The CPU kernel choices of sdclip.encoder.kernels: each path equals the stock one to rounding, and falls
back where it must (autograd, other devices, a switch)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sdclip.encoder import kernels
from sdclip.encoder.model import attention_bias


def _qkv(r: int, h: int, n: int, d: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(r, h, n, d, generator=g).to(dtype) for _ in range(3)]


def test_linear_equals_f_linear(onednn: bool) -> None:
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(3, 77, 96, generator=g), torch.randn(64, 96, generator=g), torch.randn(64, generator=g)
    want = F.linear(x, w, b)
    got = kernels.linear(x, w, b)
    assert got.shape == want.shape
    if onednn:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kernels.linear(x, w, None), F.linear(x, w), rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(got, want)  # the stock path is F.linear itself


@pytest.mark.parametrize("act", ["gelu", "swish"])
def test_linear_with_act_equals_act_of_linear(onednn: bool, act: str) -> None:
    """The GEMM with its activation fused (OpenCLIP's exact GELU; swish for OpenAI's quick_gelu) equals the
    two steps, to fp32 rounding."""
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(2, 77, 64, generator=g), torch.randn(256, 64, generator=g) / 8, torch.randn(256, generator=g)
    want = {"gelu": F.gelu, "swish": F.silu}[act](F.linear(x, w, b))
    torch.testing.assert_close(kernels.linear(x, w, b, act), want, rtol=1e-5, atol=1e-5)
    assert kernels.fuses_activation(x, w, b) == onednn


def test_linear_with_act_rejects_an_unknown_activation() -> None:
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        kernels.linear(torch.ones(2, 4), torch.ones(3, 4), None, "relu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_packed_weight_gives_the_same_result(onednn: bool, dtype: torch.dtype) -> None:
    """oneDNN's packed copy of a weight gives the same product at any row count (to rounding: the kernel
    may block the sum differently); where oneDNN does not run (or has no kernel for the dtype on this CPU:
    bf16 without AVX-512) there is nothing to pack."""
    g = torch.Generator().manual_seed(4)
    w, b = torch.randn(96, 64, generator=g).to(dtype), torch.randn(96, generator=g).to(dtype)
    packed = kernels.pack(w)
    assert (packed is not None) == (onednn and dtype in kernels._ONEDNN_DTYPES)
    for rows in (1, 77, kernels.PACK_ROWS + 5):
        x = torch.randn(rows, 64, generator=g).to(dtype)
        got, want = kernels.linear(x, w, b, "gelu", packed), kernels.linear(x, w, b, "gelu")
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def test_linear_falls_back_for_autograd(monkeypatch) -> None:
    """oneDNN's op has no backward: a tensor that needs a gradient goes through F.linear."""
    monkeypatch.setattr(kernels, "ONEDNN", kernels.ONEDNN_AVAILABLE)
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(5, 8)
    kernels.linear(x, w, None).sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(4, 8))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("n", [77, 248, 300])
def test_attention_equals_sdpa(masked: bool, n: int) -> None:
    """The explicit CPU attention (≤ 256 positions) equals SDPA, causal and with compel's key mask;
    above 256 positions SDPA itself runs."""
    q, k, v = _qkv(2, 3, n, 16, torch.float32)
    if masked:
        mask = torch.ones(2, n, dtype=torch.long)
        mask[0, 3:9] = 0
        bias = attention_bias(mask, torch.float32)
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    else:
        bias = None
        want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    got = kernels.attention(q, k, v, bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bf16_attention_is_closer_to_fp32_than_tolerance() -> None:
    """bf16 scores go through an fp32 softmax: the result stays within bf16 rounding of the fp32 one."""
    q, k, v = _qkv(2, 4, 77, 64, torch.float32, seed=2)
    ref = kernels.attention(q, k, v, None)
    got = kernels.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), None).float()
    cos = F.cosine_similarity(got.flatten(1), ref.flatten(1), dim=1)
    assert cos.min() > 0.9995


def test_switch_off_by_environment() -> None:
    code = "from sdclip.encoder import kernels; print(kernels.ONEDNN)"
    env = dict(os.environ, SDCLIP_ONEDNN="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_runs_in_every_dtype_on_this_cpu(onednn: bool, dtype: torch.dtype) -> None:
    """A dtype oneDNN has no kernel for here (bf16 on CPUs without AVX-512: "could not create a primitive
    descriptor") goes to F.linear instead of failing: the probe is per dtype."""
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(3, 32, generator=g).to(dtype), torch.randn(16, 32, generator=g).to(dtype)
    got = kernels.linear(x, w, None, "swish", kernels.pack(w))
    torch.testing.assert_close(got.float(), F.silu(F.linear(x, w)).float(), rtol=2e-2, atol=2e-2)



class _Products(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the dtype of every matrix product torch runs (what picks the CPU kernel that does it)."""

    OPS = ("mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product", "_linear_pointwise", "linear")

    def __init__(self):
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func.__name__.split(".")[0] in self.OPS or func.__name__.startswith("_scaled_dot_product"):
            self.dtypes.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


def _product_dtypes(run) -> set[torch.dtype]:  # noqa: ANN001
    with torch.no_grad(), _Products() as seen:
        run()
    return seen.dtypes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_products_run_in_fp32_where_this_cpu_has_no_half_kernel(tmp_path, dtype: torch.dtype) -> None:
    """A half dtype without a fast CPU kernel here (bf16 / fp16 without AVX-512 or AMX: torch's scalar
    fallback, ≈ 20× slower than fp32) has every product of a CLIP and a T5 pass — linears, attention below
    and above 256 positions — computed in fp32 and rounded back; with a native kernel they stay in the half
    dtype. T5's result equals transformers' half-precision pass to its rounding, CLIP's the fp32 pass."""
    from tiny_models import sample_ids, save_state_dict, single_file_state_dict, tiny_family
    from tiny_t5 import tiny_t5, write_layout

    from sdclip.encoder import LayerSelect, load_text_encoders
    from sdclip.encoder.loading.t5 import load_t5

    if dtype == torch.bfloat16:
        assert (dtype in kernels.WIDENED) == (dtype not in kernels._ONEDNN_DTYPES)
    expected = {torch.float32} if dtype in kernels.WIDENED else {dtype}
    exact = tiny_t5(seed=3)
    t5 = load_t5(write_layout("folder", exact, tmp_path), dtype=dtype, fp16_wo_fp32=False)
    ref = tiny_t5(seed=3).to(dtype)
    for n in (20, 300):  # explicit attention, then SDPA
        ids = torch.randint(0, 640, (2, n), generator=torch.Generator().manual_seed(n))
        assert _product_dtypes(lambda: t5(ids)) == expected
        with torch.no_grad():
            got, want, fp32 = (f(ids).float() for f in (t5, lambda i: ref(i).last_hidden_state, lambda i: exact(i).last_hidden_state))
        # tiny random weights amplify half rounding: nearer transformers' half pass than that is to fp32
        assert float((got - want).norm()) < float((want - fp32).norm())
    path = save_state_dict(single_file_state_dict(tiny_family("sd1")), tmp_path / "m.safetensors")
    full, half = load_text_encoders(path).encoders[0], load_text_encoders(path, dtype=dtype).encoders[0]
    ids = sample_ids(2)
    assert _product_dtypes(lambda: half(ids, LayerSelect(), pooled=True)) == expected
    with torch.no_grad():
        cos = F.cosine_similarity(half(ids, LayerSelect()).hidden.float().flatten(1), full(ids, LayerSelect()).hidden.flatten(1))
    assert cos.min() >= 0.999


def test_fp32_products_of_many_rows_go_to_mkl(monkeypatch) -> None:
    """fp32 products of ≥ ONEDNN_MAX_ROWS rows run through F.linear (MKL, faster there); fewer rows and bf16
    through oneDNN. Recorded with a dispatch mode: the op each call reaches."""
    if not kernels.ONEDNN_AVAILABLE:
        pytest.skip("no oneDNN fp32 linear on this machine")
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            self.seen.append(func.__name__)
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(kernels, "ONEDNN", True)
    w, b = torch.randn(16, 24), torch.randn(16)
    for rows, onednn in ((kernels.ONEDNN_MAX_ROWS - 1, True), (kernels.ONEDNN_MAX_ROWS, False)):
        x = torch.randn(rows, 24)
        with Ops() as ops:
            y = kernels.linear(x, w, b)
        assert any("linear_pointwise" in name for name in ops.seen) == onednn, (rows, ops.seen)
        torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-5)
