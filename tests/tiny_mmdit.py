"""Tiny random MM-DiT pipelines for the attention-map tests: SD3.5-like (2×2 patches, RMS q/k norms, a dual
attention layer, the last block context_pre_only), Flux (joint + single-stream blocks, RoPE) and Chroma
(Flux's attention with a T5 padding mask, CFG as two calls). Built from configs, no files, no network;
flux_original / sd3_original / ldm_vae write them as the original single files name their tensors.

Text encoders and tokenizers are tests/tiny_pipelines' (real CLIP BPE, the tiny T5 vocabulary); the VAE
halves the image once, so a 32×32 image is a 16×16 latent: SD3's 2×2 patches and Flux's 2×2 packing make
an 8×8 grid of image tokens.
"""

from __future__ import annotations

import torch

from tiny_models import tiny_family
from tiny_pipelines import T5_SIZES, T5_WIDTH, _flow_scheduler, _flow_vae, clip_tokenizer, clip_with_projection, t5_tokenizer

IMAGE = 32
HEADS, HEAD_DIM = 2, 8


def sd3(seed: int = 0, layers: int = 2):  # noqa: ANN201
    """StableDiffusion3Pipeline: CLIP-L (projected), CLIP-G, T5; an SD3.5-shaped transformer."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from tiny_t5 import tiny_t5

    l = clip_with_projection("clip-vit-l-14", seed, 128)
    (g,) = tiny_family("sdxl", seed=seed + 1).models[1:]
    t5 = tiny_t5(seed=seed + 2, **T5_SIZES)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=IMAGE // 2, patch_size=2, in_channels=4, num_layers=layers, attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS, caption_projection_dim=HEADS * HEAD_DIM, joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=l.config.projection_dim + g.config.projection_dim, out_channels=4,
        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=_flow_scheduler(), vae=_flow_vae(),
        text_encoder=l, tokenizer=clip_tokenizer(), text_encoder_2=g, tokenizer_2=clip_tokenizer("!"),
        text_encoder_3=t5, tokenizer_3=t5_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux(seed: int = 0, layers: int = 2, single: int = 2):  # noqa: ANN201
    """FluxPipeline: CLIP-L (pooled), T5 (512 slots); joint and single-stream blocks."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from tiny_t5 import tiny_t5

    (l,) = tiny_family("sd1", seed=seed).models
    t5 = tiny_t5(seed=seed + 2, **T5_SIZES)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=layers, num_single_layers=single, attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS, joint_attention_dim=T5_WIDTH, pooled_projection_dim=l.config.hidden_size,
        axes_dims_rope=[2, 2, 4],
    )
    pipe = FluxPipeline(
        transformer=transformer, scheduler=_flow_scheduler(), vae=_flow_vae(),
        text_encoder=l, tokenizer=clip_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer(512),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def chroma(seed: int = 0, layers: int = 1, single: int = 2):  # noqa: ANN201
    """ChromaPipeline: T5 only (masked past the first pad), its own prompt encoding, CFG as two calls."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    from tiny_t5 import tiny_t5

    t5 = tiny_t5(seed=seed + 2, **T5_SIZES)
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=layers, num_single_layers=single, attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS, joint_attention_dim=T5_WIDTH, axes_dims_rope=(2, 2, 4),
        approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=1,
    )
    pipe = ChromaPipeline(
        scheduler=_flow_scheduler(), vae=_flow_vae(), text_encoder=t5, tokenizer=t5_tokenizer(512), transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, seed: int = 0, steps: int = 2, size: int = IMAGE, **kwargs):  # noqa: ANN001, ANN201
    """`steps` denoising steps at size², latent output (the exact numbers the tests compare), fixed seed."""
    return pipe(
        num_inference_steps=steps, height=size, width=size, output_type="latent",
        generator=torch.Generator().manual_seed(seed), **kwargs,
    ).images


# ---- single files in the original checkpoints' key names (what users download) ----
# Names as the real files spell them (BFL's flux1-dev / Chroma: `double_blocks.N.img_attn.qkv.weight`,
# `single_blocks.N.linear1.weight`, `…norm.key_norm.scale`; SD3: `model.diffusion_model.joint_blocks.N.x_block
# .attn.qkv.weight`, `text_encoders.clip_l.transformer.text_model.…`); each builder uses every tensor of the
# diffusers transformer once (checked), so the file is whole.


class _Writer:
    """Collects original-name tensors from a diffusers state dict, tracking which diffusers keys were used."""

    def __init__(self, state: dict, prefix: str = ""):
        self.state, self.prefix, self.out, self.used = state, prefix, {}, set()

    def put(self, original: str, *names: str, swap: bool = False) -> None:
        """original ← cat(names) (rows); swap: diffusers' (scale, shift) halves back to the file's (shift, scale)."""
        if not all(n in self.state for n in names):
            return
        t = torch.cat([self.state[n] for n in names], dim=0)
        if swap:
            scale, shift = t.chunk(2, dim=0)
            t = torch.cat([shift, scale], dim=0)
        self.out[self.prefix + original] = t.detach().clone().contiguous()
        self.used.update(names)

    def done(self) -> dict:
        left = set(self.state) - self.used
        assert not left, f"tensors the file would lack: {sorted(left)[:5]}"
        return self.out


def flux_original(transformer, prefix: str = "") -> dict:  # noqa: ANN001
    """A Flux or Chroma transformer's tensors under BFL's / Chroma's names (prefix: ComfyUI's `model.diffusion_model.`)."""
    w = _Writer(transformer.state_dict(), prefix)
    for p in ("weight", "bias"):
        for orig, ours in (("img_in", "x_embedder"), ("txt_in", "context_embedder"), ("final_layer.linear", "proj_out"),
                           ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
                           ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
                           ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
                           ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
                           ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
                           ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
                           ("distilled_guidance_layer.in_proj", "distilled_guidance_layer.in_proj"),
                           ("distilled_guidance_layer.out_proj", "distilled_guidance_layer.out_proj")):
            w.put(f"{orig}.{p}", f"{ours}.{p}")
        w.put(f"final_layer.adaLN_modulation.1.{p}", f"norm_out.linear.{p}", swap=True)
        for i in range(len(getattr(transformer, "distilled_guidance_layer", None) and transformer.distilled_guidance_layer.layers or [])):
            g = f"distilled_guidance_layer.layers.{i}"
            w.put(f"{g}.in_layer.{p}", f"{g}.linear_1.{p}")
            w.put(f"{g}.out_layer.{p}", f"{g}.linear_2.{p}")
        for i in range(len(transformer.transformer_blocks)):
            b, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
            w.put(f"{b}.img_mod.lin.{p}", f"{d}.norm1.linear.{p}")
            w.put(f"{b}.txt_mod.lin.{p}", f"{d}.norm1_context.linear.{p}")
            w.put(f"{b}.img_attn.qkv.{p}", f"{d}.attn.to_q.{p}", f"{d}.attn.to_k.{p}", f"{d}.attn.to_v.{p}")
            w.put(f"{b}.txt_attn.qkv.{p}", f"{d}.attn.add_q_proj.{p}", f"{d}.attn.add_k_proj.{p}", f"{d}.attn.add_v_proj.{p}")
            w.put(f"{b}.img_attn.proj.{p}", f"{d}.attn.to_out.0.{p}")
            w.put(f"{b}.txt_attn.proj.{p}", f"{d}.attn.to_add_out.{p}")
            w.put(f"{b}.img_mlp.0.{p}", f"{d}.ff.net.0.proj.{p}")
            w.put(f"{b}.img_mlp.2.{p}", f"{d}.ff.net.2.{p}")
            w.put(f"{b}.txt_mlp.0.{p}", f"{d}.ff_context.net.0.proj.{p}")
            w.put(f"{b}.txt_mlp.2.{p}", f"{d}.ff_context.net.2.{p}")
        for i in range(len(transformer.single_transformer_blocks)):
            b, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
            w.put(f"{b}.modulation.lin.{p}", f"{d}.norm.linear.{p}")
            w.put(f"{b}.linear1.{p}", f"{d}.attn.to_q.{p}", f"{d}.attn.to_k.{p}", f"{d}.attn.to_v.{p}", f"{d}.proj_mlp.{p}")
            w.put(f"{b}.linear2.{p}", f"{d}.proj_out.{p}")
    for i in range(len(getattr(transformer, "distilled_guidance_layer", None) and transformer.distilled_guidance_layer.norms or [])):
        w.put(f"distilled_guidance_layer.norms.{i}.scale", f"distilled_guidance_layer.norms.{i}.weight")
    for i in range(len(transformer.transformer_blocks)):
        b, d = f"double_blocks.{i}", f"transformer_blocks.{i}.attn"
        w.put(f"{b}.img_attn.norm.query_norm.scale", f"{d}.norm_q.weight")
        w.put(f"{b}.img_attn.norm.key_norm.scale", f"{d}.norm_k.weight")
        w.put(f"{b}.txt_attn.norm.query_norm.scale", f"{d}.norm_added_q.weight")
        w.put(f"{b}.txt_attn.norm.key_norm.scale", f"{d}.norm_added_k.weight")
    for i in range(len(transformer.single_transformer_blocks)):
        w.put(f"single_blocks.{i}.norm.query_norm.scale", f"single_transformer_blocks.{i}.attn.norm_q.weight")
        w.put(f"single_blocks.{i}.norm.key_norm.scale", f"single_transformer_blocks.{i}.attn.norm_k.weight")
    return w.done()


def sd3_original(pipe, text_encoders: bool = True) -> dict:  # noqa: ANN001
    """An SD3.5-shaped pipeline as one file: `model.diffusion_model.*` (SD3's original names) and, with
    text_encoders, `text_encoders.clip_l / clip_g / t5xxl.transformer.*` (transformers' names; SD3's CLIP-L is
    stored without its projection, which is the identity: the pipeline's must be too)."""
    t = pipe.transformer
    w = _Writer(t.state_dict(), "model.diffusion_model.")
    last = len(t.transformer_blocks) - 1
    w.put("pos_embed", "pos_embed.pos_embed")
    for p in ("weight", "bias"):
        for orig, ours in (("x_embedder.proj", "pos_embed.proj"), ("context_embedder", "context_embedder"),
                           ("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
                           ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
                           ("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
                           ("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
                           ("final_layer.linear", "proj_out")):
            w.put(f"{orig}.{p}", f"{ours}.{p}")
        w.put(f"final_layer.adaLN_modulation.1.{p}", f"norm_out.linear.{p}", swap=True)
        for i in range(last + 1):
            x, c, d = f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block", f"transformer_blocks.{i}"
            w.put(f"{x}.attn.qkv.{p}", f"{d}.attn.to_q.{p}", f"{d}.attn.to_k.{p}", f"{d}.attn.to_v.{p}")
            w.put(f"{c}.attn.qkv.{p}", f"{d}.attn.add_q_proj.{p}", f"{d}.attn.add_k_proj.{p}", f"{d}.attn.add_v_proj.{p}")
            w.put(f"{x}.attn2.qkv.{p}", f"{d}.attn2.to_q.{p}", f"{d}.attn2.to_k.{p}", f"{d}.attn2.to_v.{p}")
            w.put(f"{x}.attn.proj.{p}", f"{d}.attn.to_out.0.{p}")
            w.put(f"{x}.attn2.proj.{p}", f"{d}.attn2.to_out.0.{p}")
            w.put(f"{c}.attn.proj.{p}", f"{d}.attn.to_add_out.{p}")
            w.put(f"{x}.adaLN_modulation.1.{p}", f"{d}.norm1.linear.{p}")
            w.put(f"{c}.adaLN_modulation.1.{p}", f"{d}.norm1_context.linear.{p}", swap=i == last)
            w.put(f"{x}.mlp.fc1.{p}", f"{d}.ff.net.0.proj.{p}")
            w.put(f"{x}.mlp.fc2.{p}", f"{d}.ff.net.2.{p}")
            w.put(f"{c}.mlp.fc1.{p}", f"{d}.ff_context.net.0.proj.{p}")
            w.put(f"{c}.mlp.fc2.{p}", f"{d}.ff_context.net.2.{p}")
    for i in range(last + 1):
        x, c, d = f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block", f"transformer_blocks.{i}"
        for attn in ("attn", "attn2"):
            w.put(f"{x}.{attn}.ln_q.weight", f"{d}.{attn}.norm_q.weight")
            w.put(f"{x}.{attn}.ln_k.weight", f"{d}.{attn}.norm_k.weight")
        w.put(f"{c}.attn.ln_q.weight", f"{d}.attn.norm_added_q.weight")
        w.put(f"{c}.attn.ln_k.weight", f"{d}.attn.norm_added_k.weight")
    out = w.done()
    if text_encoders:
        l, g, t5 = pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3
        assert torch.equal(l.text_projection.weight, torch.eye(l.config.hidden_size)), "SD3 files store CLIP-L unprojected"
        for prefix, enc, skip in (("clip_l", l, "text_projection."), ("clip_g", g, None), ("t5xxl", t5, None)):
            for k, v in enc.state_dict().items():
                if skip is None or not k.startswith(skip):
                    out[f"text_encoders.{prefix}.transformer.{k}"] = v.detach().clone().contiguous()
    return out


def sd3_for_single_file(seed: int = 0):  # noqa: ANN201
    """sd3() with CLIP-L's projection the identity, as SD3's single files imply (diffusers loads it so)."""
    pipe = sd3(seed)
    with torch.no_grad():
        pipe.text_encoder.text_projection.weight.copy_(torch.eye(pipe.text_encoder.config.hidden_size))
    return pipe


def ldm_vae(vae, prefix: str = "first_stage_model.") -> dict:  # noqa: ANN001
    """An AutoencoderKL under the original (LDM) names SD3's all-in-one files use: diffusers' own
    DIFFUSERS_TO_LDM_MAPPING["vae"] for the top-level tensors, and the reverse of its block renames
    (`down.{i}.block.{j}`, `mid.block_{k+1}`, `mid.attn_1.{q,k,v,proj_out,norm}` as 1×1 convs, decoder
    `up.{n-1-i}`: LDM numbers the decoder's blocks from the lowest resolution up, `nin_shortcut`)."""
    import re

    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    ups = len(vae.decoder.up_blocks)
    rules = (
        (r"encoder\.down_blocks\.(\d+)\.resnets\.", lambda m: f"encoder.down.{m[1]}.block."),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{ups - 1 - int(m[1])}.block."),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{ups - 1 - int(m[1])}.upsample."),
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.", lambda m: f"{m[1]}.mid.attn_1."),
    )
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, t in vae.state_dict().items():
        name = top.get(key)
        if name is None:
            name = key.replace("conv_shortcut", "nin_shortcut")
            for pattern, repl in rules:
                name = re.sub(pattern, repl, name)
            if ".mid.attn_1." in name:
                head, _, leaf = name.partition(".mid.attn_1.")
                layer, _, param = leaf.rpartition(".")
                name = f"{head}.mid.attn_1.{attn[layer]}.{param}"
                if param == "weight" and layer != "group_norm":
                    t = t[:, :, None, None]  # LDM's attention projections are 1×1 convolutions
        out[prefix + name] = t.detach().clone().contiguous()
    return out
