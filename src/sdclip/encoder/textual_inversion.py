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

Hostile or odd files: fp8-stored vectors are read and upcast; meta, sparse and expanded (stride-0) tensors
are refused before anything is allocated from them. Names: two names equal but for case (`Style.pt`,
`style.pt`) are refused, naming both files (which one a prompt meant is a guess); a name that is an
ordinary one-token word of CLIP's vocabulary (`cat`) loads with a warning (`EmbeddingLibrary.warnings`,
and Python's `warnings`), since every "cat" in a prompt then becomes the embedding in the presets that
match bare names. Folders are walked following links once (a link loop is skipped with a warning).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sdclip.conventions.family import EMBEDDING_KEYS
from sdclip.encoder.loading.checkpoint import _one_line, check_materialised, read_head, safe_torch_load, upcast_storage_only

#: encoder roles an embedding file may name, with the width they have in real Stable Diffusion models
ROLES = EMBEDDING_KEYS
#: role of a file that holds one set of vectors for whatever encoder has its width
ANY = "any"
EXTENSIONS = (".pt", ".bin", ".safetensors")
#: metadata keys A1111 writes next to `string_to_param`
_A1111_META = {"string_to_token", "name", "step", "sd_checkpoint", "sd_checkpoint_name", "hash"}
#: more vectors or a wider vector than any textual inversion has (A1111 caps at 75; widths ≤ 1280 in SD)
MAX_VECTORS, MAX_WIDTH = 4096, 16384
#: files a folder walk reads at most (a folder holding more is not an embedding folder)
MAX_FILES = 100_000


class EmbeddingError(ValueError):
    """An embedding file or lookup that cannot be used: unsafe, corrupt, unknown layout, bad vectors."""


@dataclass(frozen=True)
class Embedding:
    """One textual-inversion embedding: `vectors[role]` is [n, width] float32, n the same for every role."""

    name: str
    vectors: dict[str, Tensor]
    source: str = field(default="", compare=False)  #: the file it came from, for error messages

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
    check_materialised(vec, what, EmbeddingError)
    if not vec.is_floating_point():
        raise EmbeddingError(f"{what}: vectors must be floating point, found {vec.dtype}")
    if vec.dim() != 2 or vec.shape[0] < 1 or vec.shape[1] < 1:
        raise EmbeddingError(f"{what}: vectors must be [n, width] with n, width ≥ 1, found shape {list(vec.shape)}")
    if vec.shape[0] > MAX_VECTORS or vec.shape[1] > MAX_WIDTH:
        raise EmbeddingError(f"{what}: shape {list(vec.shape)} is not a textual inversion (≤ {MAX_VECTORS} vectors "
                             f"of ≤ {MAX_WIDTH} values)")
    if not bool(torch.isfinite(upcast_storage_only(vec)).all()):
        raise EmbeddingError(f"{what}: vectors contain NaN or infinite values")
    return vec


def _as_matrix(value: object, what: str) -> Tensor:
    """A stored tensor as [n, width] float32 (diffusers stores one vector as [width])."""
    if not isinstance(value, Tensor):
        raise EmbeddingError(f"{what}: expected a tensor, found {type(value).__name__}")
    vec = check_materialised(value.detach(), what, EmbeddingError)
    if vec.dim() == 1:
        vec = vec.unsqueeze(0)
    _check_vectors(vec, what)
    return upcast_storage_only(vec).to(device="cpu", dtype=torch.float32).contiguous()


def _read(path: Path) -> object:
    """The file's content: safetensors by its header, everything else as a weights-only pickle."""
    head = read_head(path, 9, EmbeddingError)
    is_safetensors = path.suffix.lower() == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")
    if is_safetensors:
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors ships with the torch extra
            raise EmbeddingError("reading .safetensors embeddings needs the `safetensors` package") from e
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise EmbeddingError(f"embedding file {path} is not a readable safetensors file ({_one_line(e)})") from None
    return safe_torch_load(path, EmbeddingError)


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
    return Embedding(name or path.stem, vectors, str(path))


def is_vocabulary_word(name: str) -> bool:
    """True when `name` is a whole word of CLIP's vocabulary (one `word</w>` token, as "cat" is): a prompt
    using that word in its ordinary sense gets the embedding instead wherever bare names match."""
    from sdclip.tokenizer.vocab import packaged

    return (name.lower() + "</w>") in packaged()[0]


def _fold(name: str) -> str:
    """The key under which names that differ only by case meet (casefold: `ſ` ~ `s`, `Straße` ~ `strasse`)."""
    return name.casefold()


def _described(emb: Embedding) -> str:
    return emb.source or "an in-memory Embedding"


class EmbeddingLibrary:
    """The embeddings a conditioner knows, by name."""

    def __init__(self, items: Iterable[str | os.PathLike | Embedding] = ()):
        self._items: dict[str, Embedding] = {}
        self._folded: dict[str, str] = {}  #: casefolded name → the loaded name
        #: files `load_dir(strict=False)` skipped, with why
        self.skipped: dict[Path, str] = {}
        #: things a user should hear about (a name that is an ordinary word, a skipped link loop); the CLI
        #: prints them, Python callers also get them through `warnings.warn`
        self.warnings: list[str] = []
        for item in items:
            self.add(item)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        warnings.warn(message, UserWarning, stacklevel=3)

    def add(self, item: str | os.PathLike | Embedding, *, replace: bool = False) -> Embedding:
        """Add an Embedding or load one from a file; a second one with the same name — or a name equal
        but for case — is an error (naming both files) unless `replace`."""
        emb = item if isinstance(item, Embedding) else load_embedding(item)
        if not emb.name or not emb.name.strip():
            raise EmbeddingError(f"embedding from {_described(emb)} has an empty name")
        other = self._folded.get(_fold(emb.name))
        if other is not None and not replace:
            old = self._items[other]
            if other == emb.name:
                raise EmbeddingError(
                    f"an embedding named {emb.name!r} is already loaded (from {_described(old)}); {_described(emb)} "
                    "has the same name — rename or remove one (or pass replace=True to override)"
                )
            raise EmbeddingError(
                f"embeddings {other!r} ({_described(old)}) and {emb.name!r} ({_described(emb)}) differ only by "
                "case: which one a prompt means would be a guess — rename or remove one"
            )
        if other is not None:
            del self._items[other]
        self._items[emb.name] = emb
        self._folded[_fold(emb.name)] = emb.name
        if is_vocabulary_word(emb.name):
            self._warn(
                f"embedding {emb.name!r} ({_described(emb)}) is also an ordinary word: in the a1111, compel and "
                f"diffusers presets every {emb.name!r} in a prompt becomes the embedding (ComfyUI needs "
                f"'embedding:{emb.name}'); rename the file to keep the word"
            )
        return emb

    def load_dir(self, path: str | os.PathLike, *, strict: bool = True) -> list[str]:
        """Load every .pt/.bin/.safetensors under `path` (recursively, sorted, links followed once);
        returns the names added.

        strict: the first bad file raises EmbeddingError; otherwise bad files are recorded in `skipped`.
        """
        root = Path(path)
        if not root.is_dir():
            raise EmbeddingError(f"embedding folder {root} does not exist")
        added = []
        for file, problem in _embedding_files(root):
            if problem is not None:
                if strict:
                    raise EmbeddingError(f"{file}: {problem}")
                self.skipped[file] = problem
                self._warn(f"skipped {file}: {problem}")
                continue
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


def _embedding_files(root: Path) -> list[tuple[Path, str | None]]:
    """(file, problem or None) for every embedding-suffixed entry under `root`, sorted. Directory links are
    followed once (a folder reached twice — a link loop — is not walked again); a file entry that cannot
    be opened (a dangling link, a link loop) comes with its problem instead of ending the walk."""
    found: list[tuple[Path, str | None]] = []
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            if folder == root:
                raise EmbeddingError(f"embedding folder {root} cannot be read ({e.strerror or e})") from None
            continue
        for entry in entries:
            p = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows links
                is_file = not is_dir and entry.is_file()
                if entry.is_symlink():
                    os.stat(entry.path)  # raises on a loop or a dangling link
            except OSError as e:
                if p.suffix.lower() in EXTENSIONS:
                    found.append((p, f"cannot be opened ({e.strerror or e}: a link loop or a dangling link?)"))
                continue
            if is_dir:
                stack.append(p)
            elif is_file and p.suffix.lower() in EXTENSIONS:
                found.append((p, None))
            if len(found) > MAX_FILES:
                raise EmbeddingError(f"embedding folder {root} holds more than {MAX_FILES:,} embedding files")
    return sorted(found, key=lambda fp: str(fp[0]))


def check_token_table(tokenizer, encoder_rows: Iterable[int], library: "EmbeddingLibrary") -> None:  # noqa: ANN001
    """Refuse a tokenizer whose added tokens have ids past an encoder's token table while embeddings are
    loaded: the encoder reads ids past its table as the call's textual-inversion vectors, so such a token
    would silently read an embedding's vector (without embeddings it is an error at encode time).
    `tokenizer`: a sdclip Tokenizer (its `vocab_size` is its largest id + 1); `encoder_rows`: each text
    encoder's table size. The Conditioner calls this on every prepare (embeddings may be added late)."""
    if not len(library):
        return
    rows = min(encoder_rows)
    size = int(tokenizer.vocab_size)
    if size <= rows:
        return
    named = []
    for i in range(rows, min(size, rows + 5)):
        try:
            named.append(f"{tokenizer.token_text(i)!r} = {i}")
        except ValueError:
            continue
    raise EmbeddingError(
        f"the tokenizer's added token(s) {', '.join(named) or f'up to id {size - 1}'} lie past the text encoder's "
        f"{rows:,}-row token table, where textual-inversion vectors go: with embeddings loaded "
        f"({', '.join(library.names[:3])}) they would read an embedding's vectors. Use the tokenizer that "
        "matches the encoder (the model's own folder) or an encoder whose table holds those tokens"
    )
