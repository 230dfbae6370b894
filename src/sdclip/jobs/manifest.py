"""`manifest.json`: what a job is (its configuration) and how far it got (completed shards), replaced atomically.

The manifest is rewritten after every shard, so it holds nothing that grows with the rows: per shard a short
record, per scan counts and capped previews. What does grow is written once, beside it, and named by sha256:
- a trainer format's per-row lists (`files`, `indices`, `caption_sha256`) go to the shard's sidecar
  `shard-NNNNN.json` (written atomically once, when the shard is recorded; the record keeps its sha256);
- `--on-error skip`'s errors past the first MAX_MANIFEST_ERRORS go, all of them, to `errors.jsonl` (one JSON
  object a line, written once after the scan; the manifest keeps the count, the first few and its sha256).
Both are untrusted input like the manifest: a sidecar that is missing, foreign, or not the recorded bytes
makes its shard not done (re-encoded). Folders of earlier versions (lists inline in the manifest) still read.

The configuration is everything that changes the tensors: model fingerprint, every conditioning option,
dtype, slots per caption, shard size, output format, the input's size and sha256, column and error policy.
Batch size, engine, workers and device are not part of it: they change nothing but fp32 rounding, so a job
may be resumed with other values. A different configuration on an existing folder is refused by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sdclip import bounded_files
from sdclip.jobs.shards import shard_name, write_bytes_atomic
from sdclip.outputs import atomic_path, sha256_file

MANIFEST = "manifest.json"
SCHEMA = "sdclip-embed/1"
#: every invalid caption, one JSON object a line, when there are more than the manifest lists
ERRORS = "errors.jsonl"
#: invalid captions the manifest itself lists (all are counted; ERRORS holds every one)
MAX_MANIFEST_ERRORS = 10
#: a trainer-format shard record's per-row lists, kept in its sidecar (never rewritten with the manifest)
ROW_LISTS = ("files", "indices", "caption_sha256")


class JobError(ValueError):
    """A job cannot start or go on (bad output folder, changed configuration, unwritable disk…)."""


class _NoManifest(JobError):
    """The bounded reader's "missing" error, re-worded by Manifest.load."""


#: the manifest holds nothing that grows with the rows (sidecars do); folders of earlier versions kept the
#: lists inline, so the cap is generous; a shard sidecar holds one shard's lists
MAX_MANIFEST_BYTES = 256 << 20
MAX_SIDECAR_BYTES = 256 << 20


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
            "error_count": self.error_count,
            **({"errors_file": self.scan["errors_file"]} if self.scan.get("errors_file") else {}),
            "shard_seeks": self.scan.get("seeks", []),
            "warnings": self.scan.get("warnings", {}),
            "shards": [self.shards[k] for k in sorted(self.shards, key=int)],
        }

    @property
    def error_count(self) -> int:
        """Invalid captions skipped (the manifest lists the first MAX_MANIFEST_ERRORS; ERRORS holds all)."""
        count = self.scan.get("error_count")
        return count if isinstance(count, int) else len(self.scan.get("errors", []))

    def save(self, folder: Path) -> None:
        data = json.dumps(self.to_json(), indent=1, ensure_ascii=False).encode()
        write_bytes_atomic(folder / MANIFEST, data)

    @classmethod
    def load(cls, folder: Path) -> "Manifest":
        """The folder's manifest, its fields checked for type (it is untrusted input: anyone can write one)."""
        path = Path(folder) / MANIFEST
        if path.is_dir():
            raise JobError(f"{path} is a folder, not an `sdclip embed` manifest")
        try:  # bounded: a FIFO or a link to /dev/zero named manifest.json is refused, never read for ever
            data = bounded_files.read_json(path, JobError, "unreadable manifest", limit=MAX_MANIFEST_BYTES,
                                           missing=_NoManifest)
        except _NoManifest:
            raise JobError(f"{folder}: no {MANIFEST} (not an `sdclip embed` output folder)") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            schema = data.get("schema") if isinstance(data, dict) else None
            raise JobError(f"{path}: not an `sdclip embed` manifest (schema {schema!r})")
        try:
            scan = {
                "rows": _typed(data.get("rows"), int, None),
                "valid_rows": _typed(data.get("valid_rows"), int, None),
                "truncated": _typed(data.get("truncated", {}), dict),
                "errors": _typed(data.get("errors", []), list),
                "error_count": _typed(data.get("error_count"), int, None),
                "errors_file": _typed(data.get("errors_file"), dict, None),
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


# -- what grows with the rows, written once beside the manifest ----------------------------------------------

#: a shard's sidecar name (sidecar_name): what --overwrite may remove from --out besides the shards
SIDECAR_RE = re.compile(r"shard-\d{5,}\.json")


def sidecar_name(k: int) -> str:
    """Shard k's sidecar, named after its shard: a trainer-format shard's per-row lists (sdclip's own shards
    hold theirs inside)."""
    return Path(shard_name(k)).with_suffix(".json").name


def spill_lists(folder: Path, record: dict, job: str) -> dict:
    """The record the manifest keeps for a finished shard: a trainer format's per-row lists (ROW_LISTS, as
    sdclip.jobs.work returns them) written to the shard's sidecar atomically, replaced by its name, sha256
    and counts. A record without lists (sdclip's own shards) is returned as is."""
    if not any(key in record for key in ROW_LISTS):
        return record
    k = int(record["shard"])
    lists = {key: record[key] for key in ROW_LISTS if key in record}
    data = json.dumps({"sdclip_job": job, "shard": k, **lists}, ensure_ascii=False).encode()
    write_bytes_atomic(folder / sidecar_name(k), data)
    slim = {key: v for key, v in record.items() if key not in ROW_LISTS}
    slim["sidecar"] = {"file": sidecar_name(k), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                       "files": len(lists.get("files", ()))}
    return slim


def row_lists(folder: Path, record: dict) -> dict | None:
    """A trainer-format shard record's per-row lists ({"files": {path: sha256}, "indices": [int],
    "caption_sha256": [hex]}), inline (earlier versions) or from its sidecar; None when the sidecar is not
    exactly what the record names (missing, renamed, other bytes, wrong types): that shard is not done."""
    side = record.get("sidecar")
    if side is None:
        source = record
    else:
        try:
            if not isinstance(side, dict) or side.get("file") != sidecar_name(_typed(record["shard"], int)):
                return None
            path = Path(folder) / side["file"]
            if not stat.S_ISREG(os.lstat(path).st_mode):
                return None
            data = bounded_files.read_bytes(path, MAX_SIDECAR_BYTES, ValueError)
            if hashlib.sha256(data).hexdigest() != side.get("sha256"):
                return None
            source = json.loads(data)
        except (OSError, KeyError, TypeError, ValueError, RecursionError):
            return None
        if not isinstance(source, dict):
            return None
    try:
        files = _typed(source.get("files", {}), dict)
        indices = _typed(source.get("indices", []), list)
        shas = _typed(source.get("caption_sha256", []), list)
        for rel, digest in files.items():
            _typed(rel, str), _typed(digest, str)
        for i in indices:
            _typed(i, int)
        for h in shas:
            _typed(h, str)
    except TypeError:
        return None
    return {"files": files, "indices": indices, "caption_sha256": shas}


def with_lists(folder: Path, record: dict) -> dict:
    """The record with its per-row lists in place (from its sidecar; none if that is not trustworthy)."""
    if "sidecar" not in record:
        return record
    return {**record, **(row_lists(folder, record) or {})}


def spill_errors(folder: Path, scan: dict, old: dict | None = None) -> dict:
    """A scan's manifest fields with its errors past MAX_MANIFEST_ERRORS written, all of them, to ERRORS
    (atomically, once: the manifest is rewritten per shard and keeps the count and the first few). An earlier
    scan's ERRORS that this one does not need is removed when its bytes are the ones `old` recorded."""
    errors = scan.get("errors", [])
    scan = {**scan, "error_count": len(errors)}
    scan.pop("errors_file", None)
    if len(errors) > MAX_MANIFEST_ERRORS:
        h, size = hashlib.sha256(), 0
        with atomic_path(Path(folder) / ERRORS) as tmp, open(tmp, "wb") as f:  # streamed: one line at a time
            for e in errors:
                line = (json.dumps(e, ensure_ascii=False) + "\n").encode()
                f.write(line)
                h.update(line)
                size += len(line)
        scan["errors_file"] = {"file": ERRORS, "sha256": h.hexdigest(), "bytes": size}
        scan["errors"] = errors[:MAX_MANIFEST_ERRORS]
    elif old:
        remove_recorded(folder, old)
    return scan


def remove_recorded(folder: Path, rec: object) -> None:
    """Remove the regular file in `folder` a record ({"file", "sha256"}) names, only if its bytes are those."""
    if not isinstance(rec, dict) or (rec.get("file") != ERRORS and not _is_sidecar(rec.get("file"))):
        return
    path = Path(folder) / rec["file"]
    with contextlib.suppress(OSError):
        if stat.S_ISREG(os.lstat(path).st_mode) and sha256_file(path) == rec.get("sha256"):
            path.unlink()


def _is_sidecar(name: object) -> bool:
    return isinstance(name, str) and SIDECAR_RE.fullmatch(name) is not None


def iter_errors(folder: Path, m: "Manifest"):  # noqa: ANN201
    """Every invalid caption the scan found ({"index", "where", "error"}): the manifest's list, or all of
    ERRORS when it names one. Raises JobError if that file is not the one recorded, or a line is malformed."""
    rec = m.scan.get("errors_file")
    if not rec:
        yield from m.scan.get("errors", [])
        return
    path = Path(folder) / ERRORS
    try:
        if not isinstance(rec, dict) or rec.get("file") != ERRORS or not stat.S_ISREG(os.lstat(path).st_mode):
            raise JobError(f"{path}: missing (the manifest counts {m.error_count} invalid captions there)")
        if sha256_file(path) != rec.get("sha256"):
            raise JobError(f"{path}: sha256 differs from the manifest")
        with open(path, encoding="utf-8", errors="replace") as f:  # a line at a time: it may be large
            for n, line in enumerate(f, 1):
                try:
                    e = _typed(json.loads(line), dict)
                    _typed(e["index"], int), _typed(e["where"], str), _typed(e["error"], str)
                except (ValueError, KeyError, TypeError, RecursionError):
                    raise JobError(f"{path}: line {n} is not an error record") from None
                yield e
    except OSError as exc:
        raise JobError(f"{path}: unreadable ({exc.strerror or exc})") from None
