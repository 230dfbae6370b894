"""Tracing processors for MM-DiT joint attention (diffusers 0.42: SD3's JointAttnProcessor2_0, Flux's and
Chroma's FluxAttnProcessor in the joint and the single-stream blocks), and the running sums they feed.

MM-DiT attention is one softmax over text and image tokens together. A map here is the image-query → text-key
block of it, computed from the layer's own q and k (after its RMS norms and, for Flux / Chroma, RoPE) and
renormalised over the text keys: softmax(q_img · k_txtᵀ · d^-½ + mask) — at every image token the text slots
sum to 1 ("of the attention this pixel paid to the prompt, which slot got it").

The processor returns the layer's output computed with the very ops of the processor it replaces (the
standard ones are reproduced line for line, so q and k come for free and the image is bit-identical; any
other processor is called as it is, q / k recomputed beside it). Sums are fp32 [N, h·w] per (reading, block
type): memory does not grow with steps, blocks or heads.

Readings:
- "softmax": the probabilities above;
- "output": ConceptAttention's output-space map (Helbling et al., ICML 2025), here on the prompt's own text
  tokens: per head, the attention output of every image token · the attention output of text slot j
  (the per-head SDPA results, before the output projection, as their `concept_scores`), summed into the
  sums over heads like the probabilities, so maps() gives the mean over heads (theirs: the sum). Unnormalised.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.attention_processor import JointAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections
from torch import Tensor

READINGS = ("softmax", "output")
BLOCK_TYPES = ("joint", "single")
#: heads scored at once: bounds the fp32 score block (Flux at 1024²: 8 × 4096 × 512 × 4 B = 64 MiB)
HEAD_CHUNK = 8


@dataclass
class MMDiTState:
    """Shared by every tracing processor of one trace: which call is traced, the text length, the sums.

    - blocks: block types read ("joint", "single"); steps: 0-based denoising steps (None = all);
      readings: subset of READINGS.
    - per transformer call (set by the trace's pre-hook): recording, text_len, grid (h, w) of image tokens,
      cond (first batch index of the conditional half).
    - sums[(reading, block type)]: [N, h·w] fp32; counts: the [h·w] maps summed into it (items × heads × layers).
    """

    blocks: frozenset[str] = frozenset(BLOCK_TYPES)
    steps: Collection[int] | None = None
    readings: tuple[str, ...] = ("softmax",)
    step: int = -1
    recording: bool = False
    text_len: int = 0
    grid: tuple[int, int] | None = None
    cond: int = 0
    sums: dict[tuple[str, str], Tensor] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    layers: set[str] = field(default_factory=set)
    traced_steps: set[int] = field(default_factory=set)

    def wants(self, block_type: str) -> bool:
        return self.recording and block_type in self.blocks

    def add(self, reading: str, block_type: str, name: str, maps: Tensor, n: int) -> None:
        """maps [h·w, N] (already summed over n items × heads) into sums[(reading, block_type)] as [N, h·w]."""
        key = (reading, block_type)
        total = maps.transpose(0, 1)
        if key in self.sums:
            if self.sums[key].shape != total.shape:
                raise ValueError(
                    f"the text or image length changed during tracing ({tuple(self.sums[key].shape)} → {tuple(total.shape)})"
                )
            self.sums[key] += total
        else:
            self.sums[key] = total.clone()
            self.counts[key] = 0
        self.counts[key] += n
        self.layers.add(name)
        self.traced_steps.add(self.step)


def text_probs(q_img: Tensor, k_txt: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q·kᵀ·d^-½ + mask) over the text keys in fp32, summed over batch and heads: [HW, N].
    q_img [b, H, HW, d], k_txt [b, H, N, d]; mask [b, 1|H, HW, N] (bool: True = attend; float: added, as SDPA)."""
    scale = q_img.shape[-1] ** -0.5
    out = None
    for h in range(0, q_img.shape[1], HEAD_CHUNK):
        scores = torch.matmul(q_img[:, h : h + HEAD_CHUNK].float(), k_txt[:, h : h + HEAD_CHUNK].float().transpose(-1, -2))
        scores = scores * scale
        if mask is not None:
            m = mask if mask.shape[1] == 1 else mask[:, h : h + HEAD_CHUNK]
            scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
        part = scores.softmax(dim=-1).sum(dim=(0, 1))
        out = part if out is None else out + part
    assert out is not None
    return out


def output_scores(o_img: Tensor, o_txt: Tensor) -> Tensor:
    """ConceptAttention's output-space scores, summed over batch and heads: [HW, N].
    o_img [b, H, HW, d], o_txt [b, H, N, d]: per-head attention outputs."""
    return torch.matmul(o_img.float(), o_txt.float().transpose(-1, -2)).sum(dim=(0, 1))


class _Tracing:
    """What both tracing processors share: the state, the original processor, the layer's name and type."""

    def __init__(self, state: MMDiTState, original: object, name: str, block_type: str):
        self.state = state
        self.original = original
        self.name = name
        self.block_type = block_type

    def _record(self, q_img: Tensor, k_txt: Tensor, mask: Tensor | None, o_img: Tensor | None, o_txt: Tensor | None) -> None:
        """[B, H, ·, d] tensors of the whole batch; only the conditional half is read."""
        st = self.state
        lo = st.cond
        with torch.no_grad():
            n = (q_img.shape[0] - lo) * q_img.shape[1]
            if "softmax" in st.readings:
                m = None if mask is None else mask[lo:]
                st.add("softmax", self.block_type, self.name, text_probs(q_img[lo:], k_txt[lo:], m), n)
            if "output" in st.readings and o_img is not None and o_txt is not None:
                st.add("output", self.block_type, self.name, output_scores(o_img[lo:], o_txt[lo:]), n)


class TracingJointProcessor(_Tracing):
    """SD3 / SD3.5 `attn` layers (JointAttnProcessor2_0): image tokens first, then text, in [B, H, S, d]."""

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,  # noqa: ANN001
                 attention_mask: Tensor | None = None, *args: object, **kwargs: object) -> Tensor | tuple[Tensor, Tensor]:
        if encoder_hidden_states is None or not self.state.wants(self.block_type):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)  # type: ignore[operator]
        img_len = hidden_states.shape[1]
        if type(self.original) is JointAttnProcessor2_0 and attention_mask is None and not args and not kwargs:
            return self._joint(attn, hidden_states, encoder_hidden_states, img_len)
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)  # type: ignore[operator]
        with torch.no_grad():
            query, key, value = _sd3_qkv(attn, hidden_states, encoder_hidden_states)
            o = F.scaled_dot_product_attention(query, key, value) if "output" in self.state.readings else None
        self._record(query[:, :, :img_len], key[:, :, img_len:], None,
                     None if o is None else o[:, :, :img_len], None if o is None else o[:, :, img_len:])
        return out

    def _joint(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor, img_len: int):  # noqa: ANN001, ANN202
        """JointAttnProcessor2_0.__call__ (diffusers 0.42), same ops in the same order."""
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query, key, value = _sd3_qkv(attn, hidden_states, encoder_hidden_states)
        head_dim = query.shape[-1]

        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        self._record(query[:, :, :img_len], key[:, :, img_len:], None, hidden_states[:, :, :img_len], hidden_states[:, :, img_len:])
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states, encoder_hidden_states = hidden_states[:, : residual.shape[1]], hidden_states[:, residual.shape[1] :]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states, encoder_hidden_states


def _sd3_qkv(attn, hidden_states: Tensor, encoder_hidden_states: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # noqa: ANN001
    """q, k, v [B, H, img + text, d] exactly as JointAttnProcessor2_0 forms them."""
    batch_size = hidden_states.shape[0]
    query = attn.to_q(hidden_states)
    key = attn.to_k(hidden_states)
    value = attn.to_v(hidden_states)
    inner_dim = key.shape[-1]
    head_dim = inner_dim // attn.heads
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)

    eq = attn.add_q_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    ek = attn.add_k_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    ev = attn.add_v_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_added_q is not None:
        eq = attn.norm_added_q(eq)
    if attn.norm_added_k is not None:
        ek = attn.norm_added_k(ek)
    return torch.cat([query, eq], dim=2), torch.cat([key, ek], dim=2), torch.cat([value, ev], dim=2)


class TracingFluxProcessor(_Tracing):
    """Flux / Chroma `attn` layers (FluxAttnProcessor): text tokens first, then image, in [B, S, H, d].
    Joint blocks pass the text as encoder_hidden_states; single-stream blocks pass [text ‖ image] as one
    sequence, so the text length comes from the transformer call (state.text_len)."""

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,  # noqa: ANN001
                 attention_mask: Tensor | None = None, image_rotary_emb: object = None, **kwargs: object):
        if not self.state.wants(self.block_type):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)  # type: ignore[operator]
        text_len = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else self.state.text_len
        if type(self.original) is FluxAttnProcessor and not kwargs:
            return self._flux(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, text_len)
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)  # type: ignore[operator]
        with torch.no_grad():
            query, key, value = _flux_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
            o = None
            if "output" in self.state.readings:
                o = dispatch_attention_fn(query, key, value, attn_mask=attention_mask)
        self._record_flux(query, key, attention_mask, o, text_len)
        return out

    def _flux(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None,  # noqa: ANN001
              attention_mask: Tensor | None, image_rotary_emb: object, text_len: int):  # noqa: ANN202
        """FluxAttnProcessor.__call__ (diffusers 0.42), same ops in the same order."""
        query, key, value = _flux_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        proc = self.original
        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask,
            backend=proc._attention_backend, parallel_config=proc._parallel_config,  # type: ignore[attr-defined]
        )
        self._record_flux(query, key, attention_mask, hidden_states, text_len)
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states

    def _record_flux(self, query: Tensor, key: Tensor, mask: Tensor | None, out: Tensor | None, text_len: int) -> None:
        """[B, S, H, d] → the [B, H, ·, d] slices _record reads; mask [B, 1|H, S, S] or [B, S] (keys)."""
        q_img = query[:, text_len:].transpose(1, 2)
        k_txt = key[:, :text_len].transpose(1, 2)
        m = None
        if mask is not None:
            m = mask[:, None, None, :text_len] if mask.ndim == 2 else mask[:, :, text_len:, :text_len]
        o_img = o_txt = None
        if out is not None:
            o_img, o_txt = out[:, text_len:].transpose(1, 2), out[:, :text_len].transpose(1, 2)
        self._record(q_img, k_txt, m, o_img, o_txt)


def _flux_qkv(attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None,  # noqa: ANN001
              image_rotary_emb: object) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v [B, text + img, H, d] exactly as FluxAttnProcessor forms them (norms, then RoPE)."""
    query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
    query = query.unflatten(-1, (-1, attn.head_dim))
    key = key.unflatten(-1, (-1, attn.head_dim))
    value = value.unflatten(-1, (-1, attn.head_dim))
    query = attn.norm_q(query)
    key = attn.norm_k(key)
    if attn.added_kv_proj_dim is not None:
        encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
        encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
        encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
        encoder_query = attn.norm_added_q(encoder_query)
        encoder_key = attn.norm_added_k(encoder_key)
        query = torch.cat([encoder_query, query], dim=1)
        key = torch.cat([encoder_key, key], dim=1)
        value = torch.cat([encoder_value, value], dim=1)
    if image_rotary_emb is not None:
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    return query, key, value
