"""The pipeline `sdclip attention` traces, from a diffusers folder or a single .safetensors checkpoint.

An SD3 / SD3.5, Flux or Chroma single file is read by sdclip.attention.mmdit_file; the rest of this module is
the UNet (SD1 / SD2 / SDXL) single file.

A single file (issue 19.20) is built with diffusers' `from_single_file`, which reads the weights from the file
but the pipeline's *configs* (UNet, VAE, scheduler, tokenizers) from a diffusers repository: from the
Hugging Face cache or the network, or offline from `--pipeline-config DIR`, a local diffusers folder of the
same architecture. Where none of those is there, one line says what to pass instead of diffusers'
multi-line exception. A `.ckpt` is a pickle and is refused: sdclip never unpickles.
"""

from __future__ import annotations

from pathlib import Path

SINGLE_FILE_SUFFIXES = (".safetensors",)


def check_model(model: Path, flag: str = "--model") -> str:
    """"folder" or "file" for a usable `--model`; a one-line ValueError otherwise (before anything loads)."""
    if model.is_dir():
        if not (model / "model_index.json").is_file():
            raise ValueError(f"{flag} wants a diffusers pipeline folder (with model_index.json) or a single "
                             f".safetensors checkpoint: {model}")
        return "folder"
    if model.is_file():
        if model.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ValueError(f"{flag} {model}: attention reads single-file checkpoints as .safetensors only (a "
                             f"{model.suffix or 'suffix-less'} file may be a pickle, which sdclip never loads)")
        return "file"
    raise ValueError(f"{flag} {model}: no such file or folder")


def config_source(model: Path, config: str | None) -> str | None:
    """Where the configs of a single-file `model` come from, for the output check before loading: `config`,
    or the diffusers repository an MM-DiT file names (None for a folder or a UNet file)."""
    if config is not None or not model.is_file():
        return config
    from sdclip.attention.mmdit_file import default_config, file_keys, file_kind

    keys = file_keys(model)
    spec = file_kind(keys)
    return None if spec is None else default_config(model, spec, keys)


def _single_file_class(model: Path, keys) -> type:  # noqa: ANN001
    """StableDiffusionXLPipeline when the file holds SDXL's second text encoder, else StableDiffusionPipeline."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise ValueError(f"--model {model}: holds no UNet or SD3 / Flux / Chroma transformer (no "
                         "model.diffusion_model.* keys): attention needs a whole Stable Diffusion checkpoint, not a "
                         "text encoder alone")
    sdxl = any(k.startswith("conditioner.embedders.1.") for k in keys)
    return StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline


def load_pipeline(model: Path, dtype, config: str | None = None, own_encoders: bool = False):  # noqa: ANN001, ANN201
    """The pipeline from a folder (offline, local files only) or a single file (configs as the module says).
    own_encoders: an MM-DiT file's text encoders come from separate files (`--text-encoders`): none loaded here."""
    from diffusers import DiffusionPipeline

    from sdclip.attention.mmdit_file import file_keys, file_kind, load_mmdit_file
    from sdclip.encoder.loading.hub import is_offline

    if model.is_dir():
        return DiffusionPipeline.from_pretrained(str(model), dtype=dtype, local_files_only=True)
    keys = file_keys(model)
    spec = file_kind(keys)
    if spec is not None:
        return load_mmdit_file(model, spec, keys, dtype, config, own_encoders)
    if own_encoders:
        raise ValueError(f"--text-encoders is for SD3 / Flux / Chroma single files; {model} holds none of their transformers")
    cls = _single_file_class(model, keys)
    offline = is_offline() or config is not None
    try:
        return cls.from_single_file(str(model), config=config, torch_dtype=dtype, local_files_only=offline)
    except Exception as exc:  # diffusers' OSError / ValueError / hub errors: many lines, no advice
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        where = f"--pipeline-config {config}" if config else (
            "the Hugging Face cache (offline)" if offline else "the Hugging Face hub")
        raise ValueError(
            f"--model {model}: diffusers could not build a {cls.__name__} from this single file with the configs "
            f"from {where} ({first}); pass --pipeline-config DIR, a local diffusers folder of the same model "
            "type (SD1 / SD2 / SDXL), or a diffusers pipeline folder as --model"
        ) from None
