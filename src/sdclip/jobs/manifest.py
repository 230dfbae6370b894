"""`manifest.json`: what a job is (its configuration) and how far it got (completed shards), replaced atomically.

The configuration is everything that changes the tensors: model fingerprint, every conditioning option,
dtype, slots per caption, shard size, output format, the input's size and sha256, column and error policy.
Batch size, engine, workers and device are not part of it: they change nothing but fp32 rounding, so a job
may be resumed with other values. A different configuration on an existing folder is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from sdclip.jobs.shards import write_bytes_atomic

MANIFEST = "manifest.json"
SCHEMA = "sdclip-embed/1"


class JobError(ValueError):
    """A job cannot start or go on (bad output folder, changed configuration, unwritable disk…)."""


def model_fingerprint(source: str | Path) -> dict:
    """A cheap, load-free fingerprint of a model path: sha256 over each file's relative path, size and its
    first and last MiB (a hub id that is not a local path is fingerprinted by its name)."""
    p = Path(source)
    if not p.exists():
        return {"source": str(source), "sha256": hashlib.sha256(f"hub:{source}".encode()).hexdigest()}
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(p).as_posix() if p.is_dir() else f.name
        size = f.stat().st_size
        h.update(f"{rel}\x00{size}\x00".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return {"source": str(p.resolve()), "sha256": h.hexdigest()}


def first_difference(old: object, new: object, path: str = "") -> str | None:
    """The dotted name of the first option that differs between two configurations, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            diff = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if diff is not None:
                return diff
        return None
    if old != new:
        return f"{path or 'configuration'}: {json.dumps(old)} in the folder, {json.dumps(new)} now"
    return None


@dataclass
class Manifest:
    """The job folder's manifest: configuration, scan results (row count, errors, truncation, shard seeks)
    and completed shards ({"k": {"file", "start", "stop", "rows", "sha256", "bytes", …}})."""

    config: dict
    version: str = ""
    scan: dict = field(default_factory=dict)
    shards: dict[str, dict] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    complete: bool = False

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "sdclip_version": self.version,
            "complete": self.complete,
            "config": self.config,
            "info": self.info,
            "rows": self.scan.get("rows"),
            "valid_rows": self.scan.get("valid_rows"),
            "truncated": self.scan.get("truncated", {}),
            "errors": self.scan.get("errors", []),
            "shard_seeks": self.scan.get("seeks", []),
            "warnings": self.scan.get("warnings", {}),
            "shards": [self.shards[k] for k in sorted(self.shards, key=int)],
        }

    def save(self, folder: Path) -> None:
        data = json.dumps(self.to_json(), indent=1, ensure_ascii=False).encode()
        write_bytes_atomic(folder / MANIFEST, data)

    @classmethod
    def load(cls, folder: Path) -> "Manifest":
        """The folder's manifest, its fields checked for type (it is untrusted input: anyone can write one)."""
        path = Path(folder) / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise JobError(f"{folder}: no {MANIFEST} (not an `sdclip embed` output folder)") from None
        except IsADirectoryError:
            raise JobError(f"{path} is a folder, not an `sdclip embed` manifest") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise JobError(f"{path}: unreadable manifest ({reason})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            schema = data.get("schema") if isinstance(data, dict) else None
            raise JobError(f"{path}: not an `sdclip embed` manifest (schema {schema!r})")
        try:
            scan = {
                "rows": _typed(data.get("rows"), int, None),
                "valid_rows": _typed(data.get("valid_rows"), int, None),
                "truncated": _typed(data.get("truncated", {}), dict),
                "errors": _typed(data.get("errors", []), list),
                "seeks": _typed(data.get("shard_seeks", []), list),
                "warnings": _typed(data.get("warnings", {}), dict),
            }
            records = _typed(data.get("shards", []), list)
            shards = {}
            for s in records:
                k = _typed(_typed(s, dict)["shard"], int)
                shards[str(k)] = s
            return cls(_typed(data["config"], dict), str(data.get("sdclip_version", "")), scan, shards,
                       _typed(data.get("info", {}), dict), bool(data.get("complete")))
        except (KeyError, TypeError) as exc:
            raise JobError(f"{path}: malformed manifest ({exc})") from None


def _typed(value: object, kind: type, *allowed: object) -> object:
    """value if it is a `kind` (bool is not an int here) or one of `allowed`; TypeError otherwise."""
    if value in allowed and not isinstance(value, bool):
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{type(value).__name__} where {kind.__name__} belongs")
    return value
