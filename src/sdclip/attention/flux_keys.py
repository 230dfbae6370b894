"""Flux / Chroma original key names (BFL's `flux1-dev.safetensors`, Chroma's files) → diffusers' names.

The same renaming as diffusers 0.42.1 `convert_flux_transformer_checkpoint_to_diffusers` and
`convert_chroma_transformer_checkpoint_to_diffusers` (single_file_utils.py lines 2294-2475, 3570-3735), at
any width: theirs splits each single block's fused `linear1` at a fixed 3072 (q, k, v, then the MLP), this one
at the config's heads × head_dim, so a narrower transformer (the tests' tiny ones) loads through the same code
as a real file. Written as a table: every original name pattern, its diffusers name, and how its rows split.
"""

from __future__ import annotations

import re

import torch

#: (original pattern, diffusers name or names, how the rows become them)
#: "same": one tensor renamed; "thirds": fused q / k / v, three equal parts; "qkv_mlp": q, k, v of the inner
#: width, then the MLP's rows; "swap": (shift, scale) halves stored as diffusers' (scale, shift)
RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (r"time_in\.in_layer\.(weight|bias)", ("time_text_embed.timestep_embedder.linear_1.{0}",), "same"),
    (r"time_in\.out_layer\.(weight|bias)", ("time_text_embed.timestep_embedder.linear_2.{0}",), "same"),
    (r"vector_in\.in_layer\.(weight|bias)", ("time_text_embed.text_embedder.linear_1.{0}",), "same"),
    (r"vector_in\.out_layer\.(weight|bias)", ("time_text_embed.text_embedder.linear_2.{0}",), "same"),
    (r"guidance_in\.in_layer\.(weight|bias)", ("time_text_embed.guidance_embedder.linear_1.{0}",), "same"),
    (r"guidance_in\.out_layer\.(weight|bias)", ("time_text_embed.guidance_embedder.linear_2.{0}",), "same"),
    (r"distilled_guidance_layer\.(in_proj|out_proj)\.(weight|bias)", ("distilled_guidance_layer.{0}.{1}",), "same"),
    (r"distilled_guidance_layer\.layers\.(\d+)\.in_layer\.(weight|bias)", ("distilled_guidance_layer.layers.{0}.linear_1.{1}",), "same"),
    (r"distilled_guidance_layer\.layers\.(\d+)\.out_layer\.(weight|bias)", ("distilled_guidance_layer.layers.{0}.linear_2.{1}",), "same"),
    (r"distilled_guidance_layer\.norms\.(\d+)\.scale", ("distilled_guidance_layer.norms.{0}.weight",), "same"),
    (r"txt_in\.(weight|bias)", ("context_embedder.{0}",), "same"),
    (r"img_in\.(weight|bias)", ("x_embedder.{0}",), "same"),
    (r"double_blocks\.(\d+)\.img_mod\.lin\.(weight|bias)", ("transformer_blocks.{0}.norm1.linear.{1}",), "same"),
    (r"double_blocks\.(\d+)\.txt_mod\.lin\.(weight|bias)", ("transformer_blocks.{0}.norm1_context.linear.{1}",), "same"),
    (r"double_blocks\.(\d+)\.img_attn\.qkv\.(weight|bias)",
     ("transformer_blocks.{0}.attn.to_q.{1}", "transformer_blocks.{0}.attn.to_k.{1}", "transformer_blocks.{0}.attn.to_v.{1}"), "thirds"),
    (r"double_blocks\.(\d+)\.txt_attn\.qkv\.(weight|bias)",
     ("transformer_blocks.{0}.attn.add_q_proj.{1}", "transformer_blocks.{0}.attn.add_k_proj.{1}",
      "transformer_blocks.{0}.attn.add_v_proj.{1}"), "thirds"),
    (r"double_blocks\.(\d+)\.img_attn\.norm\.query_norm\.scale", ("transformer_blocks.{0}.attn.norm_q.weight",), "same"),
    (r"double_blocks\.(\d+)\.img_attn\.norm\.key_norm\.scale", ("transformer_blocks.{0}.attn.norm_k.weight",), "same"),
    (r"double_blocks\.(\d+)\.txt_attn\.norm\.query_norm\.scale", ("transformer_blocks.{0}.attn.norm_added_q.weight",), "same"),
    (r"double_blocks\.(\d+)\.txt_attn\.norm\.key_norm\.scale", ("transformer_blocks.{0}.attn.norm_added_k.weight",), "same"),
    (r"double_blocks\.(\d+)\.img_mlp\.0\.(weight|bias)", ("transformer_blocks.{0}.ff.net.0.proj.{1}",), "same"),
    (r"double_blocks\.(\d+)\.img_mlp\.2\.(weight|bias)", ("transformer_blocks.{0}.ff.net.2.{1}",), "same"),
    (r"double_blocks\.(\d+)\.txt_mlp\.0\.(weight|bias)", ("transformer_blocks.{0}.ff_context.net.0.proj.{1}",), "same"),
    (r"double_blocks\.(\d+)\.txt_mlp\.2\.(weight|bias)", ("transformer_blocks.{0}.ff_context.net.2.{1}",), "same"),
    (r"double_blocks\.(\d+)\.img_attn\.proj\.(weight|bias)", ("transformer_blocks.{0}.attn.to_out.0.{1}",), "same"),
    (r"double_blocks\.(\d+)\.txt_attn\.proj\.(weight|bias)", ("transformer_blocks.{0}.attn.to_add_out.{1}",), "same"),
    (r"single_blocks\.(\d+)\.modulation\.lin\.(weight|bias)", ("single_transformer_blocks.{0}.norm.linear.{1}",), "same"),
    (r"single_blocks\.(\d+)\.linear1\.(weight|bias)",
     ("single_transformer_blocks.{0}.attn.to_q.{1}", "single_transformer_blocks.{0}.attn.to_k.{1}",
      "single_transformer_blocks.{0}.attn.to_v.{1}", "single_transformer_blocks.{0}.proj_mlp.{1}"), "qkv_mlp"),
    (r"single_blocks\.(\d+)\.norm\.query_norm\.scale", ("single_transformer_blocks.{0}.attn.norm_q.weight",), "same"),
    (r"single_blocks\.(\d+)\.norm\.key_norm\.scale", ("single_transformer_blocks.{0}.attn.norm_k.weight",), "same"),
    (r"single_blocks\.(\d+)\.linear2\.(weight|bias)", ("single_transformer_blocks.{0}.proj_out.{1}",), "same"),
    (r"final_layer\.linear\.(weight|bias)", ("proj_out.{0}",), "same"),
    (r"final_layer\.adaLN_modulation\.1\.(weight|bias)", ("norm_out.linear.{0}",), "swap"),
)
_COMPILED = tuple((re.compile(p), names, how) for p, names, how in RULES)
#: ComfyUI's saved Flux / Chroma files carry this before BFL's names
PREFIX = "model.diffusion_model."


def to_diffusers(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """The transformer's tensors of `state` under diffusers' names (keys matching no rule, such as a file's
    VAE or text encoders, are left out). config: the transformer's diffusers config (its width)."""
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = key.removeprefix(PREFIX)
        for pattern, names, how in _COMPILED:
            m = pattern.fullmatch(name)
            if m is None:
                continue
            targets = [n.format(*m.groups()) for n in names]
            out.update(zip(targets, _parts(tensor, how, inner)))
            break
    return out


def _parts(t: torch.Tensor, how: str, inner: int) -> tuple[torch.Tensor, ...]:
    if how == "same":
        return (t,)
    if how == "thirds":
        return tuple(t.chunk(3, dim=0))
    if how == "qkv_mlp":
        return tuple(t.split((inner, inner, inner, t.shape[0] - 3 * inner), dim=0))
    shift, scale = t.chunk(2, dim=0)  # "swap"
    return (torch.cat([scale, shift], dim=0),)
