"""What a model load reads, as paths: so that an output can be refused before anything loads (issue 19.1).

Why a separate answer from the loaders themselves: the check must run before the load (a load takes seconds
to minutes and an `--out` inside the model folder is then already decided), and it must cover what a load
*could* read, not only what this model happens to hold. So the answer is deliberately generous:

- a folder (diffusers pipeline, HF model folder, ComfyUI folder of encoder files, an embeddings folder): the
  whole folder, plus the real target of every symbolic link found inside it (an HF cache snapshot's files are
  links into `blobs/`, and overwriting a blob rewrites the model);
- a folder inside an HF cache repository (`models--owner--name/snapshots/REV`): the whole repository folder;
- a single file: the file, and what the single-file loaders look up beside it — the T5 tokenizer folders
  (`t5_tokenizer/`, `tokenizer_3/`, `tokenizer_2/`, `t5/`) and the tokenizer / config files of its folder;
  a sharded `*.index.json`: its whole folder;
- a hub id: what it resolves to in the local Hugging Face cache, looked up without the network (nothing if it
  is not cached: the download would create it).

Every path is returned resolved (symlinks followed), so that an output given through another name or a link
still compares equal. The module itself uses no torch and only reads the file system (its package imports torch).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

#: folders beside a single file that the single-file loaders read a tokenizer from (sd3_flux._T5_TOKENIZER_DIRS)
BESIDE_DIRS = ("t5_tokenizer", "tokenizer_3", "tokenizer_2", "t5", "tokenizer")
#: files beside a single file that a loader may read as its tokenizer or config
BESIDE_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json",
                "vocab.json", "merges.txt", "config.json", "model_index.json")
#: a folder walk for links stops here: a model folder holds tens of files, an embeddings folder hundreds
_WALK_LIMIT = 20_000
_WALK_DEPTH = 6


def _real(path: Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _links_inside(folder: Path) -> set[Path]:
    """The real targets of the symbolic links under `folder` (bounded walk; links to folders not entered)."""
    found: set[Path] = set()
    stack, seen = [(folder, 0)], 0
    while stack and seen < _WALK_LIMIT:
        here, depth = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            try:
                if entry.is_symlink():
                    found.add(_real(Path(entry.path)))
                elif entry.is_dir(follow_symlinks=False) and depth < _WALK_DEPTH:
                    stack.append((Path(entry.path), depth + 1))
            except OSError:
                continue
    return found


def _hub_repo_folder(real: Path) -> Path | None:
    """`…/models--owner--name` when `real` is (inside) one of its snapshots."""
    for p in (real, *real.parents):
        if p.parent.name == "snapshots" and p.parent.parent.name.startswith(("models--", "datasets--")):
            return p.parent.parent
    return None


def _cached_hub_path(source: str) -> Path | None:
    """A hub id's local copy in the Hugging Face cache, found without the network; None when not cached."""
    from sdclip.encoder.loading.hub import ALLOW_PATTERNS, _cache_dir, looks_like_hub_id

    if not looks_like_hub_id(source):
        return None
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError:
        return None
    parts = source.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        if filename:
            return Path(hf_hub_download(repo, filename, cache_dir=_cache_dir(), local_files_only=True))
        return Path(snapshot_download(repo, allow_patterns=ALLOW_PATTERNS, cache_dir=_cache_dir(), local_files_only=True))
    except Exception:  # not cached, no such repo, a broken cache: nothing local to protect
        return None


def path_reads(path: str | os.PathLike) -> set[Path]:
    """Everything a load of this one local file or folder reads or could read (resolved); empty if absent."""
    given = Path(os.path.expanduser(str(path)))
    if not os.path.lexists(given):
        return set()
    real = _real(given)
    reads = {real}
    repo = _hub_repo_folder(real) or _hub_repo_folder(given.absolute())
    if repo is not None:
        reads.add(_real(repo))
    if real.is_dir():
        reads |= _links_inside(real)
        return reads
    if real.name.endswith(".index.json"):  # a sharded checkpoint: its shards are beside it
        reads.add(real.parent)
        reads |= _links_inside(real.parent)
        return reads
    for folder in {given.absolute().parent, real.parent}:
        for name in BESIDE_DIRS:
            if (folder / name).is_dir():
                reads.add(_real(folder / name))
                reads |= _links_inside(folder / name)
        for name in BESIDE_FILES:
            if os.path.lexists(folder / name):
                reads.add(_real(folder / name))
    return reads


def model_reads(
    model: str | os.PathLike | Sequence[str | os.PathLike] | None,
    embeddings: Iterable[str | os.PathLike] = (),
) -> frozenset[Path]:
    """Every path a load of `model` (a file, a folder, a hub id, or several files) with `embeddings` (files or
    folders) reads or could read, resolved. The set an output must stay out of."""
    sources = [] if model is None else [model] if isinstance(model, (str, os.PathLike)) else list(model)
    reads: set[Path] = set()
    for source in sources:
        local = Path(os.path.expanduser(str(source)))
        if os.path.lexists(local):
            reads |= path_reads(local)
        elif (cached := _cached_hub_path(str(source))) is not None:
            reads |= path_reads(cached)
    for emb in embeddings:
        reads |= path_reads(emb)
    return frozenset(reads)
