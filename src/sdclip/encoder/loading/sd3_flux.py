"""SD3 / SD3.5 and Flux text encoders (CLIP-L, CLIP-G, T5 v1.1 XXL) from every layout their users have.

- diffusers pipeline folders: `model_index.json` names the pipeline; SD3 `text_encoder/` (CLIP-L with
  projection), `text_encoder_2/` (CLIP-G), `text_encoder_3/` (T5, may be absent: zeros as diffusers),
  `tokenizer/`, `tokenizer_2/`, `tokenizer_3/`; Flux `text_encoder/` (CLIP-L), `text_encoder_2/` (T5),
  `tokenizer/`, `tokenizer_2/` (T5).
- SD3 / SD3.5 single files: `text_encoders.clip_l.transformer.text_model.*` (no projection: identity, as
  diffusers' single-file loader sets), `text_encoders.clip_g.transformer.{text_model.*, text_projection.weight}`,
  `text_encoders.t5xxl.transformer.*` (optional; the `…_incl_clips` files leave it out).
- ComfyUI's separate files, as several paths or one folder: `clip_l.safetensors`, `clip_g.safetensors`
  (bare transformers keys `text_model.*`), `t5xxl_fp16.safetensors` / `t5xxl_fp8_e4m3fn.safetensors`
  (bare T5 keys). Which CLIP is which: the real widths (768 L, 1280 G), else the narrower is L.
  These files carry no T5 tokenizer: one is looked for beside them (`t5_tokenizer/`, `tokenizer_3/`,
  `tokenizer_2/`, or tokenizer.json / spiece.model in the same folder).
A Flux checkpoint holding only the diffusion transformer is refused with the names of the files to add.

Which role is read how is data: role i of the family lives in `text_encoder` / `text_encoder_{i+1}` (its
tokenizer in `tokenizer` / `tokenizer_{i+1}`), and `ROLE_LOADERS` says, per encoder kind, how these layouts
hold it (a CLIP tower found by its keys and built by `build_encoder`, or one whole T5 encoder): a loader
never asks which kind a role is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sdclip.bounded_files import read_json
from sdclip.conventions.family import FAMILIES, VIT_BIGG, VIT_L, EncoderRole
from sdclip.encoder.loading.checkpoint import CheckpointError, TensorFile, open_tensor_file
from sdclip.encoder.loading.clip import (
    LoadedEncoders, Part, _anchor, _hf_folder_part, build_encoder, find_parts, fingerprint,
)
from sdclip.encoder.loading.t5 import SINGLE_FILE_PREFIX, WEIGHT_NAMES, find_t5_prefix, load_t5, t5_folder
from sdclip.encoder.t5 import T5Encoder

SD3_PIPELINES = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline",
                 "StableDiffusion3ControlNetPipeline", "StableDiffusion3PAGPipeline")
FLUX_PIPELINES = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxFillPipeline",
                  "FluxControlPipeline", "FluxControlNetPipeline", "FluxKontextPipeline")
#: keys only a Flux diffusion transformer has (BFL / ComfyUI layout and diffusers layout)
_FLUX_TRANSFORMER = ("double_blocks.", "model.diffusion_model.double_blocks.", "transformer_blocks.0.attn.add_q_proj",
                     "single_transformer_blocks.")
_T5_TOKENIZER_DIRS = ("t5_tokenizer", "tokenizer_3", "tokenizer_2", "t5")
_NEEDED = {"sd3": "clip_l.safetensors, clip_g.safetensors and t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn.safetensors)",
           "flux": "clip_l.safetensors and t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn.safetensors)"}


def _model_index(folder: Path) -> dict | None:
    """The folder's model_index.json (None without one), read through the bounded reader."""
    index = folder / "model_index.json"
    if not index.exists():
        return None
    doc = read_json(index, CheckpointError, "unreadable model_index.json")
    if not isinstance(doc, dict):
        raise CheckpointError(f"{index}: unreadable model_index.json: a JSON object expected, found a {type(doc).__name__}")
    return doc


def pipeline_family(folder: Path) -> str | None:
    """"sd3" / "flux" for a diffusers pipeline folder with a T5 encoder (or naming one), else None."""
    doc = _model_index(folder)
    name = doc.get("_class_name") if doc is not None else None
    if name in SD3_PIPELINES or (folder / "text_encoder_3").is_dir():
        return "sd3"
    if name in FLUX_PIPELINES:
        return "flux"
    te2 = folder / "text_encoder_2"
    if te2.is_dir() and t5_folder(te2) is not None:
        return "flux"
    return None


def is_t5_file(f: TensorFile) -> bool:
    """A file holding SD3's `text_encoders.*`, a bare T5 encoder, or a Flux transformer (refused later)."""
    keys = f.keys()
    return (any(k.startswith("text_encoders.") for k in keys) or find_t5_prefix(f) is not None
            or _flux_transformer(keys))


def comfy_folder(folder: Path) -> bool:
    """A folder of ComfyUI text-encoder files (no diffusers/transformers layout, some .safetensors)."""
    return (not (folder / "model_index.json").is_file() and not (folder / "config.json").is_file()
            and not (folder / "text_encoder").is_dir()
            and any(f.name.lower().startswith(("clip_l", "clip_g", "t5")) for f in folder.glob("*.safetensors")))


def _flux_transformer(keys: Sequence[str]) -> bool:
    return any(k.startswith(_FLUX_TRANSFORMER) for k in keys)


def _sample(enc: T5Encoder) -> bytes:
    """A strided sample of the T5 weights for the fingerprint (same weights, same bytes, any layout)."""
    out = b""
    for t in (enc.embed, enc.final_norm, enc.rel_bias, enc.blocks[0].q.weight, enc.blocks[-1].wo.weight):
        flat = t.detach().reshape(-1)
        out += flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy().tobytes()
    return out + str(tuple(enc.config.__dict__.values())).encode()


def _fingerprint(fam: str, parts: list[Part], t5: T5Encoder | None) -> str:
    h = hashlib.sha256(fingerprint(fam, parts).encode())
    h.update(_sample(t5) if t5 is not None else b"no-t5")
    return h.hexdigest()[:32]


def _done(fam: str, parts: list[Part], t5, toks, t5_tok: Path | None, dtype, device, source: str) -> LoadedEncoders:  # noqa: ANN001
    encoders = _in_role_order(fam, [build_encoder(p, dtype, device) for p in parts], t5)
    if t5 is not None and t5_tok is None:
        raise CheckpointError(f"{source}: no T5 tokenizer found (a folder with tokenizer.json or spiece.model: "
                              f"{', '.join(_T5_TOKENIZER_DIRS)}/ beside the files, or the model's own tokenizer folder)")
    return LoadedEncoders(fam, encoders, tuple(toks), _fingerprint(fam, parts, t5), source, t5_tokenizer_dir=t5_tok)


def _role_name(index: int, stem: str) -> str:
    """Role `index`'s folder (and pipeline attribute) in diffusers: `text_encoder`, `text_encoder_2`, …"""
    return stem if index == 0 else f"{stem}_{index + 1}"


def _role_dir(folder: Path, index: int, stem: str) -> Path:
    return folder / _role_name(index, stem)


def _clip_folder(folder: Path, index: int, role: EncoderRole, fam: str, dtype, device) -> Part:  # noqa: ANN001
    d = _role_dir(folder, index, "text_encoder")
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{folder}: a {fam} pipeline needs {d.name}/ ({role.name}), missing")
    part = _hf_folder_part(d)
    part.role = role
    return part


def _t5_folder(folder: Path, index: int, role: EncoderRole, fam: str, dtype, device) -> T5Encoder | None:  # noqa: ANN001
    t5_dir = _role_dir(folder, index, "text_encoder")
    if t5_dir.exists() or fam == "flux":
        return _load_t5_dir(folder, t5_dir, fam, dtype, device)
    _check_t5_left_out(folder, t5_dir.name)
    return None


def _clip_module(model, name: str, role: EncoderRole, fam: str) -> Part:  # noqa: ANN001
    from sdclip.encoder.loading.checkpoint import MemoryTensors

    if model is None:
        raise CheckpointError(f"the pipeline has no {name} ({role.name}); {fam} needs it")
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    found = [p for p in find_parts(MemoryTensors(sd, f"<{name}>")) if p.layout == "hf"]
    if len(found) != 1:
        raise CheckpointError(f"{name} ({type(model).__name__}) is not one transformers CLIP text model")
    part = found[0]
    part.hf_config = model.config.to_dict()
    part.role = role
    return part


def _t5_module(model, name: str, role: EncoderRole, fam: str) -> T5Encoder | None:  # noqa: ANN001
    """The pipeline's T5 in its own dtype; a missing SD3 text_encoder_3 stays None (zeros)."""
    from sdclip.encoder.loading.checkpoint import MemoryTensors

    if model is None:
        return None
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    first = next(model.parameters())
    wo = [v for k, v in sd.items() if k.endswith("DenseReluDense.wo.weight")]
    return load_t5(MemoryTensors(sd, f"<{name}>"), first.dtype, first.device, config=model.config.to_dict(),
                   fp16_wo_fp32=bool(wo) and wo[0].dtype == torch.float32)


@dataclass(frozen=True)
class RoleLoader:
    """How SD3 / Flux layouts hold one encoder kind: the loading half of its lane (a new kind adds a line)."""

    #: a CLIP tower: found by its keys (several per file), mapped to a `Part`, built by build_encoder, its
    #: tokenizer among `tokenizer_dirs`; else one whole encoder (T5), its tokenizer `t5_tokenizer_dir`
    tower: bool
    #: (pipeline folder, role index, role, family, dtype, device) → a Part, an encoder, or None (left out)
    from_folder: Callable[..., Part | T5Encoder | None]
    #: (a live pipeline's module or None, its attribute name, role, family) → a Part, an encoder, or None
    from_module: Callable[..., Part | T5Encoder | None]


#: encoder kind → how these layouts hold it
ROLE_LOADERS: dict[str, RoleLoader] = {
    "clip": RoleLoader(True, _clip_folder, _clip_module),
    "t5": RoleLoader(False, _t5_folder, _t5_module),
}


def _loader(role: EncoderRole) -> RoleLoader:
    try:
        return ROLE_LOADERS[role.kind]
    except KeyError:
        raise CheckpointError(f"SD3 / Flux layouts hold no {role.kind} encoder ({role.name})") from None


def _towers(fam: str) -> list[EncoderRole]:
    """The family's CLIP-tower roles, in role order."""
    return [r for r in FAMILIES[fam].roles if _loader(r).tower]


def _in_role_order(fam: str, towers: list, whole) -> tuple:  # noqa: ANN001
    """The built towers (in role order) and the one whole encoder (or None), each at its role's place."""
    it = iter(towers)
    return tuple(next(it) if _loader(r).tower else whole for r in FAMILIES[fam].roles)


def _tokenizer_dir(path: Path) -> Path | None:
    # exists(), not is_file(): a FIFO or a device named tokenizer.json is read, and refused by kind, not skipped
    return path if path.is_dir() and ((path / "tokenizer.json").exists() or (path / "spiece.model").exists()) else None


def load_pipeline_folder(folder: Path, fam: str, family: str | None, dtype: torch.dtype, device) -> LoadedEncoders:  # noqa: ANN001
    """A diffusers SD3 / Flux pipeline folder."""
    if family is not None and family != fam:
        raise CheckpointError(f"{folder}: family={family!r} but the folder holds a {fam!r} pipeline")
    parts: list[Part] = []
    toks: list[Path | None] = []
    t5, tok_dir = None, None
    for i, role in enumerate(FAMILIES[fam].roles):
        loader = _loader(role)
        held = loader.from_folder(folder, i, role, fam, dtype, device)
        tok = _role_dir(folder, i, "tokenizer")
        if loader.tower:
            parts.append(held)
            toks.append(tok if tok.is_dir() else None)
        else:
            t5, tok_dir = held, _tokenizer_dir(tok)
    loaded = _done(fam, parts, t5, toks, tok_dir, dtype, device, str(folder))
    if t5 is None:  # diffusers' zeros are as wide as the transformer's joint_attention_dim
        loaded.t5_width = _joint_attention_dim(folder / "transformer" / "config.json")
    return loaded


def _load_t5_dir(folder: Path, t5_dir: Path, fam: str, dtype: torch.dtype, device) -> T5Encoder:  # noqa: ANN001
    """The pipeline's T5 folder, or one line saying why not. A folder that is there but unusable is never
    read as "no T5" (that would encode zeros without a word: issue 24, 0c)."""
    role = "text_encoder_2/ (T5)" if fam == "flux" else "text_encoder_3/ (T5)"
    if not t5_dir.exists():
        raise CheckpointError(f"{folder}: a Flux pipeline needs {role}, missing")
    if not t5_dir.is_dir():
        raise CheckpointError(f"{folder}: {role} is not a folder")
    cfg = t5_dir / "config.json"
    if not cfg.exists():
        weights = [n for n in WEIGHT_NAMES if (t5_dir / n).exists()]
        held = f"weights ({weights[0]}) but no config.json" if weights else "no config.json and no weights"
        drop = " — or remove the folder to run SD3 without T5 (zeros, as diffusers)" if fam == "sd3" else ""
        raise CheckpointError(
            f"{t5_dir}: {held}; the T5 config (activation, maximum distance) is not in the weights, so sdclip "
            f"will not guess it: copy config.json (and the weights) from the model's repository{drop}"
        )
    return load_t5(t5_dir, dtype, device)


def _check_t5_left_out(folder: Path, name: str) -> None:
    """SD3 without its T5 folder: zeros, as diffusers gives with text_encoder_3=None — but only where the
    pipeline says it has none. A model_index.json naming a T5 class whose folder is missing is refused,
    as diffusers' from_pretrained refuses it."""
    doc = _model_index(folder)
    entry = doc.get(name) if doc is not None else None
    if isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry):
        raise CheckpointError(
            f"{folder}: model_index.json names {name} ({entry[1]}) but the folder is missing: restore it, or, to run "
            f"SD3 without T5 (zeros, as diffusers with {name}=None), set \"{name}\": [null, null] in model_index.json"
        )


def _joint_attention_dim(path: Path) -> int | None:
    """transformer/config.json's joint_attention_dim: None without the file; an unreadable file is refused."""
    if not path.exists():
        return None
    doc = read_json(path, CheckpointError, "unreadable config")
    value = doc.get("joint_attention_dim") if isinstance(doc, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1 << 16 else None


def _clip_role(width: int, widths: list[int]) -> str:
    if width == VIT_L.width:
        return "clip_l"
    if width == VIT_BIGG.width:
        return "clip_g"
    return "clip_l" if width == min(widths) else "clip_g"


def load_files(paths: Sequence[Path], family: str | None, dtype: torch.dtype, device) -> LoadedEncoders:  # noqa: ANN001
    """SD3 single files, ComfyUI's separate files (several paths), or a folder of them."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.glob("*.safetensors"))
            if not found:
                raise CheckpointError(f"{p}: no .safetensors files (expected clip_l / clip_g / t5xxl files)")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise CheckpointError(f"{p}: no such file or folder")
    clip_parts: list[Part] = []
    t5_sources: list[tuple[Path, str]] = []
    for path in files:
        f = open_tensor_file(path)
        keys = f.keys()
        prefix = find_t5_prefix(f)
        if prefix is not None:
            t5_sources.append((path, prefix))
        has_clip = any(k.endswith(_anchor("hf")) or k.endswith(_anchor("openclip")) for k in keys)
        if has_clip:
            clip_parts.extend(p for p in find_parts(f) if p.layout == "hf")
        elif prefix is None:
            if _flux_transformer(keys):
                raise CheckpointError(
                    f"{path}: a Flux checkpoint with only the diffusion transformer, no text encoders; add the "
                    f"text-encoder files: {_NEEDED['flux']} (several --model paths, or one folder holding them)"
                )
            raise CheckpointError(f"{path}: neither a CLIP nor a T5 text encoder")
    if len(t5_sources) > 1:
        raise CheckpointError(f"several T5 encoders ({', '.join(p.name for p, _ in t5_sources)}): pass the one to use")
    single = [p for p in clip_parts if p.role is not None and p.prefix.startswith("text_encoders.")]
    if single:
        fam = "sd3"
    else:
        fam = family or ("sd3" if len(clip_parts) >= 2 else "flux")
        widths = [p.file.shape(p.prefix + _anchor(p.layout))[-1] for p in clip_parts]
        for part, w in zip(clip_parts, widths):
            name = _clip_role(w, widths)
            part.role = next((r for r in FAMILIES[fam].roles if r.name == name), None)
            if part.role is None:
                raise CheckpointError(f"{part.file.path}: a {name} encoder, which {fam} does not use")
    if family is not None and family != fam:
        raise CheckpointError(f"{files[0]}: family={family!r} but these files hold a {fam!r} model")
    wanted = _towers(fam)
    got = sorted(p.role.name for p in clip_parts)
    if got != sorted(r.name for r in wanted):
        raise CheckpointError(f"{', '.join(str(p) for p in files)}: {fam} needs {', '.join(r.name for r in wanted)} "
                              f"and T5, found {', '.join(got) or 'no CLIP'}; pass {_NEEDED[fam]}")
    clip_parts.sort(key=lambda p: wanted.index(p.role))
    if not t5_sources and fam == "flux":
        raise CheckpointError(f"{files[0]}: Flux needs its T5 encoder: add t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn.safetensors)")
    t5 = None
    if t5_sources:
        path, prefix = t5_sources[0]
        t5 = load_t5(path, dtype, device)
    where = [p.parent for p in files]
    tok = next((d for base in where for name in _T5_TOKENIZER_DIRS if (d := _tokenizer_dir(base / name)) is not None), None)
    tok = tok or next((b for b in where if _tokenizer_dir(b) is not None), None)
    return _done(fam, clip_parts, t5, [None] * len(clip_parts), tok, dtype, device, ", ".join(str(p) for p in paths))


def encoders_from_pipeline(pipe: object, fam: str) -> LoadedEncoders:
    """Our encoders from a live StableDiffusion3Pipeline / FluxPipeline, mapped and checked as their saved
    files would be (T5 in the pipeline's dtype; a missing SD3 text_encoder_3 stays None: zeros)."""
    parts, t5 = [], None
    dtype = device = None
    for i, role in enumerate(FAMILIES[fam].roles):
        name = _role_name(i, "text_encoder")
        model = getattr(pipe, name, None)
        loader = _loader(role)
        held = loader.from_module(model, name, role, fam)
        if not loader.tower:
            t5 = held
            continue
        parts.append(held)
        first = next(model.parameters())
        dtype, device = dtype or first.dtype, device or first.device
    encoders = _in_role_order(fam, [build_encoder(p, dtype, device) for p in parts], t5)
    return LoadedEncoders(fam, encoders, (None,) * len(parts), _fingerprint(fam, parts, t5), "<pipeline>")


__all__ = ["encoders_from_pipeline", "SINGLE_FILE_PREFIX", "comfy_folder", "is_t5_file", "load_files", "load_pipeline_folder", "pipeline_family"]
