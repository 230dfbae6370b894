"""`--format kohya`: the per-image text-encoder caches kohya-ss/sd-scripts reads (`--cache_text_encoder_outputs_to_disk`).

From sd-scripts' `library/strategy_sdxl.py` (`SdxlTextEncoderOutputsCachingStrategy`): for an image
`dir/cat.png`, the file `dir/cat_te_outputs.npz`, written with `np.savez` (uncompressed), one sample, no batch
axis, keys
  - `hidden_state1` [77, 768]: CLIP ViT-L's penultimate hidden state (no final layer norm),
  - `hidden_state2` [77, 1280]: OpenCLIP bigG's penultimate hidden state (no final layer norm),
  - `pool2` [1280]: bigG's projected state at the first EOS,
in the encoder's dtype, except bf16, which sd-scripts stores as float32 (numpy has no bfloat16).
sdclip writes exactly these from the job's conditioning (its split of the 2048 features into 768 ‖ 1280),
so use the options sd-scripts uses (`--preset diffusers`, or `--weighting none`) for a drop-in cache.

sd-scripts caches text-encoder outputs only for SDXL, SD3 and Flux (`strategy_sd.py` has no such cache for
SD1/SD2), so other families are refused here; so is `--max-rows` > 1, whose 77·K slots differ from
sd-scripts' own long-caption layout (K·75 + 2).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from sdclip.jobs.manifest import JobError
from sdclip.jobs.shards import write_bytes_atomic

SUFFIX = "_te_outputs.npz"
KEYS = ("hidden_state1", "hidden_state2", "pool2")


def check_kohya(family: str, source_format: str, rows: int) -> None:
    """Refuse what sd-scripts would not read (before anything is encoded)."""
    if source_format != "images":
        raise JobError("--format kohya writes .npz files beside the images: --captions must be an image folder")
    if family != "sdxl":
        raise JobError(f"--format kohya: sd-scripts caches text-encoder outputs for SDXL only among CLIP-only "
                       f"families (it has no such cache for {family}); use --format safetensors")
    if rows != 1:
        raise JobError("--format kohya needs 77 slots per caption (--max-rows 1): sd-scripts lays longer captions "
                       "out as K·75+2 slots")


def npz_path(images: Path, rel: str) -> Path:
    return images / (os.path.splitext(rel)[0] + SUFFIX)


def _numpy(t: torch.Tensor):  # noqa: ANN202
    return (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy()


def write_kohya(images: Path, rels: list[str], tensors: dict[str, torch.Tensor], widths: list[int]) -> dict[str, str]:
    """One npz per image, each atomically; returns {npz relative path: sha256}."""
    import numpy as np

    out = {}
    if not rels:
        return out
    embeds, pooled = tensors["prompt_embeds"], tensors["pooled_prompt_embeds"]
    w1 = widths[0]
    for i, rel in enumerate(rels):
        buf = io.BytesIO()
        np.savez(buf, hidden_state1=_numpy(embeds[i, :, :w1]), hidden_state2=_numpy(embeds[i, :, w1:]),
                 pool2=_numpy(pooled[i]))
        path, data = npz_path(images, rel), buf.getvalue()
        write_bytes_atomic(path, data)
        out[path.relative_to(images).as_posix()] = hashlib.sha256(data).hexdigest()
    return out
