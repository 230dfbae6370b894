"""LLM text encoders from a diffusers folder (Qwen-Image, Z-Image, Lumina 2, Flux.2, Flux.2 [klein]), recognised
by the class names of its model_index.json, built with transformers' own classes (the `llm` extra).

Loading builds the decoder on the meta device and assigns the file's tensors to it (`load_state_dict(...,
assign=True)`): no random init, no second copy, the stored dtypes kept (`dtype=` does not upcast an LLM
encoder). Only the layers the family reads are built and read (`hidden_states[-2]`: the last block is never
loaded, as clip skip's blocks are not; Flux.2 reads hidden_states 10, 20, 30 of Mistral Small's 40 blocks: 30
are built); Qwen-Image's and Flux.2's vision towers and every `lm_head` are skipped.
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
                             "Lumina2Pipeline": "lumina2", "Lumina2Text2ImgPipeline": "lumina2",
                             "Flux2Pipeline": "flux2", "Flux2KleinPipeline": "flux2-klein"}
#: family → where its text_encoder/config.json keeps the text model's config (Qwen2_5_VLConfig, Mistral3Config)
_TEXT_CONFIG = {"qwen-image": "text_config", "flux2": "text_config"}


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


def read_checked(fh: Any, key: str) -> torch.Tensor:  # noqa: ANN401
    """One stored tensor read whole into its own memory (PlainSafetensors.get: one read, no temporary) and
    refused if it holds NaN or inf. The check is `aminmax` (NaN propagates to both ends), which allocates nothing:
    the float32 sum it replaced upcast each 4 MiB chunk into an 8 MiB temporary whose frees raised glibc's
    dynamic mmap threshold, so the smaller weights landed in a fragmented heap (Qwen-Image's bf16 loading peak
    1.04-1.14x the file from run to run; with aminmax 1.04, as with no check; 18x faster than those sums here);
    isfinite allocates a bool per value. fp8 by its NaN bit patterns."""
    from sdclip.encoder.loading.t5 import STORAGE_ONLY, _finite

    t = fh.get(key)
    if t.dtype in STORAGE_ONLY or not t.is_floating_point():
        ok = _finite(t)
    else:
        ok = t.numel() == 0 or all(bool(torch.isfinite(end)) for end in torch.aminmax(t))
    if not ok:
        raise CheckpointError(f"{fh.path}: {key!r} contains NaN or infinite values")
    return t


def _strip(key: str, wanted: set[str]) -> str | None:
    """A stored key → the decoder's own name (transformers 5 `model.language_model.…`, 4.x `model.…`, Mistral 3's
    saved `language_model.model.…`, bare)."""
    for prefix in ("model.language_model.", "language_model.model.", "language_model.", "model.", ""):
        if key.startswith(prefix) and key[len(prefix):] in wanted:
            return key[len(prefix):]
    return None


def padding(role: EncoderRole, tokenizer: Any) -> dict[str, Any]:  # noqa: ANN401
    """How the decoder sees a row's pads: `pad_id`, the id the LLM lane pads with (sdclip.lanes.llm_lane
    `lay_out`: the tokenizer's where the pipeline pads to max_sequence_length and reads those states, Lumina 2 and
    Flux.2; else the role's); `pad_left`, the pipeline pads on the left (Flux.2 with a tokenizer whose
    padding_side is "left", as the pipeline leaves the tokenizer's own side; Lumina 2 sets "right" itself)."""
    fixed = role.llm is not None and role.llm.fixed
    left = fixed and not role.llm.right_padded and getattr(tokenizer, "padding_side", "right") == "left"  # type: ignore[union-attr]
    return {"pad_id": tokenizer.pad_id if fixed else role.pad_id, "pad_left": left}


def build(folder: Path, role: EncoderRole, family: str, device: str | torch.device,
          **pads: Any) -> torch.nn.Module:  # noqa: ANN401
    """The role's decoder, cut to the layers it reads, its tensors assigned from the folder's files."""
    from sdclip.encoder.loading.t5 import PlainSafetensors

    def tensors(wanted: set[str]) -> dict[str, torch.Tensor]:
        """Only the tensors wanted, each read into its own memory (never mapped: a mapping keeps every page it
        touched resident, the file's size twice over), checked finite, in its stored dtype."""
        state: dict[str, torch.Tensor] = {}
        for f in _files(folder):
            fh = PlainSafetensors(f)
            for key in fh.keys():
                name = _strip(key, wanted)
                if name is not None:
                    state[name] = read_checked(fh, key).to(device)
        return state

    return decoder(_config(folder, family), role, family, tensors, device, str(folder), **pads)


def from_module(module: torch.nn.Module, role: EncoderRole, family: str, **pads: Any) -> torch.nn.Module:  # noqa: ANN401
    """The role's decoder over a loaded transformers model's own tensors (a pipeline's `text_encoder`): shared,
    not copied."""
    config = getattr(module.config, _TEXT_CONFIG.get(family, ""), None) or module.config
    device = next(module.parameters()).device
    state = module.state_dict()

    def tensors(wanted: set[str]) -> dict[str, torch.Tensor]:
        return {name: t for key, t in state.items() if (name := _strip(key, wanted)) is not None}

    import copy

    return decoder(copy.deepcopy(config), role, family, tensors, device, type(module).__name__, **pads)


def decoder(config: Any, role: EncoderRole, family: str, tensors: Any, device: str | torch.device,  # noqa: ANN401
            where: str, scaled: dict[str, torch.Tensor] | None = None, pad_id: int | None = None,
            pad_left: bool = False) -> torch.nn.Module:
    """Build on the meta device with only the layers read, then assign `tensors(wanted names)` to it.
    scaled: stored linear name → its `scale_weight` (ComfyUI's scaled fp8): those stay fp8 (ScaledFP8Linear).
    pad_id, pad_left: how the pipeline pads (`padding`), the role's own pad id on the right by default."""
    from sdclip.encoder.llm_runner import LLMEncoder
    from sdclip.tokenizer.llm import _transformers

    depth = int(config.num_hidden_layers)
    read = role.llm.layers if role.llm is not None else ()
    layers = max(read) if read else depth - role.skip  # stop at the deepest layer read
    if not 1 <= layers <= depth:
        raise CheckpointError(f"{where}: a {depth}-layer text encoder has no layer {layers} that {family} reads")
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
    linears = {name[: -len(".weight")]: scale for stored, scale in (scaled or {}).items()
               if (name := _strip(f"{stored}.weight", wanted)) is not None}
    _swap_scaled(model, linears, state)
    model.load_state_dict(state, strict=not linears, assign=True)
    with torch.device(device):  # its inverse frequencies are computed, not stored: not on meta
        model.rotary_emb = type(model.rotary_emb)(config=config)
    for module in model.modules():  # Gemma-2's scaled embedding keeps its scale as a computed buffer
        if getattr(module, "embed_scale", None) is not None and module.embed_scale.is_meta:
            module.embed_scale = torch.tensor(float(module.scalar_embed_scale), device=device)
    for name, buf in [*model.named_buffers(), *model.named_parameters()]:
        if buf.is_meta:
            raise CheckpointError(f"{where}: {name} was not loaded")
    model.eval()
    return LLMEncoder(model, pad_id=role.pad_id if pad_id is None else pad_id, family=family, layers=read,
                      pad_left=pad_left)


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
    tokenizer = LLMTokenizer.from_folder(tok_dir)
    encoders = tuple(build(folder, role, found, device, **padding(role, tokenizer)) for role in fam.roles)
    return LoadedLLM(found, encoders, (), _fingerprint(files), str(folder),  # type: ignore[arg-type]
                     tokenizers={"llm_tokenizer": tokenizer})


def _text_tokenizer(tok: Any) -> Any:  # noqa: ANN401
    """A pipeline's tokenizer, or the processor it holds instead (Flux.2's `tokenizer` is an AutoProcessor,
    PixtralProcessor): the processor's own tokenizer, given the processor's chat template where it has none (a
    copy: the pipeline's object is not changed). Text alone, a processor tokenizes with its tokenizer."""
    inner = getattr(tok, "tokenizer", None)
    if inner is None or hasattr(tok, "pad_token_id"):  # a tokenizer (every one has pad_token_id; a processor not)
        return tok
    template = getattr(tok, "chat_template", None)
    if template and not getattr(inner, "chat_template", None):
        import copy

        inner = copy.copy(inner)
        inner.chat_template = template
    return inner


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
    tokenizer = LLMTokenizer(_text_tokenizer(tok))
    encoders = tuple(from_module(module, role, found, **padding(role, tokenizer)) for role in FAMILIES[found].roles)
    return LoadedLLM(found, encoders, (), f"pipe@{id(module)}", type(pipe).__name__,  # type: ignore[arg-type]
                     tokenizers={"llm_tokenizer": tokenizer})


# ---- ComfyUI's single files (text_encoders/qwen_3_4b.safetensors, gemma_2_2b_fp16.safetensors, …) -----------
#: what a ComfyUI file of each family holds beside the shapes: the released model's fixed settings (Qwen3-4B,
#: Gemma-2-2B, Qwen2.5-VL-7B and Mistral Small 3.1's config.json); width, depth, vocabulary, heads and MLP come from
#: the tensors, head_dim from the per-head q norms where a file has them (Qwen3), else from here
_FILE_CONFIG: dict[str, tuple[str, dict[str, Any]]] = {
    "z-image": ("Qwen3Config", dict(rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=40960,
                                    tie_word_embeddings=True, hidden_act="silu")),
    "lumina2": ("Gemma2Config", dict(head_dim=256, rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=8192,
                                     query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
                                     final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh", pad_token_id=0)),
    # ComfyUI's Mistral3Small24BConfig (comfy/text_encoders/llama.py): Mistral Small 3.1's text model
    "flux2": ("MistralConfig", dict(head_dim=128, rope_theta=1e9, rms_norm_eps=1e-5, max_position_embeddings=131072,
                                    hidden_act="silu", sliding_window=None)),
    "qwen-image": ("Qwen2_5_VLTextConfig", dict(head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6,
                                                max_position_embeddings=128000, hidden_act="silu",
                                                rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                                                 "rope_theta": 1e6})),
}
#: a file's family (file_family) → the other families whose pipelines read the same file (`--family` picks):
#: ComfyUI's qwen_3_4b.safetensors is Z-Image's and Flux.2 [klein] 4B's text encoder
_SAME_FILE: dict[str, tuple[str, ...]] = {"z-image": ("flux2-klein",)}
#: tokenizer folders looked for beside a single file, in order
_BESIDE = ("tokenizer", "llm_tokenizer", "qwen_tokenizer", "gemma_tokenizer")


def file_family(keys: set[str]) -> str | None:
    """The LLM family of a ComfyUI text-encoder file by its key names, else None."""
    if "model.layers.0.self_attn.q_proj.weight" not in keys:
        return None
    if "model.layers.0.pre_feedforward_layernorm.weight" in keys:
        return "lumina2"  # Gemma-2's four norms per block
    if "model.layers.0.self_attn.q_norm.weight" in keys:
        return "z-image"  # Qwen3's per-head q / k norms
    if "model.layers.0.self_attn.q_proj.bias" in keys:
        return "qwen-image"  # Qwen2.5's biased q / k / v
    return "flux2"  # a plain Llama-shaped block: Mistral Small 3.1 (mistral_3_small_flux2_*.safetensors, ComfyUI's
    # comfy/text_encoders/llama.py names its tensors as transformers does, as for qwen_3_4b)


def _file_config(fh: Any, family: str, keys: set[str]) -> Any:  # noqa: ANN401
    from sdclip.tokenizer.llm import _transformers

    cls_name, fixed = _FILE_CONFIG[family]
    vocab, hidden = fh.shape("model.embed_tokens.weight")
    depth = 1 + max(int(k.split(".")[2]) for k in keys if k.startswith("model.layers."))
    q_norm = "model.layers.0.self_attn.q_norm.weight"  # per-head q norms (Qwen3) are head_dim long: read it there
    head_dim = fh.shape(q_norm)[0] if q_norm in keys else fixed["head_dim"]
    settings = dict(fixed, vocab_size=vocab, hidden_size=hidden, num_hidden_layers=depth, head_dim=head_dim,
                    intermediate_size=fh.shape("model.layers.0.mlp.gate_proj.weight")[0],
                    num_attention_heads=fh.shape("model.layers.0.self_attn.q_proj.weight")[0] // head_dim,
                    num_key_value_heads=fh.shape("model.layers.0.self_attn.k_proj.weight")[0] // head_dim)
    return getattr(_transformers(), cls_name)(**settings)


class ScaledFP8Linear(torch.nn.Module):
    """A linear layer whose weight stays fp8 in memory with ComfyUI's per-tensor `scale_weight`: upcast to the
    input's dtype for its own product only (CPU torch has no fp8 matmul), `weight · scale` as ComfyUI does."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.register_buffer("scale_weight", scale.float().reshape(()))
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.scale_weight.to(x.dtype)
        return torch.nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


def _swap_scaled(model: torch.nn.Module, scales: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """Every linear with a `scale_weight` becomes a ScaledFP8Linear over the file's fp8 weight (before assign)."""
    for name in list(scales):
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        bias = state.pop(f"{name}.bias", None)
        setattr(parent, leaf, ScaledFP8Linear(state.pop(f"{name}.weight"), scales[name], bias))


def load_file(path: Path, family: str | None, device: str | torch.device) -> LoadedLLM | None:
    """A ComfyUI text-encoder file of an LLM family (None where it is not one), with its tokenizer folder beside
    it (`tokenizer/`). Scaled fp8 (`…_scaled.safetensors`): each linear's fp8 weight and `scale_weight` kept,
    upcast per layer; a scaled file missing a scale is refused."""
    from sdclip.encoder.loading.t5 import PlainSafetensors
    from sdclip.tokenizer.llm import LLMTokenizer

    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        fh = PlainSafetensors(path)
    except CheckpointError:
        return None  # not readable here: the other readers say what is wrong with it
    keys = set(fh.keys())
    found = file_family(keys)
    if found is None:
        return None
    if family is not None and family != found and family not in _SAME_FILE.get(found, ()):
        raise CheckpointError(f"{path}: a {found} text encoder, not {family}")
    tok_dir = next((path.parent / d for d in _BESIDE if (path.parent / d).is_dir()), None)
    if tok_dir is None:
        raise CheckpointError(f"{path}: a {found} text encoder needs its tokenizer beside it: put the model's "
                              f"tokenizer folder next to the file as {path.parent / 'tokenizer'}")
    scaled = {k[: -len(".scale_weight")] for k in keys if k.endswith(".scale_weight")}
    fp8 = {k[: -len(".weight")] for k in keys if k.endswith(".weight") and fh._meta[k][0].itemsize == 1}
    if fp8 - scaled:
        raise CheckpointError(f"{path}: {len(fp8 - scaled)} fp8 weight(s) without a scale_weight "
                              f"(e.g. {sorted(fp8 - scaled)[0]}): read as plain fp8 it would be silently wrong")
    fam = family or found
    role = FAMILIES[fam].roles[0]
    tokenizer = LLMTokenizer.from_folder(tok_dir)

    def tensors(wanted: set[str]) -> dict[str, torch.Tensor]:
        return {name: read_checked(fh, k).to(device) for k in keys if (name := _strip(k, wanted)) is not None}

    encoder = decoder(_file_config(fh, found, keys), role, fam, tensors, device, str(path),
                      scaled={s: read_checked(fh, f"{s}.scale_weight") for s in scaled},
                      **padding(role, tokenizer))
    st = path.stat()
    return LoadedLLM(fam, (encoder,), (), f"llm-file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}", str(path),  # type: ignore[arg-type]
                     tokenizers={"llm_tokenizer": tokenizer})
