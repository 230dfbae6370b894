"""T5 encoder weights from the files SD3 / SD3.5 / Flux users have, read lazily and never unpickled.

Layouts (keys are transformers' `T5EncoderModel` keys under a prefix):
- a transformers / diffusers folder (`text_encoder_3/` of SD3, `text_encoder_2/` of Flux, or the pipeline
  root): config.json + model.safetensors or sharded `model.safetensors.index.json`; no prefix;
- SD3 / SD3.5 single files: prefix `text_encoders.t5xxl.transformer.` (diffusers' `is_t5_in_single_file`,
  ComfyUI's `t5_xxl_detect`);
- ComfyUI's separate `t5xxl_fp16.safetensors` / `t5xxl_fp8_e4m3fn.safetensors`: no prefix. fp8-stored
  linear weights (and the token table) stay fp8 in memory and are upcast one layer at a time at use;
  `*_scaled` files (marker tensor `scaled_fp8`, per-layer `<layer>.scale_weight`) are dequantised as
  ComfyUI does: `weight.to(dtype) * scale_weight`. Other quantisations are refused by name.

Shapes come from the tensors (config.json, where present, must agree); the relative-attention maximum
distance, which no tensor holds, is 128 unless a config says otherwise.

umT5 (`UMT5EncoderModel`: Wan's `text_encoder/`, AuraFlow's `text_encoder/`, ComfyUI's
`umt5_xxl_fp16.safetensors` / `umt5_xxl_fp8_e4m3fn_scaled.safetensors`, same key names as T5) is told apart
by its tensors: every block holds `layer.0.SelfAttention.relative_attention_bias.weight` (T5 v1.1: block 0
only); a config.json saying `model_type` "umt5" must agree. Each table is read into its block.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from sdclip.bounded_files import loads, read_json

from sdclip.encoder.loading.checkpoint import CheckpointError, ShardedFiles, TensorFile, open_tensor_file, overflow_message
from sdclip.encoder.t5 import STORAGE_ONLY, T5Config, T5ConfigError, T5Encoder

__all__ = ["SINGLE_FILE_PREFIX", "PlainSafetensors", "find_t5_prefix", "load_t5", "open_weights", "t5_config_from_tensors", "t5_folder"]

#: where SD3 / SD3.5 single files keep the T5 encoder
SINGLE_FILE_PREFIX = "text_encoders.t5xxl.transformer."
_ANCHOR = "encoder.final_layer_norm.weight"
_TABLE_KEYS = ("shared.weight", "encoder.embed_tokens.weight")
WEIGHT_NAMES = ("model.safetensors.index.json", "model.safetensors", "model.fp16.safetensors",
                "pytorch_model.bin.index.json", "pytorch_model.bin")
#: keys of quantisations this loader does not implement (refused by name rather than misread)
_FOREIGN_QUANT = (".qweight", ".weight_scale", ".input_scale", ".comfy_quant", ".absmax", ".quant_state", ".SCB")
_LINEARS = {
    "layer.0.SelfAttention.q": "q", "layer.0.SelfAttention.k": "k", "layer.0.SelfAttention.v": "v",
    "layer.0.SelfAttention.o": "o", "layer.1.DenseReluDense.wi_0": "wi_0", "layer.1.DenseReluDense.wi_1": "wi_1",
    "layer.1.DenseReluDense.wi": "wi_0", "layer.1.DenseReluDense.wo": "wo",
}


# ---- finding the encoder --------------------------------------------------------------------------

def find_t5_prefix(f: TensorFile) -> str | None:
    """The key prefix of a T5 encoder in `f` ("" for bare keys), or None when it holds none."""
    for prefix in ("", SINGLE_FILE_PREFIX):
        if prefix + _ANCHOR in f and any(prefix + k in f for k in _TABLE_KEYS):
            return prefix
    hits = sorted(k[: -len(_ANCHOR)] for k in f.keys() if k.endswith(_ANCHOR) and "decoder" not in k)
    for prefix in hits:
        if any(prefix + k in f for k in _TABLE_KEYS):
            return prefix
    return None


def _config(folder: Path) -> object:
    """A folder's config.json through the bounded reader (None without one)."""
    cfg = folder / "config.json"
    return read_json(cfg, CheckpointError, "unreadable config") if cfg.exists() else None


def t5_folder(path: Path) -> Path | None:
    """The T5 encoder folder of a transformers folder or a diffusers SD3 / Flux pipeline folder."""
    for cand in (path, path / "text_encoder_3", path / "text_encoder_2", path / "text_encoder"):
        doc = _config(cand)
        if isinstance(doc, dict) and doc.get("model_type") in ("t5", "umt5"):
            return cand
    return None


def _folder_file(folder: Path) -> tuple[TensorFile, dict]:
    cfg = _config(folder)
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return open_weights(folder / name), cfg
    raise CheckpointError(f"{folder}: config.json but no weights (looked for {', '.join(WEIGHT_NAMES)})")


# ---- reading without mapping ---------------------------------------------------------------------

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_MAX_HEADER = 100 << 20


class PlainSafetensors(TensorFile):
    """A .safetensors file read tensor by tensor with `readinto` into fresh memory, never mapped.

    Why not `safe_open`: its mapping keeps every page it touched resident for as long as the file is
    open, so converting a T5-XXL file costs the file's size twice over (measured 2.4× the file's size);
    reading into the tensor itself costs the tensors and one tensor in flight. The header is checked
    (size, JSON, known dtypes, offsets inside the file and matching each shape) before anything is read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                head = fh.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else -1
                if not 2 <= n <= min(_MAX_HEADER, size - 8):
                    raise ValueError(f"header length {n} does not fit a file of {size} bytes")
                doc = loads(fh.read(n), self.path, CheckpointError, "not a readable safetensors header")
        except (OSError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{self.path}: not a readable safetensors file ({e})") from None
        if not isinstance(doc, dict):
            raise CheckpointError(f"{self.path}: safetensors header is not a JSON object")
        base, data = 8 + n, size - 8 - n
        self._meta: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for key, info in doc.items():
            if key == "__metadata__":
                continue
            try:
                dtype = _ST_DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                lo, hi = (int(x) for x in info["data_offsets"])
                numel = 1
                for d in shape:
                    if d < 0:
                        raise ValueError
                    numel *= d
                ok = dtype is not None and 0 <= lo <= hi <= data and hi - lo == numel * torch.empty(0, dtype=dtype).element_size()
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                raise CheckpointError(f"{self.path}: corrupt safetensors header entry for {key!r}")
            self._meta[key] = (dtype, shape, base + lo, hi - lo)

    def keys(self) -> list[str]:
        return list(self._meta)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._meta[key][1]

    def get(self, key: str) -> torch.Tensor:
        dtype, shape, at, nbytes = self._meta[key]
        buf = torch.empty(nbytes, dtype=torch.uint8)
        try:
            with open(self.path, "rb") as fh:
                fh.seek(at)
                got = fh.readinto(memoryview(buf.numpy()))
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read tensor {key!r} ({e})") from None
        if got != nbytes:
            raise CheckpointError(f"{self.path}: tensor {key!r} is cut short (file truncated)")
        return buf.view(dtype).reshape(shape) if nbytes else torch.empty(shape, dtype=dtype)

    def read_as(self, key: str, dtype: torch.dtype | None) -> torch.Tensor:
        """The tensor converted to `dtype` (None: as stored), read in chunks of ≤ _CHUNK bytes straight
        into the result: no full-size temporary; every chunk is checked for NaN / inf on the way."""
        stored, shape, at, nbytes = self._meta[key]
        dtype = dtype or stored
        if not (stored.is_floating_point and dtype.is_floating_point):
            raise CheckpointError(f"{self.path}: {key!r} is {stored}: a quantisation this loader does not read")
        out = torch.empty(shape, dtype=dtype)
        flat_out = out.view(-1)
        item = torch.empty(0, dtype=stored).element_size()
        step = max(1, _CHUNK // item)
        direct = dtype == stored
        with open(self.path, "rb") as fh:
            fh.seek(at)
            for lo in range(0, flat_out.numel(), step):
                part = flat_out[lo: lo + step]
                buf = part.view(torch.uint8) if direct else torch.empty(part.numel() * item, dtype=torch.uint8)
                if fh.readinto(memoryview(buf.numpy())) != buf.numel():
                    raise CheckpointError(f"{self.path}: tensor {key!r} is cut short (file truncated)")
                chunk = buf.view(stored)
                if not _finite(chunk):
                    raise CheckpointError(f"{self.path}: {key!r} contains NaN or infinite values")
                if not direct:
                    part.copy_(chunk)
                    if dtype == torch.float16 and not bool(torch.isfinite(part).all()):  # fp32 / bf16 values past fp16's range
                        raise CheckpointError(overflow_message(chunk, dtype, f"{self.path}: {key!r}"))
        return out


_CHUNK = 4 << 20  #: small enough that the per-chunk temporaries never matter


class _Shards(ShardedFiles):
    """A sharded folder (`*.index.json`) whose shards are read by `open_weights` (chunked, converting)."""

    def __init__(self, index: Path):
        super().__init__(index, open_weights)

    def read_as(self, key: str, dtype: torch.dtype | None) -> torch.Tensor:
        f = self._where[key]
        return f.read_as(key, dtype) if hasattr(f, "read_as") else f.get(key)


def open_weights(path: Path) -> TensorFile:
    """Like `open_tensor_file`, but .safetensors (and their shards) are read without mapping."""
    path = Path(path)
    readers = {".safetensors.index.json": _Shards, ".safetensors": PlainSafetensors}
    reader = next((r for suffix, r in readers.items() if path.name.lower().endswith(suffix)), None)
    if reader is None or not path.is_file():
        return open_tensor_file(path)  # other formats, and the one "no such file" error
    return reader(path)


# ---- shapes ---------------------------------------------------------------------------------------

def t5_config_from_tensors(f: TensorFile, prefix: str, config: dict | None = None) -> T5Config:
    """The encoder's shape read off the tensors; `config` (a config.json) supplies what tensors cannot
    (max distance, epsilon, activation) and must agree with them."""
    p = prefix
    table = next((p + k for k in _TABLE_KEYS if p + k in f), None)
    if table is None:
        raise CheckpointError(f"{f.path}: no T5 token table ({p}shared.weight)")
    vocab, d_model = _shape(f, table, 2)
    blocks = {int(m.group(1)) for k in f.keys() if (m := re.match(re.escape(p) + r"encoder\.block\.(\d+)\.", k))}
    layers = len(blocks)
    if layers == 0 or blocks != set(range(layers)):
        raise CheckpointError(f"{f.path}: T5 blocks {sorted(blocks)[:8]} are not numbered 0..n-1")
    inner = _shape(f, f"{p}encoder.block.0.layer.0.SelfAttention.q.weight", 2)[0]
    rel = f"{p}encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    buckets, heads = _shape(f, rel, 2)
    gated = f"{p}encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in f
    ff_key = f"{p}encoder.block.0.layer.1.DenseReluDense.{'wi_0' if gated else 'wi'}.weight"
    d_ff = _shape(f, ff_key, 2)[0]
    if inner % heads:
        raise CheckpointError(f"{f.path}: attention width {inner} is not a multiple of {heads} heads")
    cfg = checked_t5_config(config, f.path)
    per_layer = layers > 1 and f"{p}encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in f
    said = cfg.get("model_type")
    if said in ("t5", "umt5") and (said == "umt5") != per_layer and layers > 1:
        raise CheckpointError(f"{f.path}: config.json says model_type={said!r}, but the tensors hold "
                              f"{'a relative-attention table in every block (umT5)' if per_layer else 'one relative-attention table (T5 v1.1)'}")
    per_layer = per_layer or said == "umt5"
    if per_layer:
        missing = [i for i in range(layers)
                   if f"{p}encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight" not in f]
        if missing:
            raise CheckpointError(f"{f.path}: umT5 block(s) {missing[:8]} have no relative_attention_bias table "
                                  "(every umT5 block holds its own)")
    kw = dict(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff, num_layers=layers,
              num_heads=heads, relative_attention_num_buckets=buckets)
    for name, value in kw.items():
        if name in cfg and cfg[name] != value and not (name == "vocab_size"):
            raise CheckpointError(f"{f.path}: config.json says {name}={cfg[name]!r}, the tensors {value!r}")
    proj = cfg.get("feed_forward_proj", "gated-gelu" if gated else "relu")
    if proj.startswith("gated-") != gated:
        raise CheckpointError(f"{f.path}: config.json says feed_forward_proj={proj!r}, the tensors are "
                              f"{'gated (wi_0, wi_1)' if gated else 'not gated (wi)'}")
    try:
        return T5Config(**kw, relative_attention_max_distance=cfg.get("relative_attention_max_distance", 128),
                        layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-6), feed_forward_proj=proj,
                        per_layer_bias=per_layer)
    except T5ConfigError as e:
        raise CheckpointError(f"{f.path}: {e}") from None


def checked_t5_config(config: object, where: object) -> dict:
    """A T5 config.json (or a live model's config dict) with the fields the loader reads of the right types,
    named when wrong ({"feed_forward_proj": 5} used to end in AttributeError)."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: T5 config must be a JSON object, found a {type(config).__name__}")
    proj = config.get("feed_forward_proj", "gated-gelu")
    if not isinstance(proj, str):
        raise CheckpointError(f"{where}: config.json feed_forward_proj must be a string such as 'gated-gelu', found {proj!r:.80}")
    for name in ("relative_attention_max_distance", "layer_norm_epsilon"):
        value = config.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CheckpointError(f"{where}: config.json {name} must be a number, found {value!r:.80}")
    return dict(config)


def _shape(f: TensorFile, key: str, dims: int) -> tuple[int, ...]:
    if key not in f:
        raise CheckpointError(f"{f.path}: missing tensor {key!r}")
    s = tuple(f.shape(key))
    if len(s) != dims:
        raise CheckpointError(f"{f.path}: {key!r} has shape {s}, expected {dims} dimensions")
    return s


# ---- reading --------------------------------------------------------------------------------------

def _finite(t: torch.Tensor) -> bool:
    if t.dtype in STORAGE_ONLY:  # isfinite has no fp8 kernel: NaN / inf bit patterns by format
        b = t.view(torch.uint8)
        if t.dtype == getattr(torch, "float8_e5m2", None):
            return not bool(((b & 0x7C) == 0x7C).any())
        if t.dtype == getattr(torch, "float8_e4m3fn", None):
            return not bool(((b & 0x7F) == 0x7F).any())
        return not bool((b == 0x80).any())  # the fnuz formats: 0x80 is their only NaN
    return bool(torch.isfinite(t).all())


def _read(f: TensorFile, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    if key not in f:
        raise CheckpointError(f"{f.path}: missing tensor {key!r}")
    t = f.get(key)
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{f.path}: {key!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if not t.is_floating_point():
        raise CheckpointError(f"{f.path}: {key!r} is {t.dtype}: a quantisation this loader does not read")
    if not _finite(t):
        raise CheckpointError(f"{f.path}: {key!r} contains NaN or infinite values")
    return t


def _stored_dtype(f: TensorFile, key: str) -> torch.dtype:
    meta = getattr(f, "_meta", None)
    if meta is None and hasattr(f, "_where"):
        meta = getattr(f._where[key], "_meta", None)
    return meta[key][0] if meta is not None else f.get(key).dtype


def _scaled_fp8(f: TensorFile, prefix: str) -> bool:
    """Whether `f` is ComfyUI's scaled fp8 (the `scaled_fp8` marker, or per-layer `scale_weight` tensors); a
    file named `*_scaled*` holding fp8 weights but neither is refused: read as plain fp8 it would be wrong by
    each layer's scale, silently."""
    marker = prefix + "scaled_fp8"
    if marker in f or any(k.startswith(prefix) and k.endswith(".scale_weight") for k in f.keys()):
        return True
    name = Path(str(f.path)).name.lower()
    if "scaled" in name and name.endswith(".safetensors"):
        probe = f"{prefix}encoder.block.0.layer.0.SelfAttention.q.weight"
        if probe in f and _stored_dtype(f, probe) in STORAGE_ONLY:
            raise CheckpointError(
                f"{f.path}: named as a scaled-fp8 file and its weights are fp8, but it holds no scale_weight tensors "
                "(nor the scaled_fp8 marker): its fp8 weights cannot be dequantised; the file is incomplete")
    for k in f.keys():
        if k.startswith(prefix) and k.endswith(_FOREIGN_QUANT):
            raise CheckpointError(
                f"{f.path}: {k!r} belongs to a quantised format this loader does not read (plain fp16/bf16/fp32, "
                "fp8 and ComfyUI's scaled fp8 are read); use t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors"
            )
    return False


def _source(path: str | Path | TensorFile, config: dict | None = None) -> tuple[TensorFile, str, dict | None]:
    if isinstance(path, TensorFile):
        f, cfg = path, config
    else:
        path = Path(path)
        if path.is_dir():
            folder = t5_folder(path)
            if folder is None:
                raise CheckpointError(f"{path}: no T5 encoder folder (config.json with model_type 't5' here or in "
                                      "text_encoder_3/ or text_encoder_2/)")
            f, cfg = _folder_file(folder)
        else:
            f, cfg = open_weights(path), None
    prefix = find_t5_prefix(f)
    if prefix is None:
        raise CheckpointError(
            f"{f.path}: holds no T5 encoder (no {_ANCHOR!r} with a token table, bare or under "
            f"{SINGLE_FILE_PREFIX!r}); a checkpoint with only the diffusion transformer needs the text-encoder "
            "files beside it: t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn.safetensors) and clip_l.safetensors"
        )
    return f, prefix, cfg


def load_t5(
    source: str | Path | TensorFile,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    keep_fp8: bool = True,
    fp16_wo_fp32: bool = True,
    config: dict | None = None,
) -> T5Encoder:
    """A T5Encoder from a folder, a single file (SD3 with `text_encoders.t5xxl.transformer.`) or a bare
    T5 file, computing in `dtype`.

    keep_fp8: fp8-stored linear weights and token table stay fp8 (upcast at use); False upcasts at load.
    fp16_wo_fp32: with dtype fp16, keep `wo` in fp32 as transformers' `from_pretrained` does
    (`_keep_in_fp32_modules`), so fp16 results match it; fp8-stored `wo` is left to the upcast rule.
    config: a transformers config dict for a TensorFile source (a live model's state dict).
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point) or dtype in STORAGE_ONLY:
        raise ValueError(f"dtype must be a compute float dtype (float32, bfloat16, float16), got {dtype!r}")
    f, p, config = _source(source, config)
    cfg = t5_config_from_tensors(f, p, config)
    scaled = _scaled_fp8(f, p)
    model = T5Encoder(cfg, device="meta", dtype=dtype)
    state: dict[str, torch.Tensor] = {}

    def take(key: str, shape: tuple[int, ...], keep: bool, to: torch.dtype = dtype) -> torch.Tensor:
        if hasattr(f, "read_as") and key in f:
            if tuple(f.shape(key)) != tuple(shape):
                raise CheckpointError(f"{f.path}: {key!r} has shape {tuple(f.shape(key))}, expected {tuple(shape)}")
            stays = keep and _stored_dtype(f, key) in STORAGE_ONLY
            return f.read_as(key, None if stays else to).to(device)
        t = _read(f, key, shape)
        if keep and t.dtype in STORAGE_ONLY:
            return t.to(device)
        u = t.to(device=device, dtype=to)
        if to == torch.float16 and t.dtype != to and not bool(torch.isfinite(u).all()):
            raise CheckpointError(overflow_message(t, to, f"{f.path}: {key!r}"))
        return u

    table = next(p + k for k in _TABLE_KEYS if p + k in f)
    state["embed"] = take(table, (cfg.vocab_size, cfg.d_model), keep_fp8 and not scaled)
    rel = f"{p}encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    state["rel_bias"] = take(rel, (cfg.relative_attention_num_buckets, cfg.num_heads), False)
    state["final_norm"] = take(f"{p}encoder.final_layer_norm.weight", (cfg.d_model,), False)
    shapes = {"q": (cfg.inner, cfg.d_model), "k": (cfg.inner, cfg.d_model), "v": (cfg.inner, cfg.d_model),
              "o": (cfg.d_model, cfg.inner), "wi_0": (cfg.d_ff, cfg.d_model), "wi_1": (cfg.d_ff, cfg.d_model),
              "wo": (cfg.d_model, cfg.d_ff)}
    wo_dtype = torch.float32 if (dtype == torch.float16 and fp16_wo_fp32) else dtype
    for i in range(cfg.num_layers):
        b = f"{p}encoder.block.{i}."
        if cfg.per_layer_bias and i > 0:
            state[f"blocks.{i}.rel_bias"] = take(b + "layer.0.SelfAttention.relative_attention_bias.weight",
                                                 (cfg.relative_attention_num_buckets, cfg.num_heads), False)
        state[f"blocks.{i}.ln_attn"] = take(b + "layer.0.layer_norm.weight", (cfg.d_model,), False)
        state[f"blocks.{i}.ln_ff"] = take(b + "layer.1.layer_norm.weight", (cfg.d_model,), False)
        for src, dst in _LINEARS.items():
            if (dst == "wi_1" and not cfg.gated) or (src.endswith(".wi") and cfg.gated) or \
                    (src.endswith(".wi_0") and not cfg.gated):
                continue
            key = f"{b}{src}.weight"
            w = take(key, shapes[dst], keep_fp8 or scaled, wo_dtype if dst == "wo" else dtype)
            if scaled and w.dtype in STORAGE_ONLY:
                if f"{b}{src}.scale_weight" not in f:
                    raise CheckpointError(
                        f"{f.path}: a scaled-fp8 file (it holds the 'scaled_fp8' marker) without {b}{src}.scale_weight: "
                        "its fp8 weights cannot be dequantised; the file is incomplete (download it again)")
                s = _read(f, f"{b}{src}.scale_weight", f.shape(f"{b}{src}.scale_weight"))
                if s.numel() != 1:
                    raise CheckpointError(f"{f.path}: {b}{src}.scale_weight must be one number, got {tuple(s.shape)}")
                if not keep_fp8:
                    w = w.to(dtype) * s.to(dtype)
                else:
                    state[f"blocks.{i}.{dst}.scale"] = s.reshape(()).to(device=device, dtype=torch.float32)
            state[f"blocks.{i}.{dst}.weight"] = w
    _check_leftovers(f, p, cfg, scaled)
    for name, t in state.items():
        if name.endswith(".scale"):
            mod = model.get_submodule(name[: -len(".scale")])
            mod.scale = t
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:  # a bug here, not in the file
        raise CheckpointError(f"{f.path}: internal T5 mapping error (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def _check_leftovers(f: TensorFile, p: str, cfg: T5Config, scaled: bool) -> None:
    """Refuse encoder tensors nothing read (a layout this loader would silently misread)."""
    known = re.compile(
        r"encoder\.block\.\d+\.layer\.[01]\.(layer_norm\.weight|SelfAttention\.[qkvo]\.(weight|scale_weight|scale_input)"
        r"|SelfAttention\.relative_attention_bias\.weight|DenseReluDense\.(wi_0|wi_1|wi|wo)\.(weight|scale_weight|scale_input))"
        r"|encoder\.final_layer_norm\.weight|encoder\.embed_tokens\.weight"
    )
    left = [k for k in f.keys() if k.startswith(p + "encoder.") and not known.fullmatch(k[len(p):])]
    if left:
        raise CheckpointError(f"{f.path}: {len(left)} unexpected T5 encoder tensor(s), e.g. {left[:4]}: "
                              "a layout this loader does not know; refusing to guess")
