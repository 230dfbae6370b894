"""A compact CLIP text transformer (one file, nanoGPT-style) that stops at the layer clip skip selects.

It equals transformers' `CLIPTextModel` / `CLIPTextModelWithProjection` to float32 rounding, with three
deliberate differences: skipped blocks never run; ids past the token table (>= 49408 in real models)
read textual-inversion vectors passed with the call; the pooled vector is read at the FIRST EOS (49407),
not at argmax(ids) as HF configs with the legacy `eos_token_id = 2` do (that breaks as soon as
textual-inversion ids > 49407 are present).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sdclip.tokenizer.stream import EOS
from sdclip.conventions.clip_skip import LayerSelect
from sdclip.encoder import kernels
from sdclip.encoder.config import EncoderConfig
from sdclip.encoder.finite import NonFiniteError, first_non_finite, non_finite_message


@dataclass
class EncoderOutput:
    """hidden: [R, L, D] the selected layer's output; pooled: [R, P] (projected if the model has a
    projection) or None when not asked for."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None


#: OpenAI CLIP's quick_gelu is x·sigmoid(a·x) with this a; note x·sigmoid(a·x) = swish(a·x) / a
QUICK_GELU_ALPHA = 1.702


def quick_gelu_(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's activation x·sigmoid(1.702x), in place when autograd is off: no [rows, 77, 3072]
    temporaries beyond one (on the CPU each is a fresh page-faulted allocation)."""
    if torch.is_grad_enabled():
        return x * torch.sigmoid(QUICK_GELU_ALPHA * x)
    return x.mul_(torch.sigmoid(x * QUICK_GELU_ALPHA))


def _times(v: torch.Tensor, a: float) -> torch.Tensor:
    """a·v, computed in fp32 and rounded once to v's dtype (a bf16 vector keeps its precision)."""
    return (v.float() * a).to(v.dtype)


def _version(*ts: torch.Tensor) -> tuple:
    """What identifies these tensors' current values: storage, in-place version, dtype (cache keys)."""
    return tuple((t.data_ptr(), t._version, t.dtype) for t in ts)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state-dict keys) run through kernels.linear: oneDNN on the CPU, an
    activation fused into the GEMM, and optionally a packed copy of the weight (pack_weights)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.packing = False
        self._packed: tuple[tuple, torch.Tensor | None] | None = None

    def forward(self, x: torch.Tensor, act: str | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
        """act: None, "gelu" or "swish" (kernels.linear); bias: replaces self.bias (Block's 1.702 trick)."""
        packed = None
        if self.packing:
            key = _version(self.weight)
            if self._packed is None or self._packed[0] != key:
                self._packed = (key, kernels.pack(self.weight))
            packed = self._packed[1]
        return kernels.linear(x, self.weight, self.bias if bias is None else bias, act, packed)

    def __getstate__(self) -> dict:
        """Copies and pickles leave the packed weight behind (an opaque oneDNN tensor has no storage to
        copy); it is made again on first use."""
        return {**super().__getstate__(), "_packed": None}


class Attention(nn.Module):
    """Causal multi-head self-attention, q/k/v fused in one matmul (kernels.attention picks SDPA or
    explicit matmuls)."""

    def __init__(self, cfg: EncoderConfig, **factory):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = Linear(cfg.width, 3 * cfg.width, **factory)
        self.out = Linear(cfg.width, cfg.width, **factory)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        r, n, d = x.shape
        q, k, v = self.qkv(x).view(r, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = kernels.attention(q, k, v, bias)
        return self.out(y.transpose(1, 2).reshape(r, n, d))


class MLP(nn.Module):
    def __init__(self, cfg: EncoderConfig, **factory):
        super().__init__()
        self.fc = Linear(cfg.width, cfg.mlp, **factory)
        self.proj = Linear(cfg.mlp, cfg.width, **factory)
        self.quick = cfg.act == "quick_gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # OpenCLIP's exact GELU is fused into the GEMM where the kernel can
        return self.proj(quick_gelu_(self.fc(x)) if self.quick else self.fc(x, "gelu"))


class Block(nn.Module):
    """Pre-LN residual block. With autograd off (sdclip always encodes under `torch.no_grad`), the
    residual adds go into `x` in place: callers pass a tensor they own (CLIPTextEncoder.forward copies
    the one it keeps)."""

    def __init__(self, cfg: EncoderConfig, **factory):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, eps=cfg.eps, **factory)
        self.attn = Attention(cfg, **factory)
        self.ln_2 = nn.LayerNorm(cfg.width, eps=cfg.eps, **factory)
        self.mlp = MLP(cfg, **factory)
        self._scaled: tuple[tuple, tuple[torch.Tensor, ...]] | None = None  # see _times_alpha

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if torch.is_grad_enabled():
            x = x + self.attn(self.ln_1(x), bias)
            return x + self.mlp(self.ln_2(x))
        x = x.add_(self.attn(self.ln_1(x), bias))
        fc = self.mlp.fc
        if self.mlp.quick and kernels.fuses_activation(x, fc.weight, fc.bias):
            return self._add_quick_mlp_(x)
        return x.add_(self.mlp(self.ln_2(x)))

    def _add_quick_mlp_(self, x: torch.Tensor) -> torch.Tensor:
        """x += MLP(ln_2(x)) with quick_gelu run inside the fc GEMM, which fuses swish but not
        swish(a·h)/a. With a = 1.702: a·h comes free by scaling LN's affine and fc's bias by a
        (W·(a·ln x) + a·b = a·(W·ln x + b)); the 1/a rides on the residual add, proj's bias scaled by a to
        match. Only [width]- and [mlp]-sized vectors are rescaled, never a weight matrix. Saves the
        activation's three passes over [rows·77, 3072]: ≈ 3% of a ViT-L fp32 pass, ≈ 12% in bf16."""
        ln = self.ln_2
        ln_w, ln_b, fc_b, proj_b = self._times_alpha()
        h = F.layer_norm(x, ln.normalized_shape, ln_w, ln_b, ln.eps)
        return x.add_(self.mlp.proj(self.mlp.fc(h, "swish", fc_b), bias=proj_b), alpha=1 / QUICK_GELU_ALPHA)

    def _times_alpha(self) -> tuple[torch.Tensor, ...]:
        """ln_2's weight and bias, fc's and proj's biases, times 1.702; recomputed only when one of them
        changed (new storage, dtype or in-place version), since 48 tiny ops a pass cost 3% at batch 1."""
        vs = (self.ln_2.weight, self.ln_2.bias, self.mlp.fc.bias, self.mlp.proj.bias)
        key = _version(*vs)
        if self._scaled is None or self._scaled[0] != key:
            self._scaled = (key, tuple(_times(v, QUICK_GELU_ALPHA) for v in vs))
        return self._scaled[1]


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[R, L] key mask (1 = attend) → additive [R, 1, L, L] bias, causal included.

    Masked keys get the dtype's most negative value, as transformers does, so a masked encoding equals
    `CLIPTextModel(ids, attention_mask=mask)` (compel's down-weighting re-encodes prompts this way)."""
    r, n = mask.shape
    causal = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
    allowed = causal.unsqueeze(0) & mask.to(torch.bool).unsqueeze(1)
    bias = torch.zeros(r, 1, n, n, dtype=dtype, device=mask.device)
    return bias.masked_fill(~allowed.unsqueeze(1), torch.finfo(dtype).min)


class CLIPTextEncoder(nn.Module):
    """The text tower. State-dict keys (what loading.py maps every layout to):

    token_embedding.weight [V, D], position_embedding [P, D], blocks.N.{ln_1, attn.qkv, attn.out, ln_2,
    mlp.fc, mlp.proj}.{weight, bias} (qkv rows ordered q, k, v), final_norm.{weight, bias},
    projection.weight [proj, D] (y = x @ W.T) when cfg.projection is set.
    """

    def __init__(self, cfg: EncoderConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.config = cfg
        factory = {"device": device or "cpu", "dtype": dtype}
        # Embedding's normal_() init on the meta device (where loading builds models) goes through
        # torch._refs and imports torch._dynamo: ≈ 0.8 s of a 1 s load. The table is passed in and only
        # initialised on a real device.
        table = torch.empty(cfg.vocab, cfg.width, **factory)
        if not table.is_meta:
            nn.init.normal_(table)
        self.token_embedding = nn.Embedding(cfg.vocab, cfg.width, _weight=table)
        self.position_embedding = nn.Parameter(torch.zeros(cfg.positions, cfg.width, **factory))
        self.blocks = nn.ModuleList(Block(cfg, **factory) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.width, eps=cfg.eps, **factory)
        self.projection = Linear(cfg.width, cfg.projection, bias=False, **factory) if cfg.projection else None

    # ---- checks -------------------------------------------------------------------------------------

    def _stop(self, select: LayerSelect, pooled: bool) -> int:
        """How many blocks to run; errors name the layer and what the weights hold."""
        cfg = self.config
        layer = select.layer(cfg.depth)
        if layer < 0:
            raise ValueError(f"{cfg.name}: cannot skip {select.skip} of {cfg.depth} layers")
        if layer > cfg.layers:
            raise ValueError(
                f"{cfg.name}: layer {layer} of {cfg.depth} is not stored in these weights (they hold "
                f"{cfg.layers}); skip at least {cfg.depth - cfg.layers} final layer(s)"
            )
        if pooled:
            if cfg.layers < cfg.depth:
                raise ValueError(
                    f"{cfg.name}: the pooled vector needs all {cfg.depth} layers; these weights hold {cfg.layers}"
                )
            return cfg.depth
        return layer

    def _embed(self, ids: torch.Tensor, vectors: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ids must be an integer tensor [R, L], got {tuple(ids.shape)} {ids.dtype}")
        if not 0 < ids.shape[1] <= cfg.positions:
            raise ValueError(f"{cfg.name}: {ids.shape[1]} positions per row, the model has {cfg.positions}")
        if ids.numel() == 0:
            raise ValueError("ids is empty")
        # ids past the token table (49408 rows in real models; more where a pipeline baked embeddings in)
        # read this call's textual-inversion `vectors`, row id − table size
        base = cfg.vocab
        custom = ids >= base
        if bool((ids < 0).any()):
            raise ValueError(f"{cfg.name}: negative token id {int(ids[ids < 0][0])}")
        hi = int(ids.max())
        x = self.token_embedding(torch.where(custom, 0, ids))
        if hi >= base:
            if vectors is None:
                raise ValueError(
                    f"{cfg.name}: token id {hi} is outside the vocabulary 0..{base - 1} and no textual-inversion "
                    "vectors were given"
                )
            if vectors.dim() != 2 or vectors.shape[1] != cfg.width:
                raise ValueError(f"vectors must be [K, {cfg.width}], got {tuple(vectors.shape)}")
            if hi - base >= vectors.shape[0]:
                raise ValueError(f"id {hi} needs vector {hi - base}, only {vectors.shape[0]} given")
            rows = vectors.to(x.dtype)[(ids - base).clamp(min=0)]
            x = torch.where(custom.unsqueeze(-1), rows, x)
        return x + self.position_embedding[: ids.shape[1]]

    # ---- forward ------------------------------------------------------------------------------------

    def forward(
        self,
        ids: torch.Tensor,
        select: LayerSelect = LayerSelect(),
        vectors: torch.Tensor | None = None,
        pooled: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Encode [R, L] ids; only the blocks up to the selected layer run unless `pooled` needs them all."""
        run = self._stop(select, pooled)
        keep = select.layer(self.config.depth)
        ids = ids.to(self.token_embedding.weight.device)
        x = self._embed(ids, vectors)
        bias = None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(ids.shape):
                raise ValueError(f"attention_mask must be [R, L] = {list(ids.shape)}, got {list(attention_mask.shape)}")
            bias = attention_bias(attention_mask.to(ids.device), x.dtype)
        # blocks update x in place: the kept layer is copied when more blocks run after it
        hidden = x.clone() if keep == 0 < run else x
        for i in range(run):
            x = self.blocks[i](x, bias)
            if i + 1 == keep:
                hidden = x.clone() if keep < run else x
        if select.final_norm:
            hidden = self.final_norm(hidden)
        pool = None
        if pooled:
            final = hidden if (keep == run and select.final_norm) else self.final_norm(x)
            pool = self._pool(ids, final)
        if not bool(torch.isfinite(hidden).all()) or (pool is not None and not bool(torch.isfinite(pool).all())):
            raise NonFiniteError(self._non_finite(ids, vectors))
        return EncoderOutput(hidden, pool)

    def _non_finite(self, ids: torch.Tensor, vectors: torch.Tensor | None) -> str:
        """Where a non-finite encoding first appears (the failure path only: it re-runs every layer)."""
        i = first_non_finite(self.hidden_states(ids, vectors))
        where = ("the output" if i is None
                 else "the embeddings (token table, positions or textual-inversion vectors)" if i == 0
                 else "the final layer norm" if i > self.config.layers else f"block layers.{i - 1} (0-based)")
        return non_finite_message(self.config.name, where, self.token_embedding.weight.dtype)

    def _pool(self, ids: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        is_eos = ids == EOS
        if not bool(is_eos.any(dim=1).all()):
            raise ValueError(f"every row needs an EOS ({EOS}) for the pooled vector")
        at = is_eos.int().argmax(dim=1)  # first EOS
        out = final[torch.arange(final.shape[0], device=final.device), at]
        return self.projection(out) if self.projection is not None else out

    def pack_weights(self, enable: bool = True) -> "CLIPTextEncoder":
        """Keep a oneDNN-packed copy of every linear weight beside it (made on first use, remade if the
        weight changes): CPU passes in fp32/bf16 run 3–27% faster (most at batch 1) with the same result
        to rounding, for a second copy of the blocks' weights in memory (ViT-L fp32 +340 MB, SDXL bf16
        +1.4 GB); hence off by default. Elsewhere (CUDA, fp16, autograd) the plain weights run as before."""
        for m in self.modules():
            if isinstance(m, Linear):
                m.packing, m._packed = enable, None
        return self

    @torch.no_grad()
    def hidden_states(self, ids: torch.Tensor, vectors: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every stored layer's output, index 0 = embeddings (as transformers' `hidden_states`), then the
        final-LN output of the last stored layer appended (the HF `last_hidden_state`)."""
        ids = ids.to(self.token_embedding.weight.device)
        x = self._embed(ids, vectors)
        out = [x]
        for block in self.blocks:
            x = block(x.clone())  # blocks work in place; each layer's output is kept
            out.append(x)
        out.append(self.final_norm(x))
        return out
