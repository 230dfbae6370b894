"""A compact T5 v1.1 encoder (SD3's `text_encoder_3`, Flux's `text_encoder_2`), equal to transformers'
`T5EncoderModel`.

Why our own module rather than transformers' class: (1) the matrix products go through
`sdclip.encoder.kernels` (oneDNN on x86 CPUs: the fp32 GEMMs run ≈ 2× faster than MKL's generic AMD path,
gated-GELU fused into the wi_0 GEMM), (2) weights may stay in their stored dtype and be upcast one layer
at a time at use (ComfyUI's `t5xxl_fp8_e4m3fn` files: memory stays near the file's size; transformers
would upcast all of it at load), (3) it loads from every layout by plain tensor assignment (no random
init of a 4.7 B-parameter model, no transformers import).

T5 v1.1, as transformers computes it: RMSNorm without bias (mean of squares in fp32; cast back to the
weight's dtype when that is fp16/bf16), relative position bias (buckets over distance, bidirectional)
computed once from layer 0's table and shared by every layer, no 1/√d scaling of q·k, gated FFN
(`gelu_new` = tanh GELU for "gated-gelu"), final RMSNorm. fp16: transformers loads `wo` in fp32
(`_keep_in_fp32_modules`), so the FFN output and the residual stream become fp32 after the first block;
any fp16 hidden state is clamped to ±(max − 1000 if it holds inf else max) after attention and FFN. This
module does the same given the same weights' dtypes (`sdclip.encoder.loading.t5` keeps `wo` in fp32 for
fp16, as transformers' `from_pretrained` does). bf16 is the usual, overflow-free choice.

umT5 (`UMT5EncoderModel`: Wan's umT5-XXL, AuraFlow's Pile-T5-XL) is the same computation except that every
layer has its own relative-attention table (transformers' `UMT5LayerSelfAttention` builds each layer's
`UMT5Attention(has_relative_attention_bias=True)`, modeling_umt5.py:374-380) and no layer reuses another's:
`T5Config.per_layer_bias`. Its attention does not scale q·k either (`UMT5Attention`, modeling_umt5.py:209).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from sdclip.encoder import kernels
from sdclip.encoder.finite import NonFiniteError, first_non_finite, non_finite_message

#: dtypes a weight may be stored in but never computed in: upcast to the compute dtype at use
STORAGE_ONLY = tuple(
    getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, n)
)
_ACTS = ("gelu_new", "gelu", "relu", "silu")


class T5ConfigError(ValueError):
    """A T5 config.json that does not describe a usable T5 encoder."""


@dataclass(frozen=True)
class T5Config:
    """The encoder's shape, named as in transformers' `T5Config` (config.json keys)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    #: umT5: every layer has its own relative-attention table (T5 v1.1: layer 0's, shared)
    per_layer_bias: bool = False

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "per_layer_bias":
                if not isinstance(v, bool):
                    raise T5ConfigError(f"T5 config: per_layer_bias must be true or false, got {v!r}")
            elif f.name == "layer_norm_epsilon":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                    raise T5ConfigError(f"T5 config: layer_norm_epsilon must be in (0, 1), got {v!r}")
            elif f.name == "feed_forward_proj":
                if not isinstance(v, str):
                    raise T5ConfigError(f"T5 config: feed_forward_proj must be a string, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 1 << 20:
                raise T5ConfigError(f"T5 config: {f.name} must be a positive int, got {v!r}")
        if self.relative_attention_num_buckets < 4:
            raise T5ConfigError("T5 config: relative_attention_num_buckets must be at least 4")
        self.activation  # validates feed_forward_proj

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        """transformers' rule: the part after "gated-"; "gated-gelu" means the tanh GELU `gelu_new`."""
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise T5ConfigError(f"T5 config: feed_forward_proj {self.feed_forward_proj!r} is not ACT or gated-ACT")
        act = "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]
        if act not in _ACTS:
            raise T5ConfigError(f"T5 config: activation {act!r} unsupported (one of {', '.join(_ACTS)})")
        return act

    @property
    def inner(self) -> int:
        return self.num_heads * self.d_kv

    @classmethod
    def from_dict(cls, d: dict) -> "T5Config":
        """From a transformers config.json; refuses decoders-only / non-T5 configs with a clear error."""
        if not isinstance(d, dict):
            raise T5ConfigError("T5 config must be a JSON object")
        mt = d.get("model_type")
        if mt not in (None, "t5", "umt5"):
            raise T5ConfigError(f"config.json describes a {mt!r} model, not T5")
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d and f.name != "per_layer_bias"}
        return cls(**kw, per_layer_bias=mt == "umt5")


def relative_buckets(n: int, num_buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """[n, n] bucket of each (query, key) pair: transformers' bidirectional `_relative_position_bucket`."""
    pos = torch.arange(n, dtype=torch.long, device=device)
    rel = pos[None, :] - pos[:, None]  # key − query
    half = num_buckets // 2
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = exact + (torch.log(rel.float() / exact) / math.log(max_distance / exact) * (half - exact)).long()
    large = torch.minimum(large, torch.full_like(large, half - 1))
    return out + torch.where(rel < exact, rel, large)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """T5LayerNorm: scale only, mean of squares in fp32, back to a half weight's dtype before scaling."""
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    h = x * torch.rsqrt(variance + eps)
    if weight.dtype in (torch.float16, torch.bfloat16):
        h = h.to(weight.dtype)
    return weight * h


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """transformers' fp16 guard: clamp to ±max, or ±(max − 1000) once anything overflowed."""
    if x.dtype != torch.float16:
        return x
    top = torch.finfo(torch.float16).max
    limit = top - 1000 if bool(torch.isinf(x).any()) else top
    return x.clamp_(-limit, limit) if not torch.is_grad_enabled() else x.clamp(-limit, limit)


class T5Linear(nn.Module):
    """A bias-free linear layer whose weight keeps the dtype it was loaded in.

    - stored in a compute dtype: used as is (an input of another dtype is cast to the weight's, as
      transformers does for fp32 `wo` in fp16 models);
    - stored in fp8: upcast to the input's dtype at each use (times `scale` where the file is ComfyUI's
      scaled fp8), so only one layer's weights exist in the wide dtype at a time.
    """

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype), requires_grad=False)
        self.register_buffer("scale", None)

    def resolved(self, dtype: torch.dtype) -> torch.Tensor:
        w = self.weight
        if w.dtype in STORAGE_ONLY:
            w = w.to(dtype)
            if self.scale is not None:
                w = w * self.scale.to(dtype)
        return w

    def forward(self, x: torch.Tensor, act: str | None = None) -> torch.Tensor:
        w = self.weight
        if w.dtype in STORAGE_ONLY:
            w = self.resolved(x.dtype)
        elif w.dtype != x.dtype:
            x = x.to(w.dtype)
        if act == "gelu_new" and kernels.fuses_activation(x, w):
            return torch.ops.mkldnn._linear_pointwise(x, w, None, "gelu", [], "tanh")
        y = kernels.linear(x, w, None, "gelu" if act == "gelu" and kernels.fuses_activation(x, w) else None)
        return _activate(y, act) if act and not (act == "gelu" and kernels.fuses_activation(x, w)) else y


def _activate(y: torch.Tensor, act: str) -> torch.Tensor:
    if act == "gelu_new":
        return F.gelu(y, approximate="tanh")
    if act == "gelu":
        return F.gelu(y)
    if act == "relu":
        return F.relu(y)
    return F.silu(y)


class T5Block(nn.Module):
    """Self-attention and FFN sublayers, each pre-RMSNorm with a residual."""

    def __init__(self, cfg: T5Config, **factory):
        super().__init__()
        self.heads, self.d_kv, self.eps = cfg.num_heads, cfg.d_kv, cfg.layer_norm_epsilon
        self.act, self.gated = cfg.activation, cfg.gated
        self.ln_attn = nn.Parameter(torch.ones(cfg.d_model, **factory), requires_grad=False)
        self.q = T5Linear(cfg.d_model, cfg.inner, **factory)
        self.k = T5Linear(cfg.d_model, cfg.inner, **factory)
        self.v = T5Linear(cfg.d_model, cfg.inner, **factory)
        self.o = T5Linear(cfg.inner, cfg.d_model, **factory)
        self.ln_ff = nn.Parameter(torch.ones(cfg.d_model, **factory), requires_grad=False)
        self.wi_0 = T5Linear(cfg.d_model, cfg.d_ff, **factory)
        self.wi_1 = T5Linear(cfg.d_model, cfg.d_ff, **factory) if cfg.gated else None
        self.wo = T5Linear(cfg.d_ff, cfg.d_model, **factory)
        #: umT5: this layer's own relative-attention table (block 0 uses the encoder's `rel_bias`)
        self.rel_bias = None

    def attention(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = h.shape
        q, k, v = (m(h).view(b, n, self.heads, self.d_kv).transpose(1, 2) for m in (self.q, self.k, self.v))
        if h.device.type != "cpu" or n > kernels.EXPLICIT_ATTENTION_MAX:
            y = kernels.matmul(F.scaled_dot_product_attention, q, k, v, bias.to(q.dtype), scale=1.0)
        else:
            r = b * self.heads
            scores = kernels.matmul(torch.baddbmm, bias.to(q.dtype).expand(b, self.heads, n, n).reshape(r, n, n),
                                    q.reshape(r, n, self.d_kv), k.reshape(r, n, self.d_kv).transpose(1, 2))
            probs = scores.softmax(-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
            y = kernels.matmul(torch.bmm, probs, v.reshape(r, n, self.d_kv)).view(b, self.heads, n, self.d_kv)
        return self.o(y.transpose(1, 2).reshape(b, n, self.heads * self.d_kv))

    def ffn(self, h: torch.Tensor) -> torch.Tensor:
        if not self.gated:
            return self.wo(self.wi_0(h, self.act))
        a = self.wi_0(h, self.act)
        g = self.wi_1(h)
        a = a.mul_(g) if not torch.is_grad_enabled() else a * g
        return self.wo(a)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = _residual(x, self.attention(rms_norm(x, self.ln_attn, self.eps), bias))
        x = _clamp_fp16(x)
        x = _residual(x, self.ffn(rms_norm(x, self.ln_ff, self.eps)))
        return _clamp_fp16(x)


def _residual(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + y, into x when that keeps transformers' dtype promotion (the caller owns x)."""
    if x.dtype == y.dtype and not torch.is_grad_enabled():
        return x.add_(y)
    return x + y


class T5Encoder(nn.Module):
    """The encoder stack. Keys: embed [V, D], rel_bias [buckets, H], blocks.N.{ln_attn, q, k, v, o, ln_ff,
    wi_0, wi_1, wo} (linear weights `.weight` [out, in], optional `.scale`), final_norm [D]."""

    def __init__(self, cfg: T5Config, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.config = cfg
        factory = {"device": device or "cpu", "dtype": dtype}
        self.embed = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model, **factory), requires_grad=False)
        self.rel_bias = nn.Parameter(torch.zeros(cfg.relative_attention_num_buckets, cfg.num_heads, **factory),
                                     requires_grad=False)
        self.blocks = nn.ModuleList(T5Block(cfg, **factory) for _ in range(cfg.num_layers))
        if cfg.per_layer_bias:
            for block in list(self.blocks)[1:]:
                block.rel_bias = nn.Parameter(torch.zeros(cfg.relative_attention_num_buckets, cfg.num_heads, **factory),
                                              requires_grad=False)
        self.final_norm = nn.Parameter(torch.ones(cfg.d_model, **factory), requires_grad=False)
        self._bias_cache: dict[tuple, torch.Tensor] = {}

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: that of the norms (fp8-stored weights are upcast to it)."""
        return self.final_norm.dtype

    def tables(self) -> list[torch.Tensor]:
        """Each block's relative-attention table: layer 0's for every block (T5 v1.1), or each its own (umT5)."""
        if not self.config.per_layer_bias:
            return [self.rel_bias] * len(self.blocks)
        return [self.rel_bias] + [b.rel_bias for b in list(self.blocks)[1:]]

    def position_bias(self, n: int, block: int = 0) -> torch.Tensor:
        """[1, H, n, n] relative position bias of `block` (T5 v1.1: layer 0's table, shared by all layers);
        cached per n."""
        t = self.tables()[block]
        key = (n, block, t.data_ptr(), t._version, t.dtype, t.device)
        cached = self._bias_cache.get(key)
        if cached is None:
            cfg = self.config
            buckets = relative_buckets(n, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance, t.device)
            table = t if t.dtype not in STORAGE_ONLY else t.to(self.dtype)
            cached = F.embedding(buckets, table).permute(2, 0, 1).unsqueeze(0).contiguous()
            if len(self._bias_cache) >= len(self.blocks) or any(k[0] != n for k in self._bias_cache):
                self._bias_cache = {}
            self._bias_cache[key] = cached
        return cached

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32) or ids.numel() == 0:
            raise ValueError(f"ids must be a non-empty integer tensor [B, N], got {tuple(ids.shape)} {ids.dtype}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(f"T5: token id {lo if lo < 0 else hi} outside the vocabulary 0..{cfg.vocab_size - 1}")
        table = self.embed
        x = table[ids.to(table.device)]
        return x.to(self.dtype) if table.dtype in STORAGE_ONLY else x

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N] ids → [B, N, D] last hidden state (after the final norm), as `T5EncoderModel(ids)[0]`.
        attention_mask [B, N] (1 = attend) hides padded keys, as transformers does; diffusers passes none."""
        x = self.embed_ids(ids)
        for block, bias in zip(self.blocks, self._biases(ids, attention_mask, x.dtype)):
            x = block(x, bias)
        out = rms_norm(x, self.final_norm, self.config.layer_norm_epsilon)
        if not bool(torch.isfinite(out).all()):  # one check per pass; the failure path finds the block
            raise NonFiniteError(self._non_finite(ids, attention_mask))
        return out

    @property
    def name(self) -> str:
        """The encoder in words, for errors: "T5 (24 blocks × 4096)"."""
        return f"T5 ({self.config.num_layers} blocks × {self.config.d_model})"

    def _non_finite(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> str:
        """Where a non-finite encoding first appears (re-runs the layers one by one)."""
        i = first_non_finite(self.hidden_states(ids, attention_mask))
        where = ("the output" if i is None else "the embeddings (the token table)" if i == 0
                 else "the final norm" if i > self.config.num_layers else f"block {i - 1} (0-based)")
        return non_finite_message(self.name, where, self.dtype)

    def _bias(self, ids: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype, block: int = 0) -> torch.Tensor:
        bias = self.position_bias(ids.shape[1], block)
        if mask is None:
            return bias
        if tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(f"attention_mask must be [B, N] = {list(ids.shape)}, got {list(mask.shape)}")
        hidden = ~mask.to(device=bias.device, dtype=torch.bool)
        add = torch.zeros(mask.shape, dtype=bias.dtype, device=bias.device).masked_fill(hidden, torch.finfo(bias.dtype).min)
        return bias + add[:, None, None, :]

    def _biases(self, ids: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype) -> list[torch.Tensor]:
        """The bias (position + mask) each block adds to its scores: one shared tensor, or one per block (umT5)."""
        if not self.config.per_layer_bias:
            return [self._bias(ids, mask, dtype)] * len(self.blocks)
        return [self._bias(ids, mask, dtype, i) for i in range(len(self.blocks))]

    @torch.no_grad()
    def hidden_states(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The embeddings, every block's output, then the final-norm output (for layer-by-layer checks)."""
        x = self.embed_ids(ids)
        out = [x.clone()]
        for block, bias in zip(self.blocks, self._biases(ids, attention_mask, x.dtype)):
            x = block(x, bias)
            out.append(x.clone())
        out.append(rms_norm(x, self.final_norm, self.config.layer_norm_epsilon))
        return out

