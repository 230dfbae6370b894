"""Which kernel runs the encoder's matrix multiplications and attention on the CPU.

Why not plain `F.linear`: torch's CPU build sends an fp32 `F.linear` to MKL's sgemm, which on AMD CPUs
runs a generic code path; oneDNN (bundled in every x86 torch build, and what torch itself uses for bf16)
JIT-compiles for the CPU it finds, and wins on the few-row products a prompt makes. The
arithmetic is the same IEEE fp32 in another summation order, so results differ from `F.linear` by
rounding only (≈ 1e-6 relative).

Which one wins depends on the product's rows M (tokens in the batch). Measured 2026-12-07 on that idle
EPYC with torch 2.13, wall clock, packed oneDNN ÷ MKL: at M = 154 (two CLIP rows) oneDNN is 1.1–1.34×
faster at every encoder shape (ViT-L 768 → 3072, bigG 1280 → 5120, T5-XXL 4096 → 10240 / 10240 → 4096 /
4096 → 4096); from M = 512 on MKL is 1.0–1.19× faster at every one of them (M = 1024, two T5 rows of 512:
0.84–0.92). So fp32 goes to oneDNN below `ONEDNN_MAX_ROWS` rows and to MKL at or above it; bf16 stays on
oneDNN at any M (MKL has no bf16 kernel; where oneDNN has none either, products are widened to fp32).

The oneDNN entry point is `torch.ops.mkldnn._linear_pointwise`, the op torch's own compiler emits for
frozen linear layers. It is internal, so it is probed once (present, and agreeing with `F.linear` on a
small product); anything else falls back to `F.linear`. Set `SDCLIP_ONEDNN=0` to always use `F.linear`
(bit-for-bit comparisons with transformers on the same machine).

Attention: SDPA everywhere except the CPU at ≤ 256 positions, where its fused kernel is 1.7–2.3× slower
than `baddbmm` + softmax + `bmm` (measured at 77 × 77, 12 heads, batch 8: fp32 1.9 vs 1.1 ms, bf16 2.0
vs 0.85 ms, then 0.5 ms with the fp32 softmax below); those score matrices are small enough that
materialising them costs nothing. Their fp32 `bmm`s stay on MKL: torch routes an fp32 `bmm` to oneDNN
only when `torch.backends.mkldnn.matmul.fp32_precision = "bf16"` permits dropping to bf16. On this CPU (no
AMX) oneDNN then still computes in fp32, 2.4× faster (0.21 vs 0.50 ms for 96 products of 77×64×77), but
on AMX CPUs it really rounds to bf16, and the setting is process-global: sdclip leaves it alone.
"""

from __future__ import annotations

import math
import os
import platform

import torch
import torch.nn.functional as F

#: up to this many positions the CPU computes attention as explicit matmuls (CLIP: 77, Long-CLIP: 248)
EXPLICIT_ATTENTION_MAX = 256
#: the GEMM rows (M) a packed weight's layout is chosen for: 8 rows of 77 tokens; other M gain too (bench_encoder)
PACK_ROWS = 8 * 77
#: fp32 products with at least this many rows go to MKL (`F.linear`), which is faster there (module docstring)
ONEDNN_MAX_ROWS = 512


def _probe_onednn(dtype: torch.dtype) -> bool:
    """oneDNN's linear works for `dtype` here: present, runs, agrees with `F.linear`. Per dtype, because a CPU
    without AVX-512 (many AMD EPYC / Ryzen parts) has no oneDNN bf16 inner product: the op raises "could not
    create a primitive descriptor" there, and bf16 must stay on `F.linear`."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=g).to(dtype) for s in ((5, 24), (16, 24), (16,)))
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        with torch.no_grad():
            got = op(x, w, b, "none", [], "")
            packed = op(x, torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS), b, "gelu", [], "none")
            ok = torch.allclose(got.float(), F.linear(x, w, b).float(), rtol=tol, atol=tol) and packed.shape == got.shape
        return bool(ok)
    except Exception:  # any build without the op, a CPU without the dtype's kernel, or one where it misbehaves
        return False


#: the CPU dtypes oneDNN's linear covers on this machine (fp16 stays on F.linear: not every x86 CPU has fp16 units)
_ONEDNN_DTYPES = tuple(d for d in (torch.float32, torch.bfloat16) if _probe_onednn(d))


def _native_half(dtype: torch.dtype) -> bool:
    """Whether torch's CPU matrix products have a fast kernel for `dtype` here: oneDNN's, which needs AVX-512
    (BF16 / FP16) or AMX. Without it, torch falls back to a scalar GEMM loop."""
    if dtype == torch.bfloat16:
        return dtype in _ONEDNN_DTYPES
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except Exception:  # a build without the query: assume the fallback
        return False


#: half dtypes whose CPU matrix products are computed in fp32 and rounded back (`matmul`, `linear`): this
#: CPU has no fast kernel for them, and torch's fallback is ~20× slower than fp32 (measured on the bench's
#: 2-core AVX2 EPYC: 512×4096 → 10240 in bf16 6 s, in fp32 0.3 s). The fallback multiplies in fp32 and
#: rounds each product once to the half dtype, as this does: the same values to summation order. Weights
#: stay half in memory; each is widened while its product runs (one matrix at a time).
WIDENED: tuple[torch.dtype, ...] = tuple(d for d in (torch.bfloat16, torch.float16) if not _native_half(d))
#: whether this torch build has a working oneDNN fp32 linear on this CPU
ONEDNN_AVAILABLE: bool = torch.float32 in _ONEDNN_DTYPES
#: whether the CPU path uses it; decided once per process (tests flip it to compare both paths)
ONEDNN: bool = ONEDNN_AVAILABLE and os.environ.get("SDCLIP_ONEDNN", "1").strip().lower() not in ("0", "false", "no", "off")


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        ONEDNN
        and x.device.type == "cpu"
        and x.dtype in _ONEDNN_DTYPES
        and weight.dtype == x.dtype
        and (x.dtype != torch.float32 or x.numel() < ONEDNN_MAX_ROWS * x.shape[-1])
        and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)))
    )


#: the activations a GEMM can carry in its output stage: exact erf GELU, and swish x·sigmoid(x)
_ACTIVATIONS = {"gelu": F.gelu, "swish": F.silu}


def pack(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's blocked copy of a linear weight, or None where `linear` would not use it. oneDNN reorders a
    plain weight into this layout on every call: packing once makes the GEMMs 5–11% faster here (the same
    result to rounding; bit for bit at PACK_ROWS) at the price of a second copy of the weight."""
    if not (ONEDNN and weight.device.type == "cpu" and weight.dtype in _ONEDNN_DTYPES and weight.dim() == 2):
        return None
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str | None = None,
           packed: torch.Tensor | None = None) -> torch.Tensor:
    """`act(F.linear(x, weight, bias))`, through oneDNN for fp32/bf16 CPU tensors without autograd.

    act: None, "gelu" (exact erf, OpenCLIP's MLP) or "swish" (what OpenAI CLIP's quick_gelu becomes once its
    1.702 is folded into the tensors around it: model.Block). Through oneDNN the activation is a post-op of
    the GEMM: no second pass over the output (≈ 3% of an MLP in fp32, ≈ 12% of a ViT-L bf16 pass, measured
    here). packed: `pack(weight)`, used in its place where oneDNN runs."""
    if act is not None and act not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}: one of {sorted(_ACTIVATIONS)}")
    if _onednn(x, weight, bias):
        w = weight if packed is None else packed
        return torch.ops.mkldnn._linear_pointwise(x, w, bias, act or "none", [], "none" if act == "gelu" else "")
    if widens(x) and weight.dtype == x.dtype:  # the product in fp32, rounded where a half GEMM rounds it
        y = linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
    else:
        y = F.linear(x, weight, bias)
    return y if act is None else _ACTIVATIONS[act](y)


def widens(t: torch.Tensor) -> bool:
    """Whether products of `t` run in fp32 (a CPU tensor of a half dtype without a fast kernel: `WIDENED`)."""
    return t.dtype in WIDENED and t.device.type == "cpu"


def matmul(op, *tensors: torch.Tensor, **kwargs: object) -> torch.Tensor:  # noqa: ANN001
    """`op(*tensors, **kwargs)` for a torch matrix product (`torch.bmm`, `torch.baddbmm`), computed in fp32
    and rounded back to the first tensor's dtype where `widens` says so; else as is."""
    if widens(tensors[0]):
        return op(*(t.float() for t in tensors), **kwargs).to(tensors[0].dtype)
    return op(*tensors, **kwargs)


def fuses_activation(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether `linear(..., act=...)` on these tensors runs the activation inside the GEMM (free) rather
    than as its own pass over the [rows·77, 3072–5120] output."""
    return _onednn(x, weight, bias)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention of [R, H, N, d] q/k/v; `bias` is None (causal) or an additive [R, 1, N, N]
    bias that already holds the causal part. Returns [R, H, N, d]."""
    r, h, n, d = q.shape
    if q.device.type != "cpu" or n > EXPLICIT_ATTENTION_MAX:
        if bias is None:
            return matmul(F.scaled_dot_product_attention, q, k, v, is_causal=True)
        return matmul(F.scaled_dot_product_attention, q, k, v, bias)
    if bias is None:
        bias = _causal_bias(n, q.dtype, q.device)
    else:
        bias = bias.expand(r, h, n, n).reshape(r * h, n, n)
    scores = matmul(torch.baddbmm, bias, q.reshape(r * h, n, d), k.reshape(r * h, n, d).transpose(1, 2),
                    alpha=1.0 / math.sqrt(d))
    # softmax in at least fp32: for bf16 both more accurate and
    # 2.7× faster than torch's bf16 softmax kernel at these sizes (0.19 vs 0.51 ms at 96 × 77 × 77)
    probs = scores.softmax(-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    return matmul(torch.bmm, probs, v.reshape(r * h, n, d)).view(r, h, n, d)


def _causal_bias(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[N, N] additive causal bias (0 on and below the diagonal, −inf above), broadcast over rows·heads."""
    return torch.full((n, n), float("-inf"), dtype=dtype, device=device).triu_(1)
