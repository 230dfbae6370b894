"""LLM text encoders from a diffusers folder (Qwen-Image, Z-Image, Lumina 2), recognised by the class names
of its model_index.json, built with transformers' own classes (the `llm` extra).

Loading builds the decoder on the meta device and assigns the file's tensors to it (`load_state_dict(...,
assign=True)`): no random init, no second copy, the stored dtypes kept (`dtype=` does not upcast an LLM
encoder). Only the layers the family reads are built and read (`hidden_states[-2]`: the last block is never
loaded, as clip skip's blocks are not); Qwen-Image's vision tower and every `lm_head` are skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdclip.conventions.family import FAMILIES, EncoderRole
from sdclip.encoder.loading.checkpoint import CheckpointError
from sdclip.encoder.loading.clip import LoadedEncoders

#: diffusers pipeline class → family; the text encoder class each one's model_index.json names
PIPELINES: dict[str, str] = {"QwenImagePipeline": "qwen-image", "ZImagePipeline": "z-image",
                             "Lumina2Pipeline": "lumina2", "Lumina2Text2ImgPipeline": "lumina2"}
#: family → the transformers config classes its text_encoder/config.json may hold, and the model class built
_TEXT_CONFIG = {"qwen-image": "text_config"}  #: Qwen2_5_VLConfig keeps the text model's config here


@dataclass
class LoadedLLM(LoadedEncoders):
    """LoadedEncoders with the tokenizers the LLM lane reads, by name (`llm_tokenizer`)."""

    tokenizers: dict[str, Any] = field(default_factory=dict)


def pipeline_family(folder: Path) -> str | None:
    """The LLM family of a diffusers folder by its model_index.json, else None."""
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return None
    return PIPELINES.get(str(data.get("_class_name", ""))) if isinstance(data, dict) else None


def _files(folder: Path) -> list[Path]:
    te = folder / "text_encoder"
    files = sorted(te.glob("*.safetensors")) if te.is_dir() else []
    if not files or not (te / "config.json").is_file():
        raise CheckpointError(f"{folder}: no text encoder: add text_encoder/config.json and text_encoder/*.safetensors "
                              "(and tokenizer/) from the model's repository")
    return files


def _fingerprint(files: list[Path]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns};".encode())
    return "llm:" + h.hexdigest()


def _config(folder: Path, family: str) -> Any:  # noqa: ANN401
    from sdclip.tokenizer.llm import _transformers

    transformers = _transformers()
    config = transformers.AutoConfig.from_pretrained(str(folder / "text_encoder"))
    sub = _TEXT_CONFIG.get(family)
    return getattr(config, sub) if sub and hasattr(config, sub) else config


def _strip(key: str, wanted: set[str]) -> str | None:
    """A stored key → the decoder's own name (transformers 5 `model.language_model.…`, 4.x `model.…`, bare)."""
    for prefix in ("model.language_model.", "language_model.", "model.", ""):
        if key.startswith(prefix) and key[len(prefix):] in wanted:
            return key[len(prefix):]
    return None


def build(folder: Path, role: EncoderRole, family: str, device: str | torch.device) -> torch.nn.Module:
    """The role's decoder, cut to the layers it reads, its tensors assigned from the folder's files."""
    from safetensors import safe_open

    def tensors(wanted: set[str]) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for f in _files(folder):
            with safe_open(str(f), framework="pt", device=str(device)) as fh:
                for key in fh.keys():
                    name = _strip(key, wanted)
                    if name is not None:
                        state[name] = fh.get_tensor(key)
        return state

    return decoder(_config(folder, family), role, family, tensors, device, str(folder))


def from_module(module: torch.nn.Module, role: EncoderRole, family: str) -> torch.nn.Module:
    """The role's decoder over a loaded transformers model's own tensors (a pipeline's `text_encoder`): shared,
    not copied."""
    config = getattr(module.config, _TEXT_CONFIG.get(family, ""), None) or module.config
    device = next(module.parameters()).device
    state = module.state_dict()

    def tensors(wanted: set[str]) -> dict[str, torch.Tensor]:
        return {name: t for key, t in state.items() if (name := _strip(key, wanted)) is not None}

    import copy

    return decoder(copy.deepcopy(config), role, family, tensors, device, type(module).__name__)


def decoder(config: Any, role: EncoderRole, family: str, tensors: Any, device: str | torch.device,  # noqa: ANN401
            where: str) -> torch.nn.Module:
    """Build on the meta device with only the layers read, then assign `tensors(wanted names)` to it."""
    from sdclip.encoder.llm_runner import LLMEncoder
    from sdclip.tokenizer.llm import _transformers

    depth = int(config.num_hidden_layers)
    layers = depth - role.skip
    if layers < 1:
        raise CheckpointError(f"{where}: a {depth}-layer text encoder has no layer {family} reads")
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:layers]
    cls = getattr(_transformers(), role.llm.model_class)  # type: ignore[union-attr]
    with torch.device("meta"):
        model = cls(config)
    if not role.final_norm:
        model.norm = torch.nn.Identity()  # hidden_states[-2]: the block's output, before any norm
    wanted = set(model.state_dict())
    state = tensors(wanted)
    missing = sorted(wanted - set(state))
    if missing:
        raise CheckpointError(f"{where}: the text encoder lacks {len(missing)} tensor(s) {family} needs, e.g. {missing[0]}")
    model.load_state_dict(state, strict=True, assign=True)
    with torch.device(device):  # its inverse frequencies are computed, not stored: not on meta
        model.rotary_emb = type(model.rotary_emb)(config=config)
    for module in model.modules():  # Gemma-2's scaled embedding keeps its scale as a computed buffer
        if getattr(module, "embed_scale", None) is not None and module.embed_scale.is_meta:
            module.embed_scale = torch.tensor(float(module.scalar_embed_scale), device=device)
    for name, buf in model.named_buffers():
        if buf.is_meta:
            raise CheckpointError(f"{where}: {name} was not loaded")
    model.eval()
    return LLMEncoder(model, pad_id=role.pad_id, family=family)


def load_folder(folder: Path, family: str | None, device: str | torch.device) -> LoadedLLM | None:
    """A diffusers folder of an LLM family (None where it is not one)."""
    found = pipeline_family(folder)
    if found is None:
        return None
    if family is not None and family != found:
        raise CheckpointError(f"{folder}: a {found} model, not {family}")
    from sdclip.tokenizer.llm import LLMTokenizer

    fam = FAMILIES[found]
    files = _files(folder)  # a folder with a transformer but no text encoder: which files to add
    tok_dir = folder / "tokenizer"
    if not tok_dir.is_dir():
        raise CheckpointError(f"{folder}: no tokenizer/ folder (the {found} text encoder's tokenizer)")
    encoders = tuple(build(folder, role, found, device) for role in fam.roles)
    tokenizer = LLMTokenizer.from_folder(tok_dir)
    return LoadedLLM(found, encoders, (), _fingerprint(files), str(folder),  # type: ignore[arg-type]
                     tokenizers={"llm_tokenizer": tokenizer})


def from_pipeline(pipe: object) -> LoadedLLM | None:
    """A loaded diffusers pipeline of an LLM family (by its class): its `text_encoder` (tensors shared) and
    `tokenizer`; None for any other pipeline."""
    found = PIPELINES.get(type(pipe).__name__)
    if found is None:
        return None
    from sdclip.tokenizer.llm import LLMTokenizer

    module, tok = getattr(pipe, "text_encoder", None), getattr(pipe, "tokenizer", None)
    if module is None or tok is None:
        raise ValueError(f"the {type(pipe).__name__} has no text_encoder or tokenizer: sdclip encodes with both")
    encoders = tuple(from_module(module, role, found) for role in FAMILIES[found].roles)
    return LoadedLLM(found, encoders, (), f"pipe@{id(module)}", type(pipe).__name__,  # type: ignore[arg-type]
                     tokenizers={"llm_tokenizer": LLMTokenizer(tok)})
