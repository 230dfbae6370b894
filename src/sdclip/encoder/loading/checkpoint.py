"""Safe, lazy reading of weight files: nothing executes, and only the tensors asked for are read.

- .safetensors: `safe_open` (memory-mapped); a file's header is checked on open (a truncated or corrupt
  file fails here), tensors are read one by one, so a multi-GB SD checkpoint costs only the text
  encoder's memory.
- .ckpt / .pt / .pth / .bin are pickles: read ONLY with `torch.load(weights_only=True)` (a pickle that
  would build arbitrary objects or run code is refused), memory-mapped where the file is in torch's zip
  format. SD checkpoints wrap their weights in {"state_dict": …}: unwrapped here.
- Sharded HF folders (`model.safetensors.index.json`): one view over the shards.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


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


class MemoryTensors(TensorFile):
    """Tensors already in memory (a live model's state dict), read through the same checks as files."""

    def __init__(self, tensors: dict[str, torch.Tensor], name: str = "<memory>"):
        self.path = Path(name)
        self._tensors = tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key]


class SafetensorsFile(TensorFile):
    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = Path(path)
        try:
            self._f = safe_open(str(self.path), framework="pt", device="cpu")
            self._keys = list(self._f.keys())
        except Exception as e:  # SafetensorError, OSError, header JSON errors
            raise CheckpointError(f"{self.path}: not a readable safetensors file ({type(e).__name__}: {e})") from e

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._f.get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._f.get_tensor(key)
        except Exception as e:
            raise CheckpointError(f"{self.path}: cannot read tensor {key!r} ({type(e).__name__}: {e})") from e


class PickleFile(MemoryTensors):
    """A torch pickle, loaded with weights_only=True (no code runs), mmap when the format allows; once
    loaded, its flattened state dict is read like any tensors in memory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        super().__init__(_flatten_state(self._load(), self.path), str(path))

    def _load(self) -> object:
        mmap = zipfile.is_zipfile(self.path)
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"{self.path}: refused — this pickle holds more than plain tensors (it may run code when "
                f"loaded; only torch.load(weights_only=True) content is accepted): {str(e).splitlines()[0]}"
            ) from e
        except Exception as e:  # truncated zip, garbage bytes, …
            raise CheckpointError(f"{self.path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e


class ShardedFiles(TensorFile):
    """HF sharded weights: an index.json whose weight_map names the shard of each tensor."""

    def __init__(self, index: Path):
        self.path = Path(index)
        try:
            weight_map = json.loads(self.path.read_text())["weight_map"]
        except Exception as e:
            raise CheckpointError(f"{self.path}: not a readable shard index ({e})") from e
        self._files: dict[str, TensorFile] = {}
        self._where: dict[str, TensorFile] = {}
        for key, shard in weight_map.items():
            f = self._files.get(shard)
            if f is None:
                f = self._files[shard] = open_tensor_file(self.path.parent / shard)
            self._where[key] = f

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key].shape(key)

    def get(self, key: str) -> torch.Tensor:
        return self._where[key].get(key)


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
        raise CheckpointError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith(".index.json"):
        return ShardedFiles(path)
    if name.endswith(SAFETENSORS_SUFFIXES):
        return SafetensorsFile(path)
    if name.endswith(PICKLE_SUFFIXES) or zipfile.is_zipfile(path):
        return PickleFile(path)
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return SafetensorsFile(path)
    raise CheckpointError(f"{path}: unknown weight format (expected .safetensors, .ckpt, .pt, .pth or .bin)")


def read_checked(f: TensorFile, key: str, shape: Iterable[int]) -> torch.Tensor:
    """Read one tensor and assert its shape and that every value is finite."""
    if key not in f:
        raise CheckpointError(f"{f.path}: missing tensor {key!r}")
    t = f.get(key)
    shape = tuple(shape)
    if tuple(t.shape) != shape:
        raise CheckpointError(f"{f.path}: {key!r} has shape {tuple(t.shape)}, expected {shape}")
    if not t.is_floating_point():
        raise CheckpointError(f"{f.path}: {key!r} is {t.dtype}, expected a floating-point tensor")
    if not bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{f.path}: {key!r} contains NaN or infinite values")
    return t
