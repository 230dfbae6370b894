"""What a folder holds when it is not a text encoder, said in one line with the folder to pass instead.

A new user's first guess is often one level too deep (`--model models/sd1/unet`, `models/sd3/tokenizer_3`):
the loader used to answer "config.json but no weights" for a UNet that has weights. A diffusers component's
config.json names its class (`_class_name`); a transformers config names its `model_type`; a folder
without config.json is told by the files a scheduler, a tokenizer or an image processor keeps.
"""

from __future__ import annotations

from pathlib import Path

from sdclip.encoder.loading.checkpoint import CheckpointError

#: transformers model types whose folder is a CLIP text encoder (CLIPTextModel*, or a CLIPModel with text_config)
CLIP_TYPES = ("clip_text_model", "clip")
#: files that tell a config-less folder's kind
_KINDS = (
    (("scheduler_config.json",), "a scheduler"),
    (("vocab.json", "merges.txt", "tokenizer.json", "spiece.model", "tokenizer_config.json"), "a tokenizer"),
    (("preprocessor_config.json",), "an image processor"),
    (("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"), "diffusers model weights"),
)


def instead(folder: Path) -> str:
    """What to pass: the pipeline folder above, where there is one."""
    parent = folder.parent
    if (parent / "model_index.json").is_file():
        return f"pass {parent}"
    return ("pass a pipeline folder (model_index.json, text_encoder/), a text-encoder folder (config.json + "
            "model.safetensors) or a checkpoint file")


def not_text_encoder(folder: Path, config: object) -> None:
    """Raise CheckpointError when `folder` (with its parsed config.json, or None without one) is plainly
    something other than a CLIP text encoder; otherwise return (the loader's own checks follow)."""
    folder = Path(folder)
    if isinstance(config, dict):
        name = config.get("_class_name")
        if isinstance(name, str) and name:
            raise CheckpointError(f"{folder} holds a {name[:80]}, not a text encoder: {instead(folder)}")
        kind = config.get("model_type")
        if kind in ("t5", "umt5"):
            raise CheckpointError(
                f"{folder} holds a T5 encoder alone (SD3's text_encoder_3 / Flux's text_encoder_2); its family also "
                f"needs the CLIP encoders: {instead(folder)}"
            )
        if isinstance(kind, str) and kind and kind not in CLIP_TYPES:
            arch = config.get("architectures")
            what = arch[0] if isinstance(arch, list) and arch and isinstance(arch[0], str) else f"{kind!r} model"
            raise CheckpointError(f"{folder} holds a {what[:80]}, not a CLIP text encoder: {instead(folder)}")
        return
    if config is None:
        for names, what in _KINDS:
            if any((folder / n).is_file() for n in names):
                raise CheckpointError(f"{folder} holds {what}, not a text encoder: {instead(folder)}")
