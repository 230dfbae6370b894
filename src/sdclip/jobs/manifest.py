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
            "shards": [self.shards[k] for k in sorted(self.shards, key=int)],
        }

    def save(self, folder: Path) -> None:
        data = json.dumps(self.to_json(), indent=1, ensure_ascii=False).encode()
        write_bytes_atomic(folder / MANIFEST, data)

    @classmethod
    def load(cls, folder: Path) -> "Manifest":
        path = Path(folder) / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise JobError(f"{folder}: no {MANIFEST} (not an `sdclip embed` output folder)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise JobError(f"{path}: unreadable manifest ({exc})") from None
        if data.get("schema") != SCHEMA:
            raise JobError(f"{path}: not an `sdclip embed` manifest (schema {data.get('schema')!r})")
        scan = {
            "rows": data.get("rows"),
            "valid_rows": data.get("valid_rows"),
            "truncated": data.get("truncated", {}),
            "errors": data.get("errors", []),
            "seeks": data.get("shard_seeks", []),
        }
        shards = {str(s["shard"]): s for s in data.get("shards", [])}
        return cls(data["config"], data.get("sdclip_version", ""), scan, shards, data.get("info", {}),
                   bool(data.get("complete")))
