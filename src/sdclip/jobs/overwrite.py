"""`sdclip embed --overwrite`: which files an earlier job may have removed, with its manifest as untrusted input.

Why: `manifest.json` is a file anyone can write (or copy from another machine). Earlier, `--overwrite`
unlinked every path its `shards[].files` listed, joined to its `info.captions`, so a crafted manifest
(`../victim.txt`, `/home/me/thesis.tex`) deleted any file the user could delete. Now a file is removed only
when all of these hold:
  - it is a regular file (never a symlink, never a folder) directly inside `--out` with a shard's name
    (`shard-NNNNN.safetensors`), or, for `--format kohya`, a `*_te_outputs.npz` under the job's own image
    folder (`--captions`, never a folder the manifest names) reached without leaving it or passing a symlink;
  - sdclip wrote it: a shard's safetensors header carries `sdclip_job` metadata, or its sha256 is the one the
    manifest records for that name; an npz's sha256 is the one the manifest records for that path.
A shard's sidecar (`shard-NNNNN.json` in `--out`, the per-row lists of a trainer format's shard) and
`errors.jsonl` go under the same rule: a regular file in `--out` under its own name whose sha256 the manifest
records (a sidecar also when its JSON carries `sdclip_job`: written by a job killed before listing it).
Every manifest field is checked for its type first; anything unexpected is skipped, never followed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from pathlib import Path, PurePosixPath

from sdclip.jobs.shards import read_header
from sdclip.outputs import sha256_file

SHARD_RE = re.compile(r"shard-\d{5,}\.safetensors")
KOHYA_SUFFIX = "_te_outputs.npz"


def regular(path: Path) -> bool:
    """A regular file, not a symlink to one."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _recorded_hashes(records: list[dict]) -> dict[str, str]:
    """{shard file name: sha256} for the records whose fields have the expected types."""
    out: dict[str, str] = {}
    for rec in records:
        if isinstance(rec, dict) and isinstance(rec.get("file"), str) and isinstance(rec.get("sha256"), str):
            out[rec["file"]] = rec["sha256"]
    return out


def _ours(path: Path, recorded: dict[str, str]) -> bool:
    """A shard sdclip embed wrote: its header says so, or its bytes hash to what the manifest records."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, RecursionError):
        meta = read_header(path).get("__metadata__")
        if isinstance(meta, dict) and isinstance(meta.get("sdclip_job"), str):
            return True
    digest = recorded.get(path.name)
    if digest is None:
        return False
    with contextlib.suppress(OSError):
        return sha256_file(path) == digest
    return False


def shard_files(out: Path, records: list[dict]) -> list[Path]:
    """The shard files in `out` an earlier sdclip embed job wrote (see the module docstring)."""
    recorded = _recorded_hashes(records)
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(out):
            path = out / entry.name
            if SHARD_RE.fullmatch(entry.name) and regular(path) and _ours(path, recorded):
                found.append(path)
    return sorted(found)


def sidecar_files(out: Path, records: list[dict]) -> list[Path]:
    """The shard sidecars (`shard-NNNNN.json`, sdclip.jobs.manifest) in `out` an earlier job wrote: regular
    files whose bytes hash to what a record names, or whose JSON carries `sdclip_job` (a killed job wrote it
    before listing its shard)."""
    from sdclip import bounded_files
    from sdclip.jobs.manifest import MAX_SIDECAR_BYTES, SIDECAR_RE

    recorded = {}
    for rec in records:
        side = rec.get("sidecar") if isinstance(rec, dict) else None
        if isinstance(side, dict) and isinstance(side.get("file"), str) and isinstance(side.get("sha256"), str):
            recorded[side["file"]] = side["sha256"]
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(out):
            path = out / entry.name
            if not SIDECAR_RE.fullmatch(entry.name) or not regular(path):
                continue
            with contextlib.suppress(OSError, ValueError, RecursionError):
                data = bounded_files.read_bytes(path, MAX_SIDECAR_BYTES, ValueError)  # as manifest.row_lists
                if hashlib.sha256(data).hexdigest() == recorded.get(entry.name) or (
                        isinstance(doc := json.loads(data), dict) and isinstance(doc.get("sdclip_job"), str)):
                    found.append(path)
    return sorted(found)


def inside(images: Path, rel: object, suffixes: tuple[str, ...] = (KOHYA_SUFFIX,)) -> Path | None:
    """images/rel when rel is a plain relative path to a trainer file (its name ends with one of `suffixes`)
    that stays inside `images` through real folders (no `..`, no absolute path, no symlinked folder on the
    way); else None."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        return None
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or any(p in ("", ".", "..") for p in parts):
        return None
    if not parts[-1].endswith(tuple(suffixes)):
        return None
    folder = images
    for name in parts[:-1]:
        folder = folder / name
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                return None
        except OSError:
            return None
    return folder / parts[-1]


def kohya_files(images: Path, records: list[dict]) -> list[Path]:
    """The kohya npz files under the job's own image folder whose sha256 the manifest records."""
    return format_files(images, records, (KOHYA_SUFFIX,))


def format_files(images: Path, records: list[dict], suffixes: tuple[str, ...]) -> list[Path]:
    """A trainer format's files under its root (the job's own image folder or --out) whose sha256 the
    manifest records."""
    found = []
    for rec in records:
        files = rec.get("files") if isinstance(rec, dict) else None
        if not isinstance(files, dict):
            continue
        for rel, digest in files.items():
            path = inside(images, rel, suffixes)
            if path is None or not isinstance(digest, str) or not regular(path):
                continue
            with contextlib.suppress(OSError):
                if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
                    found.append(path)
    return found


def listed_paths(records: list[dict]) -> set[str]:
    """Every path string the records name (shard `file`s, trainer `files` held inline: pass records through
    sdclip.jobs.manifest.with_lists for a sidecar's), whatever their type checks say."""
    out: set[str] = set()
    for rec in records:
        if not isinstance(rec, dict):
            continue
        if isinstance(rec.get("file"), str):
            out.add(rec["file"])
        if isinstance(rec.get("files"), dict):
            out.update(k for k in rec["files"] if isinstance(k, str))
    return out
