"""The T5-only families' text encoders (Chroma, Wan 2.1 / 2.2, PixArt-Σ, AuraFlow) from the files their users
have. One encoder each, read by sdclip.encoder.loading.t5 (T5 v1.1 or umT5, told apart by its tensors).

- diffusers pipeline folders: `model_index.json`'s `_class_name` (ChromaPipeline, WanPipeline, PixArtSigmaPipeline,
  AuraFlowPipeline and their img2img / video variants) names the family; `text_encoder/` (T5EncoderModel or
  UMT5EncoderModel) and `tokenizer/`. A folder with the transformer but no text encoder is refused with the
  files to add.
- ComfyUI's single files: `umt5_xxl_fp16.safetensors`, `umt5_xxl_fp8_e4m3fn_scaled.safetensors` (Wan;
  bare T5 keys, a relative-attention table in every block; scaled fp8's `scale_weight` applied), a umT5 of
  2048 width (AuraFlow), or a T5 v1.1 file (`t5xxl_fp16.safetensors`) with family= chroma / pixart-sigma.
  The tokenizer is looked for beside the file (`tokenizer/`, `umt5_tokenizer/`, `t5_tokenizer/`, or
  tokenizer.json / spiece.model in the same folder).
- a bare text-encoder folder (config.json with model_type t5 / umt5) with family= given.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sdclip.conventions.family import FAMILIES, T5_ONLY
from sdclip.encoder.loading.checkpoint import CheckpointError, TensorFile, open_tensor_file
from sdclip.encoder.loading.clip import LoadedEncoders
from sdclip.encoder.loading.sd3_flux import _model_index, _sample, _tokenizer_dir
from sdclip.encoder.loading.t5 import WEIGHT_NAMES, find_t5_prefix, load_t5, open_weights
from sdclip.encoder.t5 import T5Encoder

#: diffusers pipeline class → family (pipelines/chroma, wan, pixart_alpha, aura_flow of diffusers 0.42.1)
PIPELINES: dict[str, str] = {
    "ChromaPipeline": "chroma", "ChromaImg2ImgPipeline": "chroma",
    "WanPipeline": "wan", "WanImageToVideoPipeline": "wan", "WanVideoToVideoPipeline": "wan", "WanVACEPipeline": "wan",
    "PixArtSigmaPipeline": "pixart-sigma", "PixArtSigmaPAGPipeline": "pixart-sigma",
    "AuraFlowPipeline": "auraflow",
}
_TOKENIZER_DIRS = ("tokenizer", "umt5_tokenizer", "t5_tokenizer", "t5")
#: what a user adds beside a transformer-only download, per family
NEEDED: dict[str, str] = {
    "chroma": "text_encoder/ (T5-XXL: config.json + model.safetensors) and tokenizer/, or t5xxl_fp16.safetensors "
              "with its tokenizer folder",
    "wan": "text_encoder/ (umT5-XXL: config.json + model.safetensors) and tokenizer/, or umt5_xxl_fp16.safetensors "
           "(or umt5_xxl_fp8_e4m3fn_scaled.safetensors) with its tokenizer folder",
    "pixart-sigma": "text_encoder/ (T5-XXL: config.json + model.safetensors) and tokenizer/",
    "auraflow": "text_encoder/ (UMT5 / Pile-T5-XL: config.json + model.safetensors) and tokenizer/",
}


def pipeline_family(folder: Path) -> str | None:
    """The T5-only family a diffusers pipeline folder's model_index.json names, else None."""
    doc = _model_index(folder)
    name = doc.get("_class_name") if doc is not None else None
    return PIPELINES.get(name) if isinstance(name, str) else None


def umt5_file_family(f: TensorFile) -> str | None:
    """"wan" / "auraflow" for a bare umT5 encoder file (a table in every block), by its width; else None."""
    prefix = find_t5_prefix(f)
    if prefix is None or f"{prefix}encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in f:
        return None
    width = f.shape(next(prefix + k for k in ("shared.weight", "encoder.embed_tokens.weight") if prefix + k in f))[-1]
    return next((n for n in T5_ONLY if FAMILIES[n].roles[0].tower.width == width
                 and FAMILIES[n].roles[0].tower.name.startswith("umt5")), "wan")


def _fingerprint(fam: str, enc: T5Encoder) -> str:
    return hashlib.sha256(fam.encode() + _sample(enc)).hexdigest()[:32]


def _check_kind(fam: str, enc: T5Encoder, where: object) -> None:
    """The encoder is of the family's kind (umT5 for Wan / AuraFlow, T5 v1.1 for Chroma / PixArt-Σ)."""
    tower = FAMILIES[fam].roles[0].tower
    umt5 = tower.name.startswith("umt5")
    if enc.config.per_layer_bias != umt5:
        got = "a umT5 encoder (a relative-attention table per block)" if enc.config.per_layer_bias else "a T5 v1.1 encoder"
        raise CheckpointError(f"{where}: {fam} reads {'umT5' if umt5 else 'T5 v1.1'} ({tower.name}), the file holds {got}")


def _loaded(fam: str, enc: T5Encoder, tok: Path | None, source: str) -> LoadedEncoders:
    _check_kind(fam, enc, source)
    if tok is None:
        raise CheckpointError(f"{source}: no {fam} tokenizer found (a folder with tokenizer.json or spiece.model: "
                              f"{', '.join(_TOKENIZER_DIRS)}/ beside the file, or the pipeline's tokenizer/)")
    return LoadedEncoders(fam, (enc,), (None,), _fingerprint(fam, enc), source, t5_tokenizer_dir=tok)


def load_pipeline_folder(folder: Path, fam: str, family: str | None, dtype: torch.dtype, device) -> LoadedEncoders:  # noqa: ANN001
    """A diffusers Chroma / Wan / PixArt-Σ / AuraFlow pipeline folder: text_encoder/ and tokenizer/."""
    if family is not None and family != fam:
        raise CheckpointError(f"{folder}: family={family!r} but the folder holds a {fam!r} pipeline")
    te = folder / "text_encoder"
    if not (te / "config.json").is_file():
        weights = [n for n in WEIGHT_NAMES if (te / n).exists()]
        held = (f"text_encoder/ has weights ({weights[0]}) but no config.json" if weights
                else "no text_encoder/" if not te.exists() else "text_encoder/ has no config.json")
        raise CheckpointError(f"{folder}: a {fam} pipeline with {held}; add {NEEDED[fam]}")
    tok = _tokenizer_dir(folder / "tokenizer")
    if tok is None:
        raise CheckpointError(f"{folder}: a {fam} pipeline without tokenizer/ (tokenizer.json or spiece.model); "
                              f"add {NEEDED[fam]}")
    return _loaded(fam, load_t5(te, dtype, device), tok, str(folder))


def load_encoder_folder(folder: Path, fam: str, dtype: torch.dtype, device) -> LoadedEncoders:  # noqa: ANN001
    """A bare text-encoder folder (config.json model_type t5 / umt5) with family= given; tokenizer beside it."""
    tok = _find_tokenizer([folder.parent, folder])
    return _loaded(fam, load_t5(folder, dtype, device), tok, str(folder))


def _find_tokenizer(bases: list[Path]) -> Path | None:
    found = next((d for b in bases for n in _TOKENIZER_DIRS if (d := _tokenizer_dir(b / n)) is not None), None)
    return found or next((b for b in bases if _tokenizer_dir(b) is not None), None)


def load_file(path: Path, family: str | None, dtype: torch.dtype, device) -> LoadedEncoders:  # noqa: ANN001
    """ComfyUI's single text-encoder file of a T5-only family (umT5 told by its tensors; a T5 v1.1 file
    needs family= chroma / pixart-sigma)."""
    f = open_weights(path)
    fam = family or umt5_file_family(f)
    if fam is None or fam not in T5_ONLY:
        raise CheckpointError(f"{path}: not a text encoder of {', '.join(T5_ONLY)}")
    if find_t5_prefix(f) is None:
        raise CheckpointError(f"{path}: holds no T5 encoder; {fam} needs {NEEDED[fam]}")
    enc = load_t5(f, dtype, device)
    return _loaded(fam, enc, _find_tokenizer([Path(path).parent]), str(path))


def is_umt5_file(path: Path) -> bool:
    """Whether a single file is a bare umT5 encoder (Wan's / AuraFlow's), read from its header only."""
    try:
        f = open_tensor_file(path)
    except CheckpointError:
        return False
    return umt5_file_family(f) is not None


def load(path: Path, family: str | None, dtype: torch.dtype, device) -> LoadedEncoders | None:  # noqa: ANN001
    """The T5-only family's encoder at `path`, or None where `path` is none of theirs (other loaders go on)."""
    path = Path(path)
    if path.is_dir():
        fam = pipeline_family(path)
        if fam is not None:
            return load_pipeline_folder(path, fam, family, dtype, device)
        if family in T5_ONLY:
            if (path / "model_index.json").is_file():
                raise CheckpointError(f"{path}: family={family!r} but model_index.json names another pipeline")
            if (path / "config.json").is_file():
                return load_encoder_folder(path, family, dtype, device)
            files = sorted(path.glob("*.safetensors"))
            if len(files) == 1:
                return load_file(files[0], family, dtype, device)
            raise CheckpointError(f"{path}: {family} needs {NEEDED[family]}")
        return None
    if family in T5_ONLY or (family is None and path.is_file() and is_umt5_file(path)):
        return load_file(path, family, dtype, device)
    return None


def pipeline_object_family(pipe: object) -> str | None:
    """The T5-only family of a live diffusers pipeline (by its class), else None."""
    return PIPELINES.get(type(pipe).__name__) if pipe is not None else None


def encoders_from_pipeline(pipe: object, fam: str) -> LoadedEncoders:
    """Our encoder from a live Chroma / Wan / PixArt-Σ / AuraFlow pipeline's `text_encoder`, mapped and checked
    as its saved files would be (in the pipeline's dtype; fp16 keeps `wo` as transformers loaded it)."""
    from sdclip.encoder.loading.checkpoint import MemoryTensors

    model = getattr(pipe, "text_encoder", None)
    if model is None:
        raise CheckpointError(f"the pipeline has no text_encoder; {fam} needs its T5")
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    first = next(model.parameters())
    wo = [v for k, v in sd.items() if k.endswith("DenseReluDense.wo.weight")]
    enc = load_t5(MemoryTensors(sd, "<text_encoder>"), first.dtype, first.device, config=model.config.to_dict(),
                  fp16_wo_fp32=bool(wo) and wo[0].dtype == torch.float32)
    _check_kind(fam, enc, "<text_encoder>")
    return LoadedEncoders(fam, (enc,), (None,), _fingerprint(fam, enc), "<pipeline>")
