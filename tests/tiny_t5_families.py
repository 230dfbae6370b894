"""Tiny random text encoders of the T5-only families (Chroma, Wan, PixArt-Σ, AuraFlow) inside real diffusers
pipeline objects (the text components only: diffusers' constructors take None for the others, and
`encode_prompt` reads only the tokenizer and the text encoder), saved as the folders users download, and as
ComfyUI's single files (`umt5_xxl_fp16.safetensors`, `umt5_xxl_fp8_e4m3fn_scaled.safetensors`).

The T5 v1.1 families get transformers' `T5EncoderModel`, Wan and AuraFlow `UMT5EncoderModel` (a table in
every block), every parameter random (norms around 1)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tiny_pipelines import t5_tokenizer
from tiny_t5 import randomize_t5_, tiny_t5, to_fp8

FAMILY_PIPELINES = {"chroma": "ChromaPipeline", "wan": "WanPipeline", "pixart-sigma": "PixArtSigmaPipeline",
                    "auraflow": "AuraFlowPipeline"}
UMT5 = ("wan", "auraflow")
SIZES = dict(d_model=64, d_kv=16, d_ff=96, num_layers=3, num_heads=4)


def tiny_umt5(seed: int = 0, vocab_size: int = 640, **overrides):  # noqa: ANN201
    """A UMT5EncoderModel with every parameter random (each block's relative-attention table its own)."""
    from transformers import UMT5Config, UMT5EncoderModel

    kw = dict(SIZES, vocab_size=vocab_size, relative_attention_num_buckets=32, relative_attention_max_distance=128,
              feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = UMT5EncoderModel(UMT5Config(**kw)).eval()
    return randomize_t5_(model, seed)


def text_encoder(family: str, seed: int = 0):  # noqa: ANN201
    return tiny_umt5(seed) if family in UMT5 else tiny_t5(seed, **SIZES)


def pipeline(family: str, seed: int = 0):  # noqa: ANN201
    """The family's real diffusers pipeline with a tiny random text encoder and the tiny T5 tokenizer."""
    import diffusers

    cls = getattr(diffusers, FAMILY_PIPELINES[family])
    import inspect

    kw = {k: None for k in inspect.signature(cls.__init__).parameters if k not in ("self", "boundary_ratio", "expand_timesteps")}
    kw.update(text_encoder=text_encoder(family, seed), tokenizer=t5_tokenizer())
    return cls(**kw)


def save_folder(pipe, folder: Path) -> Path:  # noqa: ANN001
    """The pipeline saved as diffusers saves it (model_index.json, text_encoder/, tokenizer/)."""
    pipe.save_pretrained(str(folder))
    return folder


def comfy_files(model, folder: Path) -> dict[str, Path]:  # noqa: ANN001
    """ComfyUI's umT5 files (bare keys) beside a `tokenizer/` folder: fp16 and scaled fp8."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd.setdefault("encoder.embed_tokens.weight", sd["shared.weight"].clone())
    t5_tokenizer().save_pretrained(str(folder / "tokenizer"))
    fp16 = folder / "umt5_xxl_fp16.safetensors"
    save_file({k: v.half() for k, v in sd.items()}, str(fp16))
    out = {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.dim() == 2 and ("SelfAttention" in k or "DenseReluDense" in k) and "relative" not in k:
            scale = v.abs().max().float() / 448.0
            out[k] = to_fp8(v.float() / scale)
            out[k[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[k] = v.half()
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    scaled = folder / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    save_file(out, str(scaled))
    return {"fp16": fp16, "fp8_scaled": scaled, "state": sd}
