"""Random-weight CLIP text models (transformers 5) written in every real weight layout.

The reference side of the encoder tests: a `TinyFamily` holds transformers models (the oracle), and
`write_layout(name, family, folder)` saves the same weights the way real files hold them:

- "hf"             HF model folder, 4.x key spelling (`text_model.…`), config.json, tokenizer files
- "diffusers"      pipeline folder: text_encoder[_2]/ + tokenizer[_2]/ (SD2: only depth−1 layers stored)
- "single.safetensors" / "single.ckpt"   SD1 / SD2 / SDXL single files (ckpt = torch.save of a plain dict
                   {"state_dict": …}), with fake UNet/VAE tensors full of NaN: loading must not read them
- "openclip"       OpenAI / open_clip state dict (fused in_proj, text_projection as x @ W), .pt
- "longclip"       Long-CLIP checkpoint: OpenAI keys, positional_embedding + positional_embedding_res

Sizes: head width 64 (as every real CLIP; heads are not visible in weights), vocab 49408 so real
token ids work, a few layers. Every parameter (LN and biases included) is random so a mis-mapped
tensor cannot hide.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from clip_files import write_tokenizer

from sdclip.conventions.family import FAMILIES, TOWERS


#: tower → transformers config of the tiny stand-in (real: sdclip.conventions.family's towers)
TINY: dict[str, dict] = {
    "clip-vit-l-14": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=2,
              hidden_act="quick_gelu", max_position_embeddings=77),
    "openclip-vit-h-14": dict(hidden_size=128, intermediate_size=320, num_hidden_layers=5, num_attention_heads=2,
              hidden_act="gelu", max_position_embeddings=77),
    "openclip-vit-bigg-14": dict(hidden_size=192, intermediate_size=384, num_hidden_layers=6, num_attention_heads=3,
              hidden_act="gelu", max_position_embeddings=77, projection_dim=80),
    "longclip-l": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=2,
                 hidden_act="quick_gelu", max_position_embeddings=248),
}
#: the real sizes (for slow tests)
REAL: dict[str, dict] = {
    "clip-vit-l-14": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", max_position_embeddings=77),
    "openclip-vit-h-14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              hidden_act="gelu", max_position_embeddings=77),
    "openclip-vit-bigg-14": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              hidden_act="gelu", max_position_embeddings=77, projection_dim=1280),
}
#: family → the towers of its encoders, in pipeline order (from sdclip's one table of families)
ROLES = {name: tuple(r.tower.name for r in fam.roles) for name, fam in FAMILIES.items()}
LAYOUTS = ("hf", "diffusers", "single.safetensors", "single.ckpt", "openclip", "longclip")
#: which layouts each family exists in
FAMILY_LAYOUTS = {
    "sd1": ("hf", "diffusers", "single.safetensors", "single.ckpt", "openclip"),
    "sd2": ("hf", "diffusers", "single.safetensors", "single.ckpt", "openclip"),
    "sdxl": ("diffusers", "single.safetensors", "single.ckpt"),
    "longclip": ("hf", "longclip"),
}
UNET_KEYS = ("model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight")


def tiny_config(role: str, sizes: dict[str, dict] = TINY, **overrides) -> CLIPTextConfig:
    kw = dict(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
              layer_norm_eps=1e-5, attention_dropout=0.0)
    kw.update(sizes[role])
    kw.update(overrides)
    return CLIPTextConfig(**kw)


def tiny_model(role: str, seed: int = 0, sizes: dict[str, dict] = TINY, **overrides):
    """A transformers CLIPTextModel (CLIPTextModelWithProjection for G) with every parameter random."""
    cfg = tiny_config(role, sizes, **overrides)
    cls = CLIPTextModelWithProjection if TOWERS[role].projection else CLIPTextModel
    torch.manual_seed(seed)
    return randomize_(cls(cfg).eval(), seed)


def randomize_(model, seed: int, scale: float = 0.05):  # noqa: ANN001, ANN201
    """Every parameter random (LayerNorm weights near 1, LN biases included), so a mis-mapped tensor
    cannot hide; returns the model, frozen."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return model.requires_grad_(False)


@dataclass
class TinyFamily:
    """HF reference models of one family, in the order the pipeline concatenates them."""

    family: str
    models: tuple

    @property
    def roles(self) -> tuple[str, ...]:
        return ROLES[self.family]


def tiny_family(family: str, seed: int = 0, sizes: dict[str, dict] = TINY) -> TinyFamily:
    return TinyFamily(family, tuple(tiny_model(r, seed + i, sizes) for i, r in enumerate(ROLES[family])))


# ---- state dicts in the real spellings ------------------------------------------------------------

def hf4_state_dict(model) -> dict[str, torch.Tensor]:
    """Keys as transformers 4.x saves them (`text_model.…`, root `text_projection.weight`)."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if isinstance(model, CLIPTextModelWithProjection):
        return sd
    return {"text_model." + k: v for k, v in sd.items()}


def _text(model) -> CLIPTextModel:
    return model.text_model if isinstance(model, CLIPTextModelWithProjection) else model


def open_clip_state_dict(model, seed: int = 0) -> dict[str, torch.Tensor]:
    """OpenAI / open_clip keys: fused in_proj (q;k;v), text_projection stored [D, P] (x @ W).

    A model without an HF projection gets a random [D, D] one, as real open_clip dicts always have."""
    t = _text(model)
    sd: dict[str, torch.Tensor] = {
        "token_embedding.weight": t.embeddings.token_embedding.weight,
        "positional_embedding": t.embeddings.position_embedding.weight,
        "ln_final.weight": t.final_layer_norm.weight,
        "ln_final.bias": t.final_layer_norm.bias,
        "logit_scale": torch.tensor(4.6052),
    }
    for i, layer in enumerate(t.encoder.layers):
        p, a = f"transformer.resblocks.{i}.", layer.self_attn
        sd[p + "attn.in_proj_weight"] = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        sd[p + "attn.in_proj_bias"] = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        for ours, mod in (("attn.out_proj", a.out_proj), ("ln_1", layer.layer_norm1), ("ln_2", layer.layer_norm2),
                          ("mlp.c_fc", layer.mlp.fc1), ("mlp.c_proj", layer.mlp.fc2)):
            sd[p + ours + ".weight"] = mod.weight
            sd[p + ours + ".bias"] = mod.bias
    if isinstance(model, CLIPTextModelWithProjection):
        sd["text_projection"] = model.text_projection.weight.T
    else:
        d = t.config.hidden_size
        sd["text_projection"] = torch.randn(d, d, generator=torch.Generator().manual_seed(seed)) * 0.05
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def _fake_unet() -> dict[str, torch.Tensor]:
    """Tensors a loader must never read (NaN: reading and checking them would fail the load)."""
    return {k: torch.full((4, 4, 3, 3), float("nan")) for k in UNET_KEYS}


def single_file_state_dict(fam: TinyFamily) -> dict[str, torch.Tensor]:
    """SD1 / SD2 / SDXL single-file keys (diffusers' single-file loader spells them the same)."""
    sd = _fake_unet()
    if fam.family == "sd1":
        sd.update({"cond_stage_model.transformer." + k: v for k, v in hf4_state_dict(fam.models[0]).items()})
        sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    elif fam.family == "sd2":
        sd.update({"cond_stage_model.model." + k: v for k, v in open_clip_state_dict(fam.models[0]).items()})
    elif fam.family == "sdxl":
        sd.update({"conditioner.embedders.0.transformer." + k: v for k, v in hf4_state_dict(fam.models[0]).items()})
        sd.update({"conditioner.embedders.1.model." + k: v for k, v in open_clip_state_dict(fam.models[1]).items()})
    else:
        raise ValueError(f"no single-file layout for {fam.family}")
    return sd


def longclip_state_dict(model, seed: int = 0) -> dict[str, torch.Tensor]:
    """Long-CLIP: positions < 20 live in positional_embedding, the rest in positional_embedding_res (the
    other rows of each hold noise that must not be used); plus some vision keys to be ignored."""
    sd = open_clip_state_dict(model, seed)
    pos = sd["positional_embedding"]
    g = torch.Generator().manual_seed(seed + 1)
    first, res = torch.randn(pos.shape, generator=g), torch.randn(pos.shape, generator=g)
    first[:20], res[20:] = pos[:20], pos[20:]
    sd["positional_embedding"], sd["positional_embedding_res"] = first, res
    sd["visual.proj"] = torch.randn(8, 8, generator=g)
    sd["visual.conv1.weight"] = torch.randn(8, 3, 2, 2, generator=g)
    return sd


# ---- files and folders ----------------------------------------------------------------------------

def _write_model_folder(model, folder: Path, layers: int | None = None) -> Path:
    """config.json + model.safetensors with 4.x keys; `layers` keeps only the first N blocks."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    sd = hf4_state_dict(model)
    if layers is not None:
        cfg["num_hidden_layers"] = layers
        sd = {k: v for k, v in sd.items() if not _layer_at_least(k, layers)}
    cfg["architectures"] = [type(model).__name__]
    (folder / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _layer_at_least(key: str, n: int) -> bool:
    marker = ".encoder.layers."
    if marker not in key:
        return False
    return int(key.split(marker)[1].split(".")[0]) >= n


def write_hf_folder(model, folder: Path) -> Path:
    _write_model_folder(model, folder)
    write_tokenizer(folder, "<|endoftext|>" if _text(model).config.hidden_act == "quick_gelu" else "!")
    return folder


def write_diffusers(fam: TinyFamily, folder: Path) -> Path:
    """A diffusers pipeline folder (text parts only); SD2's text_encoder keeps depth − 1 blocks."""
    folder.mkdir(parents=True, exist_ok=True)
    cls = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline", "longclip": "StableDiffusionPipeline",
           "sdxl": "StableDiffusionXLPipeline"}[fam.family]
    index = {"_class_name": cls, "text_encoder": ["transformers", type(fam.models[0]).__name__],
             "tokenizer": ["transformers", "CLIPTokenizer"]}
    first = fam.models[0]
    layers = first.config.num_hidden_layers - 1 if fam.family == "sd2" else None
    _write_model_folder(first, folder / "text_encoder", layers)
    write_tokenizer(folder / "tokenizer", "!" if fam.family == "sd2" else "<|endoftext|>")
    if fam.family == "sdxl":
        _write_model_folder(fam.models[1], folder / "text_encoder_2")
        write_tokenizer(folder / "tokenizer_2", "!")
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"])
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def save_state_dict(sd: dict[str, torch.Tensor], path: Path) -> Path:
    """.safetensors via safetensors; anything else via torch.save({"state_dict": sd}) (a plain dict)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in sd.items()}
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd, "global_step": 1}, path)
    return path


def write_layout(layout: str, fam: TinyFamily, folder: Path) -> Path:
    """Write `fam` in `layout` under `folder`; returns the path to hand to load_text_encoders."""
    folder = Path(folder)
    if layout == "hf":
        return write_hf_folder(fam.models[0], folder / "hf")
    if layout == "diffusers":
        return write_diffusers(fam, folder / "pipeline")
    if layout.startswith("single."):
        return save_state_dict(single_file_state_dict(fam), folder / f"model.{layout.split('.')[1]}")
    if layout == "openclip":
        return save_state_dict(open_clip_state_dict(fam.models[0]), folder / "open_clip.pt")
    if layout == "longclip":
        return save_state_dict(longclip_state_dict(fam.models[0]), folder / "longclip-L.pt")
    raise ValueError(f"unknown layout {layout!r}: one of {LAYOUTS}")


# ---- the oracle -----------------------------------------------------------------------------------

@torch.no_grad()
def reference(model, ids: torch.Tensor) -> dict[str, torch.Tensor | tuple]:
    """transformers' outputs: hidden_states (embeddings + every layer), last (final LN), pooled (projected
    for G)."""
    t = _text(model)
    out = t(input_ids=ids, output_hidden_states=True)
    pooled = out.pooler_output
    if isinstance(model, CLIPTextModelWithProjection):
        pooled = model.text_projection(pooled)
    return {"hidden_states": tuple(out.hidden_states), "last": out.last_hidden_state, "pooled": pooled}


def sample_ids(rows: int = 3, length: int = 77, seed: int = 0, pad: int = 49407) -> torch.Tensor:
    """BOS + random real tokens + EOS + padding, rows of different lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((rows, length), pad, dtype=torch.long)
    for r in range(rows):
        n = int(torch.randint(1, length - 1, (1,), generator=g)) if r else length - 2
        ids[r, 0] = 49406
        ids[r, 1 : n + 1] = torch.randint(0, 49406, (n,), generator=g)
        ids[r, n + 1] = 49407
    return ids
