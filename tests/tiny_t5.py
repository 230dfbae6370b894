"""Tiny T5 tokenizers and random T5 encoders (transformers 5) written in every real layout.

- Tokenizer: a SentencePiece Unigram model trained here on the prompt corpus with T5's ids (pad 0, `</s>`
  1, `<unk>` 2, no BOS) and the `nmt_nfkc` normaliser T5's real model uses, so the folder carries a real
  precompiled charsmap; transformers' `T5Tokenizer` converts it and `save_pretrained` writes
  tokenizer.json + tokenizer_config.json as it does for any model. Variants: the `spiece.model`-only
  folder, and a tokenizer.json in the older converter's pipeline (Replace + Metaspace normaliser, as in
  SD3's `tokenizer_3` made with transformers 4).
- Encoder: `T5EncoderModel` with every parameter random (norms included), saved as
  "folder" (save_pretrained: config.json + model.safetensors), "sharded" (index json + shards),
  "single" (SD3 single file: `text_encoders.t5xxl.transformer.` + CLIP keys + NaN transformer tensors
  that must never be read), "fp16" / "fp8" / "fp8_scaled" (ComfyUI's separate bare-key files).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel

from tokenizer_corpus import corpus

LAYOUTS = ("folder", "sharded", "single", "fp16", "fp8", "fp8_scaled")
SINGLE_PREFIX = "text_encoders.t5xxl.transformer."
TINY = dict(d_model=64, d_kv=16, d_ff=96, num_layers=3, num_heads=4, relative_attention_num_buckets=32,
            relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6)
EXTRA_IDS = 8


def build_spiece(folder: Path, vocab_size: int = 600) -> Path:
    """A SentencePiece Unigram model with T5's special ids, trained on the prompt corpus."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(800)), model_writer=out, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name="nmt_nfkc", character_coverage=1.0,
        minloglevel=2, num_threads=1,
    )
    (folder / "spiece.model").write_bytes(out.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({"extra_ids": EXTRA_IDS, "tokenizer_class": "T5Tokenizer"}))
    return folder


def build_tokenizer(root: Path) -> dict[str, Path]:
    """{"spiece": spiece-only folder, "json": transformers-saved folder, "legacy": old-pipeline folder}."""
    from transformers import T5Tokenizer

    spiece = build_spiece(root / "spiece")
    tok = T5Tokenizer.from_pretrained(str(spiece), extra_ids=EXTRA_IDS)
    saved = root / "json"
    tok.save_pretrained(str(saved))
    legacy = root / "legacy"
    legacy.mkdir(exist_ok=True)
    doc = json.loads((saved / "tokenizer.json").read_text())
    charsmap = doc["normalizer"]["precompiled_charsmap"]
    doc["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Precompiled", "precompiled_charsmap": charsmap},
        {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]}
    doc["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    (legacy / "tokenizer.json").write_text(json.dumps(doc))
    (legacy / "tokenizer_config.json").write_text((saved / "tokenizer_config.json").read_text())
    return {"spiece": spiece, "json": saved, "legacy": legacy}


def tiny_config(vocab_size: int = 640, **overrides) -> T5Config:
    kw = dict(TINY, vocab_size=vocab_size, dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)
    kw.update(overrides)
    return T5Config(**kw)


def tiny_t5(seed: int = 0, vocab_size: int = 640, **overrides) -> T5EncoderModel:
    """A T5EncoderModel with every parameter random (RMSNorm weights around 1, not exactly 1)."""
    torch.manual_seed(seed)
    model = T5EncoderModel(tiny_config(vocab_size, **overrides)).eval()
    return randomize_t5_(model, seed)


def randomize_t5_(model, seed: int):  # noqa: ANN001, ANN201 (a T5 or umT5 encoder)
    """Every parameter random in place (RMSNorm weights around 1, not exactly 1); returns the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "shared" in name else p.shape[-1] ** -0.5))
    return model


def state(model: T5EncoderModel) -> dict[str, torch.Tensor]:
    """The model's tensors as real T5 files hold them (shared.weight; the tied encoder.embed_tokens too)."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd.setdefault("encoder.embed_tokens.weight", sd["shared.weight"].clone())
    return sd


def to_fp8(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float8_e4m3fn)


def write_layout(layout: str, model: T5EncoderModel, folder: Path) -> Path:
    """Write `model` in `layout`; returns the path a user would pass."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = state(model)
    if layout == "folder":
        model.save_pretrained(str(folder / "text_encoder_3"))
        return folder / "text_encoder_3"
    if layout == "sharded":
        model.save_pretrained(str(folder / "text_encoder_2"), max_shard_size="100KB")
        return folder / "text_encoder_2"
    if layout == "single":
        out = {SINGLE_PREFIX + k: v for k, v in sd.items()}
        out["text_encoders.clip_l.transformer.text_model.final_layer_norm.weight"] = torch.ones(8)
        out["model.diffusion_model.x_embedder.proj.weight"] = torch.full((4, 4), float("nan"))
        path = folder / "sd3_single.safetensors"
        save_file(out, str(path))
        return path
    if layout == "fp16":
        path = folder / "t5xxl_fp16.safetensors"
        save_file({k: v.half() for k, v in sd.items()}, str(path))
        return path
    if layout == "fp8":
        path = folder / "t5xxl_fp8_e4m3fn.safetensors"
        save_file({k: to_fp8(v) if v.dim() == 2 else v.half() for k, v in sd.items()}, str(path))
        return path
    if layout == "fp8_scaled":
        out = {}
        for k, v in sd.items():
            if k.endswith(".weight") and v.dim() == 2 and ("SelfAttention" in k or "DenseReluDense" in k) \
                    and "relative" not in k:
                scale = v.abs().max().float() / 448.0
                out[k] = to_fp8(v.float() / scale)
                out[k[: -len("weight")] + "scale_weight"] = scale.reshape(())
            else:
                out[k] = v.half()
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
        path = folder / "t5xxl_fp8_e4m3fn_scaled.safetensors"
        save_file(out, str(path))
        return path
    raise ValueError(layout)
