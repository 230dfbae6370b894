"""The one entry point for loading text encoders: which reader a source needs (CLIP-only families through
sdclip.encoder.loading.clip; T5 families — SD3 / Flux folders, SD3 single files, ComfyUI's separate files —
through sdclip.encoder.loading.sd3_flux)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from sdclip.encoder.loading import sd3_flux, t5_families
from sdclip.encoder.loading.checkpoint import CheckpointError, open_tensor_file
from sdclip.encoder.loading.clip import LoadedEncoders, load_clip_source
from sdclip.encoder.loading.hub import resolve


def load_text_encoders(
    source: str | Path | Sequence[str | Path],
    *,
    family: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> LoadedEncoders:
    """Load the text encoder(s) of a family from a folder, a single file, a hub id, or several files
    (ComfyUI's clip_l / clip_g / t5xxl files).

    Raises CheckpointError for anything unusable (before any encoder exists).
    """
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise CheckpointError(f"dtype {dtype} unsupported (float32, float16, bfloat16)")
    if not isinstance(source, (str, Path)):
        paths = [resolve(s) for s in source]
        if not paths:
            raise CheckpointError("no model path given")
        if len(paths) > 1:
            return sd3_flux.load_files(paths, family, dtype, device)
        source = paths[0]
    path = resolve(source)
    t5_only = t5_families.load(path, family, dtype, device)  # Chroma, Wan, PixArt-Σ, AuraFlow
    if t5_only is not None:
        return t5_only
    from sdclip.encoder.loading import llm  # Qwen-Image, Z-Image, Lumina 2 (transformers: the llm extra)

    llm_loaded = llm.load_folder(path, family, device) if path.is_dir() else llm.load_file(path, family, device)
    if llm_loaded is not None:
        return llm_loaded
    if path.is_dir():
        t5_family = sd3_flux.pipeline_family(path)
        if t5_family is not None:
            return sd3_flux.load_pipeline_folder(path, t5_family, family, dtype, device)
        if sd3_flux.comfy_folder(path):
            return sd3_flux.load_files([path], family, dtype, device)
        loaded = load_clip_source(path, family, dtype, device)
    else:
        f = open_tensor_file(path)
        if sd3_flux.is_t5_file(f):
            return sd3_flux.load_files([path], family, dtype, device)
        loaded = load_clip_source(f, family, dtype, device)
    return LoadedEncoders(loaded.family, loaded.encoders, loaded.tokenizer_dirs, loaded.fingerprint, str(source))
