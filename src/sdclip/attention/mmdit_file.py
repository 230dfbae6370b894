"""SD3 / SD3.5, Flux and Chroma single-file checkpoints (as users download them) as diffusers pipelines.

What the files hold, and where the rest comes from (FILES, one row per kind):
- SD3 / SD3.5: `model.diffusion_model.joint_blocks.*`; some files add the VAE (`first_stage_model.*`) and the
  text encoders (`text_encoders.clip_l / clip_g / t5xxl.*`: sd3_medium_incl_clips_t5xxlfp8, ComfyUI's fp8
  all-in-one files); sd3.5_large / sd3.5_medium themselves hold no text encoder (ComfyUI issue #5481).
- Flux (`flux1-dev.safetensors`, BFL's names `double_blocks.*` / `single_blocks.*`, or ComfyUI's with the
  `model.diffusion_model.` prefix) and Chroma (`distilled_guidance_layer.*`): the transformer only.
Each component the file holds is built from it by diffusers' single-file machinery (`from_single_file`,
`load_single_file_sub_model`); the others, and every config, come from `--pipeline-config DIR` (a local
diffusers folder of the same model: offline) or else from the diffusers repository diffusers itself names for
the file (`fetch_diffusers_config`), in the Hugging Face cache (or downloaded when online).

Why Flux / Chroma keys are renamed here (flux_keys.py) and not by diffusers' converter: diffusers 0.42.1
splits `single_blocks.N.linear1` at a fixed width of 3072 (single_file_utils.py lines 2306-2307 and
3583-3584), so it loads only full-width transformers. The renaming here reads the width from the config and
equals diffusers' own at 3072 (tests/attention/test_mmdit_file.py); loading is diffusers' `from_single_file`.

The weights are read with safetensors only (never unpickled); a file that is not a readable safetensors
file, or lacks a weight the transformer needs, or holds one of the wrong shape, is refused in one line.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

#: the pipelines' text encoder components (text_encoder, text_encoder_2, text_encoder_3)
TEXT_ENCODERS = "text_encoder"


@dataclass(frozen=True)
class MMDiTFile:
    """One kind of single file: how it is recognised, what builds it, which components it may hold."""

    kind: str
    checkpoint_key: str  # diffusers' CHECKPOINT_KEY_NAMES entry that identifies the transformer
    pipeline: str
    transformer: str
    rename: str  # "diffusers": diffusers' own converter for the class; "flux": flux_keys.to_diffusers
    model_types: tuple[str, ...]  # diffusers' model types (infer_diffusers_model_type) this pipeline draws
    in_file: dict[str, str] = field(default_factory=dict)  # component → key prefix that says the file holds it


#: checked in this order (a Chroma file also has Flux's double blocks)
FILES = (
    MMDiTFile("chroma", "chroma", "ChromaPipeline", "ChromaTransformer2DModel", "flux", ("chroma",)),
    MMDiTFile("flux", "flux", "FluxPipeline", "FluxTransformer2DModel", "flux", ("flux-dev", "flux-schnell")),
    MMDiTFile("sd3", "sd3", "StableDiffusion3Pipeline", "SD3Transformer2DModel", "diffusers",
              ("sd3", "sd35_large", "sd35_medium"),
              {"vae": "first_stage_model.", "text_encoder": "text_encoders.clip_l.",
               "text_encoder_2": "text_encoders.clip_g.", "text_encoder_3": "text_encoders.t5xxl."}),
)


def file_keys(model: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape, from the safetensors header alone; one line for any other file."""
    from safetensors import safe_open

    try:
        with safe_open(str(model), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # a pickle, a truncated file, a hostile header: safetensors refuses, in its words
        raise ValueError(f"--model {model}: not a readable .safetensors file ({_first_line(exc)})") from None


def file_kind(keys: dict[str, tuple[int, ...]]) -> MMDiTFile | None:
    """The FILES row whose transformer the file holds (by diffusers' own marker keys), or None."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES

    for spec in FILES:
        if any(k in keys for k in CHECKPOINT_KEY_NAMES[spec.checkpoint_key]):
            return spec
    return None


def default_config(model: Path, spec: MMDiTFile, keys: dict[str, tuple[int, ...]]) -> str:
    """The diffusers repository diffusers names for this file (its shapes decide: SD3 medium / 3.5 large,
    Flux dev / schnell …), found from the header without reading a weight; one line where diffusers reads the
    file as another model (a Flux Fill / Depth / Flux.2 file, a resized transformer)."""
    import torch
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS, infer_diffusers_model_type

    shapes = {k: torch.empty(s, device="meta") for k, s in keys.items()}
    try:
        model_type = infer_diffusers_model_type(shapes)
    except Exception as exc:  # a shape its rules index into that this file lacks
        model_type = f"nothing it knows ({_first_line(exc)})"
    if model_type not in spec.model_types:
        raise ValueError(f"--model {model}: diffusers reads this {spec.kind} file as {model_type}, not one of "
                         f"{', '.join(spec.model_types)}: pass --pipeline-config DIR, a local diffusers folder of "
                         "the same model")
    return str(DIFFUSERS_DEFAULT_PIPELINE_PATHS[model_type]["pretrained_model_name_or_path"])


def load_mmdit_file(model: Path, spec: MMDiTFile, keys: dict, dtype, config: str | None,  # noqa: ANN001, ANN201
                    own_encoders: bool = False):
    """The pipeline: components the file holds from the file, the rest and every config from `config` (a
    local diffusers folder) or the repository diffusers names (Hugging Face cache; the hub when online).
    own_encoders: the text encoders are left out (None: sdclip encodes from `--text-encoders` files, and the
    pipeline, handed prompt_embeds, never calls its own)."""
    import diffusers
    from safetensors.torch import load_file

    from sdclip.encoder.loading.hub import is_offline

    repo = config or default_config(model, spec, keys)
    offline = config is not None or is_offline()
    where = f"--pipeline-config {config}" if config else f"{repo} in the Hugging Face cache" if offline else repo
    config_dir = config or _config_snapshot(model, repo, offline)
    pipeline_cls = getattr(diffusers, spec.pipeline)
    try:
        layout = pipeline_cls.load_config(config_dir)
    except Exception as exc:
        raise ValueError(f"--model {model}: no {spec.pipeline} configs in {where} ({_first_line(exc)}); pass "
                         "--pipeline-config DIR, a local diffusers folder of the same model") from None
    if layout.get("_class_name") != spec.pipeline:
        raise ValueError(f"--model {model} holds a {spec.kind} transformer ({spec.pipeline}), but {where} is a "
                         f"{layout.get('_class_name')} folder: pass --pipeline-config DIR of the same model type")
    state = load_file(str(model))  # safetensors: never a pickle
    components = {"transformer": _transformer(model, spec, state, config_dir, dtype)}
    held = [name for name, prefix in spec.in_file.items() if any(k.startswith(prefix) for k in state)]
    for name, entry in layout.items():
        if name.startswith("_") or name == "transformer" or not isinstance(entry, (list, tuple)) or entry[0] is None:
            continue
        if own_encoders and name.startswith(TEXT_ENCODERS):
            components[name] = None
            continue
        library, class_name = entry
        try:
            if name in held:
                components[name] = _from_file(library, class_name, name, state, config_dir, dtype)
            else:
                components[name] = _from_folder(library, class_name, name, repo, dtype, offline)
        except Exception as exc:
            raise ValueError(f"--model {model}: could not load the pipeline's {name} from "
                             f"{'the file' if name in held else where} ({_first_line(exc)}); the file holds the "
                             f"transformer{''.join(', ' + n for n in held) or ' only'}: pass --pipeline-config DIR, a "
                             "local diffusers folder of the same model with the other components' weights") from None
    del state
    return pipeline_cls(**components)


def _transformer(model: Path, spec: MMDiTFile, state: dict, config_dir: str, dtype):  # noqa: ANN001, ANN202
    """diffusers' from_single_file on the file's transformer weights (Flux / Chroma renamed first)."""
    import diffusers

    cls = getattr(diffusers, spec.transformer)
    try:
        weights = _renamed(model, spec, cls, state, config_dir)
        transformer = cls.from_single_file(weights, config=config_dir, subfolder="transformer", torch_dtype=dtype,
                                           local_files_only=True)
    except _Refused as exc:
        raise ValueError(str(exc)) from None
    except Exception as exc:  # a weight of the wrong shape, a missing one diffusers' converter pops, configs
        raise ValueError(f"--model {model}: not an MM-DiT ({spec.kind}) transformer diffusers can load with the configs in "
                         f"{config_dir} ({_first_line(exc)})") from None
    missing = [n for n, t in [*transformer.named_parameters(), *transformer.named_buffers()] if t.is_meta]
    if missing:
        raise ValueError(_lacks(model, spec, missing, config_dir))
    return transformer


class _Refused(Exception):
    """A one-line refusal raised inside the load's try block."""


def _renamed(model: Path, spec: MMDiTFile, cls: type, state: dict, config_dir: str) -> dict:
    """The transformer's weights under diffusers' names (diffusers' own converter for SD3; flux_keys for Flux /
    Chroma), checked to be exactly the transformer's set: diffusers' from_single_file would convert any other
    set again and, without accelerate, leave a missing weight at its random initial value."""
    import torch
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    from sdclip.attention.flux_keys import to_diffusers

    config = dict(cls.load_config(config_dir, subfolder="transformer"))
    with torch.device("meta"):  # names only, no memory
        expected = set(cls.from_config(config).state_dict())
    if spec.rename == "flux":
        weights = to_diffusers(state, config)
    else:  # diffusers' converter pops what it reads: a copy keeps the text encoders' keys in `state`
        convert = SINGLE_FILE_LOADABLE_CLASSES[spec.transformer]["checkpoint_mapping_fn"]
        try:
            weights = convert(checkpoint=dict(state), config=config)
        except KeyError as exc:  # the converter asks for each weight by name
            raise _Refused(_lacks(model, spec, [str(exc.args[0])], config_dir, counted=False)) from None
    missing = sorted(expected - weights.keys())
    if missing:
        raise _Refused(_lacks(model, spec, missing, config_dir))
    extra = sorted(weights.keys() - expected)
    if extra:
        raise _Refused(f"--model {model}: holds {len(extra)} {spec.kind} weights the transformer configured in "
                       f"{config_dir} has no place for (e.g. {extra[0]}): configs of another model")
    return weights


def _lacks(model: Path, spec: MMDiTFile, missing: list[str], config_dir: str, counted: bool = True) -> str:
    return (f"--model {model}: the file lacks {len(missing) if counted else 'some'} of the {spec.kind} transformer's weights "
            f"(e.g. {missing[0]}): a damaged file, or a model of another size than {config_dir}")


def _from_file(library: str, class_name: str, name: str, state: dict, config_dir: str, dtype):  # noqa: ANN001, ANN202
    """A component the file holds (SD3's VAE and text encoders), by diffusers' per-component single-file loader."""
    from diffusers import pipelines
    from diffusers.loaders.single_file import load_single_file_sub_model

    return load_single_file_sub_model(
        library_name=library, class_name=class_name, name=name, checkpoint=state, pipelines=pipelines,
        is_pipeline_module=hasattr(pipelines, library), cached_model_config_path=config_dir, torch_dtype=dtype,
        local_files_only=True,
    )


def _from_folder(library: str, class_name: str, name: str, source: str, dtype, offline: bool):  # noqa: ANN001, ANN202
    """A component the file lacks: from_pretrained of the config folder or repository's subfolder."""
    import torch

    from sdclip.encoder.loading.hub import _cache_dir

    cls = getattr(importlib.import_module(library), class_name)
    kwargs = {"torch_dtype": dtype} if issubclass(cls, torch.nn.Module) else {}
    return cls.from_pretrained(source, subfolder=name, local_files_only=offline, cache_dir=_cache_dir(), **kwargs)


def _config_snapshot(model: Path, repo: str, offline: bool) -> str:
    """The repository's configs and tokenizers (no weights), as diffusers' pipeline from_single_file fetches them."""
    from diffusers.loaders.single_file import _download_diffusers_model_config_from_hub

    from sdclip.encoder.loading.hub import _cache_dir

    try:
        return str(_download_diffusers_model_config_from_hub(repo, cache_dir=_cache_dir(), revision=None, proxies=None,
                                                             local_files_only=offline))
    except Exception as exc:
        where = f"{repo} in the Hugging Face cache (offline)" if offline else f"{repo} on the Hugging Face hub"
        raise ValueError(f"--model {model}: no configs for this file from {where} ({_first_line(exc)}); pass "
                         "--pipeline-config DIR, a local diffusers folder of the same model") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
