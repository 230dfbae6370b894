"""A tracing processor for diffusers' cross-attention (`attn2`) layers, and the running sums it feeds.

The processor returns the layer's normal output, computed exactly as the processor it replaces would
(AttnProcessor2_0's own steps when it replaces that one, so the image is bit-identical; any other processor
is simply called). Beside it, it computes softmax(q·kᵀ·scale + mask) from the layer's own q and k for the
conditional half of a classifier-free-guidance batch, sums it over heads and adds it to a per-resolution
running sum in fp32: memory is one [N, h, w] map per resolution, whatever the number of steps or layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor


@dataclass
class TraceState:
    """What every tracing processor of one `trace` shares: the step counter, the latent shape, the sums.

    - steps: 0-based UNet call indices to trace (None = all); resolutions: downsampling factors relative to
      the latent (1 = latent size, 2 = half, …; None = all).
    - cfg(): whether the current batch is [unconditional, conditional] halves (ask the pipeline).
    - sums[f]: [N, h/f, w/f] fp32 sum of probabilities over layers, heads, conditional batch items, steps;
      counts[f]: how many [h/f, w/f] maps went into it.
    """

    steps: Collection[int] | None = None
    resolutions: Collection[int] | None = None
    cfg: Callable[[], bool] = lambda: False
    step: int = -1
    latent: tuple[int, int] | None = None
    sums: dict[int, Tensor] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    layers: set[str] = field(default_factory=set)
    traced_steps: set[int] = field(default_factory=set)

    def begin_step(self, latent: tuple[int, int]) -> None:
        """Called before every UNet forward (one per denoising step with batched CFG)."""
        self.step += 1
        self.latent = latent

    def wants_step(self) -> bool:
        return self.latent is not None and (self.steps is None or self.step in self.steps)

    def factor(self, tokens: int) -> tuple[int, int, int] | None:
        """The downsampling factor of a layer with `tokens` spatial positions, and its (h, w); None if the
        layer's resolution is not traced (or does not match the latent's halvings)."""
        assert self.latent is not None
        h, w = self.latent
        f = 1
        while h * w >= tokens:
            if h * w == tokens:
                if self.resolutions is None or f in self.resolutions:
                    return f, h, w
                return None
            if h == 1 and w == 1:
                break
            h, w, f = math.ceil(h / 2), math.ceil(w / 2), f * 2
        return None

    def add(self, name: str, probs: Tensor, f: int, h: int, w: int) -> None:
        """probs [b, heads, h·w, N] → summed into sums[f] as [N, h, w]."""
        b, heads, _, n = probs.shape
        total = probs.sum(dim=(0, 1)).transpose(0, 1).reshape(n, h, w)
        if f in self.sums:
            if self.sums[f].shape[0] != n:
                raise ValueError(f"the conditioning changed length during tracing ({self.sums[f].shape[0]} → {n} slots)")
            self.sums[f] += total
        else:
            self.sums[f] = total.clone()
            self.counts[f] = 0
        self.counts[f] += b * heads
        self.layers.add(name)
        self.traced_steps.add(self.step)


class TracingAttnProcessor:
    """Wraps one `attn2` layer's processor: normal output, plus its attention probabilities into `state`."""

    def __init__(self, state: TraceState, original: object, name: str):
        self.state = state
        self.original = original
        self.name = name
        #: AttnProcessor2_0 is reproduced step by step (q and k computed once); others are called as they are
        self.fused = type(original) is AttnProcessor2_0

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> Tensor:
        st = self.state
        where = None
        if encoder_hidden_states is not None and st.wants_step() and hidden_states.ndim == 3:
            where = st.factor(hidden_states.shape[1])
        if where is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)  # type: ignore[operator]
        if self.fused and not args and not kwargs:
            return self._fused(attn, hidden_states, encoder_hidden_states, attention_mask, temb, where)
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)  # type: ignore[operator]
        query, key, mask = _query_key(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        self._record(attn, query, key, mask, where)
        return out

    # -- the layer's output, as AttnProcessor2_0 computes it ----------------------------------------------

    def _fused(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor,
        attention_mask: Tensor | None,
        temb: Tensor | None,
        where: tuple[int, int, int],
    ) -> Tensor:
        residual = hidden_states
        query, key, value, attention_mask = _project(attn, hidden_states, encoder_hidden_states, attention_mask, temb, True)
        batch_size, head_dim = query.shape[0], query.shape[-1]
        self._record(attn, query, key, attention_mask, where)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    # -- the probabilities --------------------------------------------------------------------------------

    def _record(self, attn: Attention, query: Tensor, key: Tensor, mask: Tensor | None, where: tuple[int, int, int]) -> None:
        """query [B, heads, HW, d], key [B, heads, N, d], mask [B, heads, 1|HW, N] or None."""
        with torch.no_grad():
            b = query.shape[0]
            lo = b // 2 if self.state.cfg() and b >= 2 else 0
            probs = attention_probs(query[lo:], key[lo:], attn.scale, None if mask is None else mask[lo:])
            self.state.add(self.name, probs, *where)


def attention_probs(query: Tensor, key: Tensor, scale: float, mask: Tensor | None = None) -> Tensor:
    """softmax(q·kᵀ·scale + mask) in fp32: [b, heads, HW, N]."""
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    return scores.softmax(dim=-1)


def _project(
    attn: Attention,
    hidden_states: Tensor,
    encoder_hidden_states: Tensor,
    attention_mask: Tensor | None,
    temb: Tensor | None,
    with_value: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """q, k (and v) [B, heads, ·, d] and the mask exactly as AttnProcessor2_0 forms them."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    batch_size, sequence_length, _ = encoder_hidden_states.shape
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    head_dim = key.shape[-1] // attn.heads

    def heads(x: Tensor) -> Tensor:
        return x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

    query, key = heads(query), heads(key)
    value = heads(attn.to_v(encoder_hidden_states)) if with_value else None
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value, attention_mask


def _query_key(
    attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor, attention_mask: Tensor | None, temb: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """q and k [B, heads, ·, d] and the mask as AttnProcessor2_0 forms them (for processors not reproduced)."""
    with torch.no_grad():
        query, key, _, mask = _project(attn, hidden_states, encoder_hidden_states, attention_mask, temb, False)
    return query, key, mask
