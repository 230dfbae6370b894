"""Textual-inversion embedding files: the formats users download, read safely, checked loudly.

Formats recognised (by content, not by extension):
- AUTOMATIC1111 `.pt`/`.bin`: a pickle of `{"string_to_token": …, "string_to_param": {"*": [n, D]}, "name",
  "step", "sd_checkpoint", …}`. Pickles are read ONLY with `torch.load(weights_only=True)`: a file whose
  pickle would import or call anything beyond tensors and plain containers is refused, never run.
- kohya / A1111 `.safetensors`: `{"emb_params": [n, D]}`.
- diffusers `learned_embeds.bin` / `.safetensors`: `{"<token>": [D] or [n, D]}` (one key).
- SDXL `.safetensors`: `{"clip_l": [n, 768], "clip_g": [n, 1280]}` (one set of vectors per encoder).
- a bare tensor pickled on its own.
Single-width files are stored under the role "any" and matched to an encoder by width at use time
(768 = CLIP ViT-L "clip_l", 1024 = OpenCLIP ViT-H "clip_h", 1280 = OpenCLIP bigG "clip_g").
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from sdclip.conventions.family import EMBEDDING_KEYS

#: encoder roles an embedding file may name, with the width they have in real Stable Diffusion models
ROLES = EMBEDDING_KEYS
#: role of a file that holds one set of vectors for whatever encoder has its width
ANY = "any"
EXTENSIONS = (".pt", ".bin", ".safetensors")
#: metadata keys A1111 writes next to `string_to_param`
_A1111_META = {"string_to_token", "name", "step", "sd_checkpoint", "sd_checkpoint_name", "hash"}


class EmbeddingError(ValueError):
    """An embedding file or lookup that cannot be used: unsafe, corrupt, unknown layout, bad vectors."""


@dataclass(frozen=True)
class Embedding:
    """One textual-inversion embedding: `vectors[role]` is [n, width] float32, n the same for every role."""

    name: str
    vectors: dict[str, Tensor]

    def __post_init__(self) -> None:
        if not self.vectors:
            raise EmbeddingError(f"embedding {self.name!r} has no vectors")
        for role, vec in self.vectors.items():
            _check_vectors(vec, f"embedding {self.name!r} ({role})")
        counts = {role: v.shape[0] for role, v in self.vectors.items()}
        if len(set(counts.values())) != 1:
            raise EmbeddingError(f"embedding {self.name!r} has different vector counts per encoder: {counts}")

    @property
    def n_vectors(self) -> int:
        """How many token slots the embedding fills."""
        return next(iter(self.vectors.values())).shape[0]

    def for_width(self, width: int, role: str | None = None) -> Tensor:
        """The [n, width] vectors for an encoder of that width (and role, when the file names roles)."""
        candidates = []
        if role is not None and role in self.vectors:
            candidates = [role]
        elif role is None:
            candidates = [r for r, v in self.vectors.items() if v.shape[1] == width]
        if not candidates and ANY in self.vectors:
            candidates = [ANY]
        for r in candidates:
            if self.vectors[r].shape[1] == width:
                return self.vectors[r]
        have = ", ".join(f"{v.shape[1]} wide" + ("" if r == ANY else f" for {r}") for r, v in self.vectors.items())
        want = f"{role} ({width} wide)" if role else f"{width} wide"
        raise EmbeddingError(f"embedding {self.name!r} has no vectors for {want}; its vectors are {have} — made for another model?")


def _check_vectors(vec: object, what: str) -> Tensor:
    if not isinstance(vec, Tensor):
        raise EmbeddingError(f"{what}: expected a tensor, found {type(vec).__name__}")
    if not vec.is_floating_point():
        raise EmbeddingError(f"{what}: vectors must be floating point, found {vec.dtype}")
    if vec.dim() != 2 or vec.shape[0] < 1 or vec.shape[1] < 1:
        raise EmbeddingError(f"{what}: vectors must be [n, width] with n, width ≥ 1, found shape {list(vec.shape)}")
    if not bool(torch.isfinite(vec).all()):
        raise EmbeddingError(f"{what}: vectors contain NaN or infinite values")
    return vec


def _as_matrix(value: object, what: str) -> Tensor:
    """A stored tensor as [n, width] float32 (diffusers stores one vector as [width])."""
    if not isinstance(value, Tensor):
        raise EmbeddingError(f"{what}: expected a tensor, found {type(value).__name__}")
    vec = value.detach()
    if vec.dim() == 1:
        vec = vec.unsqueeze(0)
    _check_vectors(vec, what)
    return vec.to(device="cpu", dtype=torch.float32).contiguous()


def _read(path: Path) -> object:
    """The file's content: safetensors by its header, everything else as a weights-only pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise EmbeddingError(f"cannot read embedding file {path}: {e}") from e
    if not head:
        raise EmbeddingError(f"embedding file {path} is empty")
    is_safetensors = path.suffix.lower() == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")
    if is_safetensors:
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors ships with the torch extra
            raise EmbeddingError("reading .safetensors embeddings needs the `safetensors` package") from e
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise EmbeddingError(f"embedding file {path} is not a readable safetensors file: {e}") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only load failed" in str(e).lower() or "unsupported global" in str(e).lower():
            raise EmbeddingError(
                f"refusing to load {path}: its pickle needs code beyond plain tensors (it could run arbitrary "
                f"code when unpickled). Convert it to .safetensors with a tool you trust. [{first}]"
            ) from e
        raise EmbeddingError(f"embedding file {path} is corrupt: {first}") from e
    except Exception as e:
        raise EmbeddingError(f"embedding file {path} is corrupt or not an embedding: {type(e).__name__}: {e}") from e


def _vectors_from(data: object, where: str) -> dict[str, Tensor]:
    """The per-role vectors of a loaded file, by the first layout that fits."""
    if isinstance(data, Tensor):
        return {ANY: _as_matrix(data, where)}
    if not isinstance(data, dict) or not data:
        raise EmbeddingError(f"{where}: expected a dict of tensors, found {type(data).__name__}")
    if "string_to_param" in data:  # AUTOMATIC1111
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            n = len(params) if isinstance(params, dict) else type(params).__name__
            raise EmbeddingError(f"{where}: 'string_to_param' must hold exactly one tensor, found {n}")
        return {ANY: _as_matrix(next(iter(params.values())), f"{where} string_to_param")}
    roles = [k for k in data if k in ROLES]
    if roles:  # SDXL (clip_l + clip_g) or a file naming its one encoder
        extra = sorted(set(data) - set(roles))
        if extra:
            raise EmbeddingError(f"{where}: unexpected keys {extra} next to {roles}")
        return {r: _as_matrix(data[r], f"{where} {r}") for r in roles}
    if "emb_params" in data:  # kohya / A1111 safetensors
        return {ANY: _as_matrix(data["emb_params"], f"{where} emb_params")}
    tensors = {k: v for k, v in data.items() if isinstance(v, Tensor)}
    if len(tensors) == 1 and set(data) - set(tensors) <= _A1111_META:  # diffusers {token: vector}
        key, value = next(iter(tensors.items()))
        return {ANY: _as_matrix(value, f"{where} {key!r}")}
    raise EmbeddingError(
        f"{where}: no known embedding key (string_to_param, emb_params, clip_l/clip_g, or one token→tensor); "
        f"found keys {sorted(map(str, data))[:10]}"
    )


def load_embedding(path: str | os.PathLike, name: str | None = None) -> Embedding:
    """Read one embedding file; `name` (what prompts call it) defaults to the file stem."""
    path = Path(path)
    data = _read(path)
    vectors = _vectors_from(data, f"embedding file {path.name}")
    return Embedding(name or path.stem, vectors)


class EmbeddingLibrary:
    """The embeddings a conditioner knows, by name."""

    def __init__(self, items: Iterable[str | os.PathLike | Embedding] = ()):
        self._items: dict[str, Embedding] = {}
        #: files `load_dir(strict=False)` skipped, with why
        self.skipped: dict[Path, str] = {}
        for item in items:
            self.add(item)

    def add(self, item: str | os.PathLike | Embedding, *, replace: bool = False) -> Embedding:
        """Add an Embedding or load one from a file; a second one with the same name is an error unless `replace`."""
        emb = item if isinstance(item, Embedding) else load_embedding(item)
        if emb.name in self._items and not replace:
            raise EmbeddingError(f"an embedding named {emb.name!r} is already loaded (pass replace=True to override)")
        self._items[emb.name] = emb
        return emb

    def load_dir(self, path: str | os.PathLike, *, strict: bool = True) -> list[str]:
        """Load every .pt/.bin/.safetensors under `path` (recursively, sorted); returns the names added.

        strict: the first bad file raises EmbeddingError; otherwise bad files are recorded in `skipped`.
        """
        root = Path(path)
        if not root.is_dir():
            raise EmbeddingError(f"embedding folder {root} does not exist")
        added = []
        for file in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS):
            try:
                added.append(self.add(file).name)
            except EmbeddingError as e:
                if strict:
                    raise
                self.skipped[file] = str(e)
        return added

    @property
    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Embedding]:
        return iter(self._items.values())

    def get(self, name: str) -> Embedding:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names) or "none loaded"
            raise EmbeddingError(f"unknown embedding {name!r}; known: {known}") from None

    def vector_counts(self) -> dict[str, int]:
        """name → number of token slots, what the tokenizer needs to lay out vector runs."""
        return {name: emb.n_vectors for name, emb in sorted(self._items.items())}
