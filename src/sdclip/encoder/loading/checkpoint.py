"""Safe, lazy reading of weight files: nothing executes, and only the tensors asked for are read.

- .safetensors: `safe_open` (memory-mapped); a file's header is checked on open (a truncated or corrupt
  file fails here), tensors are read one by one, so a multi-GB SD checkpoint costs only the text
  encoder's memory.
- .ckpt / .pt / .pth / .bin are pickles: read ONLY with `torch.load(weights_only=True)` (a pickle that
  would build arbitrary objects or run code is refused), memory-mapped where the file is in torch's zip
  format. SD checkpoints wrap their weights in {"state_dict": …}: unwrapped here. torch's advice to
  re-run with weights_only=False is never passed on: the error says what the file holds instead.
- Sharded HF folders (`model.safetensors.index.json`): one view over the shards.

Hostile content is refused before anything is allocated from it: a safetensors header whose shapes exceed
the file (safetensors checks), a zip whose members are compressed (torch never writes them), a pickled
tensor that is a view repeating fewer stored bytes than it claims (stride 0: `expand`), meta (no data) and
sparse tensors. fp8-stored tensors are read and upcast to float32 (`read_checked`), then checked.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from sdclip.bounded_files import file_kind, open_regular, read_json

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
#: float types torch stores but has no arithmetic for on every device (isfinite, sum…): upcast to read
STORAGE_ONLY = tuple(t for t in (getattr(torch, n, None) for n in (
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")) if t is not None)
#: torch.save writes its zip uncompressed; a member that inflates past this many times the file is refused
_MAX_INFLATE = 4


class CheckpointError(ValueError):
    """The one error for weights that cannot be used: unreadable, hostile, incomplete, wrong shape,
    non-finite, unknown layout or a family that contradicts the keys. Nothing runs after it."""


class TensorFile:
    """Read-only view of named tensors: keys, shapes without reading data, and single tensors."""

    path: Path

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def __contains__(self, key: str) -> bool:
        return key in self._keyset

    @property
    def _keyset(self) -> set[str]:
        if not hasattr(self, "_ks"):
            self._ks = set(self.keys())
        return self._ks


def check_materialised(t: torch.Tensor, what: str, error: type[ValueError] = ValueError) -> torch.Tensor:
    """Refuse a tensor whose data is not all there: meta (shape only), sparse / non-strided layouts, and
    views that repeat fewer stored bytes than they claim (stride 0 from `expand`: reading them would
    allocate their logical size — terabytes from a few bytes of file)."""
    if t.is_meta:
        raise error(f"{what} is a meta tensor (a shape without data)")
    if t.layout != torch.strided:
        raise error(f"{what} is a {str(t.layout).removeprefix('torch.')} tensor; only dense tensors are read")
    need = t.numel() * t.element_size()
    have = t.untyped_storage().nbytes()
    if need > have:
        raise error(
            f"{what} claims shape {list(t.shape)} ({need:,} bytes) over {have:,} stored bytes "
            f"(strides {list(t.stride())}: an expanded view); refused rather than allocated"
        )
    return t


def upcast_storage_only(t: torch.Tensor) -> torch.Tensor:
    """fp8 (and other storage-only floats) as float32, so they can be checked and converted."""
    return t.float() if t.dtype in STORAGE_ONLY else t


class MemoryTensors(TensorFile):
    """Tensors already in memory (a live model's state dict), read through the same checks as files."""

    def __init__(self, tensors: dict[str, torch.Tensor], name: str = "<memory>"):
        self.path = Path(name)
        self._tensors = tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self._tensors:
            raise CheckpointError(f"{self.path}: missing tensor {key!r}")
        return tuple(self._tensors[key].shape)

    def get(self, key: str) -> torch.Tensor:
        if key not in self._tensors:
            raise CheckpointError(f"{self.path}: missing tensor {key!r}")
        return check_materialised(self._tensors[key], f"{self.path}: {key!r}", CheckpointError)


class SafetensorsFile(TensorFile):
    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = Path(path)
        try:
            self._f = safe_open(str(self.path), framework="pt", device="cpu")
            self._keys = list(self._f.keys())
        except Exception as e:  # SafetensorError, OSError, header JSON errors
            raise CheckpointError(f"{self.path}: not a readable safetensors file ({_one_line(e)})") from e

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self:
            raise CheckpointError(f"{self.path}: missing tensor {key!r}")
        return tuple(self._f.get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._f.get_tensor(key)
        except Exception as e:
            if key not in self:
                raise CheckpointError(f"{self.path}: missing tensor {key!r}") from None
            raise CheckpointError(f"{self.path}: cannot read tensor {key!r} ({_one_line(e)})") from e


class PickleFile(MemoryTensors):
    """A torch pickle, loaded with weights_only=True (no code runs), mmap when the format allows; once
    loaded, its flattened state dict is read like any tensors in memory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        super().__init__(_flatten_state(self._load(), self.path), str(path))

    def _load(self) -> object:
        return safe_torch_load(self.path, CheckpointError)


class ShardedFiles(TensorFile):
    """HF sharded weights: an index.json whose weight_map names the shard of each tensor; each shard is
    opened by `opener` (default `open_tensor_file`)."""

    def __init__(self, index: Path, opener: Callable[[Path], TensorFile] | None = None):
        self.path = Path(index)
        opener = opener or open_tensor_file
        doc = read_json(self.path, CheckpointError, "not a readable shard index")
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{self.path}: weight_map must map tensor names to shard file names")
        self._files: dict[str, TensorFile] = {}
        self._where: dict[str, TensorFile] = {}
        for key, shard in weight_map.items():
            if Path(shard).name != shard:
                raise CheckpointError(f"{self.path}: shard {shard!r} is not a file name beside the index")
            f = self._files.get(shard)
            if f is None:
                f = self._files[shard] = opener(self.path.parent / shard)
            self._where[key] = f

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key].shape(key)

    def get(self, key: str) -> torch.Tensor:
        return self._where[key].get(key)


def _one_line(e: BaseException) -> str:
    """An exception as one short line: its type and first non-empty line."""
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


#: torch's own advice in a weights-only failure (never passed on: it says to turn the protection off)
_TORCH_HINTS = ("weights only load failed", "weights_only", "trusted source", "file an issue", "check the documentation",
                "do those steps", "(1)", "(2)", "please file", "torch.serialization", "you can use")


def _unpickling_reason(e: BaseException) -> str:
    """What torch's weights-only unpickler objected to, without its advice to load unsafely."""
    text = str(e)
    glob = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL)\s+([\w.]+)", text, re.IGNORECASE)
    if glob:
        return f"global {glob.group(1)}"
    keep = [line.strip() for line in text.splitlines()
            if line.strip() and not any(h in line.lower() for h in _TORCH_HINTS)]
    reason = "; ".join(keep).replace("WeightsUnpickler error:", "").strip(" ;")
    return reason[:200] or type(e).__name__


def _check_zip(path: Path, error: type[ValueError]) -> None:
    """torch.save zips are stored, not deflated: a compressed or inflating member is refused before reading."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise error(f"{path}: not a checkpoint sdclip can read (damaged zip: {_one_line(e)})") from None
    total = sum(m.file_size for m in members)
    packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
    if packed or total > _MAX_INFLATE * size + (1 << 20):
        what = f"compressed member(s) {packed[:3]}" if packed else f"members that inflate to {total:,} bytes"
        raise error(f"{path}: refused — a zip with {what} (torch.save never compresses); not a checkpoint sdclip reads")


def read_head(path: Path, n: int, error: type[ValueError]) -> bytes:
    """The first `n` bytes of a regular file (what tells its format), or one line of `error` if it has none
    (a FIFO, a device such as /dev/zero and a folder are refused by kind before anything is read)."""
    with open_regular(path, error, "cannot read the file") as fh:
        try:
            head = fh.read(n)
        except OSError as e:
            raise error(f"{path}: cannot read the file ({e.strerror or e})") from None
    if not head:
        raise error(f"{path}: the file is empty")
    return head


def safe_torch_load(path: Path, error: type[ValueError]) -> object:
    """`torch.load(weights_only=True)`, memory-mapped for zips, every failure one line of `error`.

    Never suggests loading with weights_only=False: a refused pickle is described (objects other than
    tensors, a plain Python pickle, or not a checkpoint at all) and converting to .safetensors is advised."""
    path = Path(path)
    head = read_head(path, 4, error)
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_zip(path, error)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's own warnings (sparse beta, storage) are not the user's business
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        reason = _unpickling_reason(e)
        if "global" in reason.lower():
            raise error(
                f"{path}: refused — the file holds objects other than tensors ({reason}); sdclip is refusing to "
                "unpickle them, since that could run code. Convert it to .safetensors with a tool you trust"
            ) from None
        if head[:1] == b"\x80" and head[1:2] in (b"\x03", b"\x04", b"\x05"):
            raise error(
                f"{path}: refused — a plain Python pickle (protocol {head[1]}), not a torch.save file; sdclip is "
                "refusing to unpickle it (it reads torch.save's tensor format and .safetensors). Convert it to "
                ".safetensors with a tool you trust"
            ) from None
        raise error(f"{path}: not a checkpoint sdclip can read (corrupt, or neither safetensors nor a torch.save "
                    f"file: {reason})") from None
    except (MemoryError, OverflowError) as e:
        raise error(f"{path}: refused — its tensors claim more memory than it holds ({_one_line(e)})") from None
    except Exception as e:  # truncated zip, garbage bytes, bad storage records…
        raise error(f"{path}: not a checkpoint sdclip can read (corrupt or truncated: {_one_line(e)})") from None


def _flatten_state(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded pickle: unwrap {"state_dict": …} / {"model": …}; drop non-tensor entries."""
    for _ in range(2):
        if isinstance(obj, dict):
            for wrapper in ("state_dict", "model", "module"):
                inner = obj.get(wrapper)
                if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                    obj = inner
                    break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    out = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not out:
        raise CheckpointError(f"{path}: holds no tensors")
    if all(k.startswith("module.") for k in out):  # saved from DataParallel / DDP
        out = {k[len("module."):]: v for k, v in out.items()}
    return out


def open_tensor_file(path: str | Path) -> TensorFile:
    """Open a weight file by suffix (sniffing the bytes when the suffix says nothing)."""
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise CheckpointError(f"{path}: not a regular file ({file_kind(path.stat().st_mode)}); weights are read "
                                  "from regular files only")
        raise CheckpointError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith(".index.json"):
        return ShardedFiles(path)
    if name.endswith(SAFETENSORS_SUFFIXES):
        return SafetensorsFile(path)
    if name.endswith(PICKLE_SUFFIXES) or zipfile.is_zipfile(path):
        return PickleFile(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(head) == 9 and head[8:9] == b"{":
        return SafetensorsFile(path)
    raise CheckpointError(
        f"{path}: not a checkpoint sdclip can read (expected .safetensors, or a torch.save .ckpt/.pt/.pth/.bin)")


def read_checked(f: TensorFile, key: str, shape: Iterable[int], *, finite: bool = True) -> torch.Tensor:
    """Read one tensor and assert its shape and (unless `finite=False`: the caller checks after its cast)
    that every value is finite. fp8-stored tensors come back as float32."""
    if key not in f:
        raise CheckpointError(f"{f.path}: missing tensor {key!r}")
    t = f.get(key)
    shape = tuple(shape)
    if tuple(t.shape) != shape:
        raise CheckpointError(f"{f.path}: {key!r} has shape {tuple(t.shape)}, expected {shape}")
    if not t.is_floating_point():
        raise CheckpointError(f"{f.path}: {key!r} is {t.dtype}, expected a floating-point tensor")
    t = upcast_storage_only(t)
    if finite and not bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{f.path}: {key!r} contains NaN or infinite values")
    return t


def overflow_message(src: torch.Tensor, dtype: torch.dtype, what: str) -> str:
    """Why a tensor is not finite in `dtype`: stored that way, or too large for the dtype."""
    s = upcast_storage_only(src)
    if not bool(torch.isfinite(s).all()):
        return f"{what} contains NaN or infinite values"
    big = float(s.abs().max())
    top = torch.finfo(dtype).max
    return (f"{what} holds values too large for {str(dtype).removeprefix('torch.')} (largest |value| {big:.3g}; "
            f"{str(dtype).removeprefix('torch.')} holds ±{top:.5g}): load it in float32 or bfloat16")
