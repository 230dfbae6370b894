"""A job's specification, its output folder's checks, and the validation scan that runs before any encoding.

The scan reads every caption once (streamed), checks it (UTF-8, syntax, row limit) with the conditioner's
own `prepare`, and keeps per row only numbers: its natural length in slots and the last index holding the
same caption (so identical captions are encoded once), as two .npy files in the job folder (8 + 4 bytes per
caption, memory-mapped on resume). It also records each shard's seek, so a shard can be re-read directly.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sdclip.jobs.manifest import MANIFEST, JobError, model_fingerprint
from sdclip.jobs.readers import CaptionSource, open_source

LENGTHS = "scan-lengths.npy"
LAST = "scan-last.npy"
FORMATS = ("safetensors", "kohya")


@dataclass
class JobSpec:
    """Everything a worker needs to rebuild the job (plain data: it travels to Ray actors)."""

    model: str
    captions: str
    out: str
    options: dict
    rows: int = 1  #: K: every caption gets K·L slots (L = 77, 248 for Long-CLIP)
    shard_size: int = 1024
    batch_size: int = 64
    dtype: str = "fp32"
    device: str = "cpu"
    family: str | None = None
    embeddings: list[str] = field(default_factory=list)
    format: str = "safetensors"
    column: str | None = None
    on_error: str = "fail"
    pack_weights: bool = False

    def check(self) -> None:
        for name in ("rows", "shard_size", "batch_size"):
            if getattr(self, name) < 1:
                flag = {"rows": "--max-rows"}.get(name, "--" + name.replace("_", "-"))
                raise JobError(f"{flag} must be ≥ 1, got {getattr(self, name)}")
        if self.format not in FORMATS:
            raise JobError(f"--format must be one of {', '.join(FORMATS)}")
        if self.on_error not in ("fail", "skip"):
            raise JobError("--on-error must be fail or skip")

    def source(self) -> CaptionSource:
        return open_source(self.captions, self.column)

    def config(self, source: CaptionSource) -> dict:
        """The job's identity (see sdclip.jobs.manifest): what must match for a folder to be resumed."""
        return {
            "model": model_fingerprint(self.model),
            "family": self.family,
            "embeddings": [model_fingerprint(e) for e in self.embeddings],
            "options": self.options,
            "dtype": self.dtype,
            "rows_per_caption": self.rows,
            "shard_size": self.shard_size,
            "format": self.format,
            "input": source.fingerprint(),
            "column": self.column,
            "on_error": self.on_error,
        }

    def to_dict(self) -> dict:
        return asdict(self)


def check_out_dir(out: Path) -> None:
    """Fail fast, before any model loads: the output folder must be a creatable, writable folder."""
    if out.exists() and not out.is_dir():
        raise JobError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise JobError(f"cannot write to --out {out}: {exc.strerror or exc}") from None


def os_error(exc: OSError, what: str, done: int) -> JobError:
    """A one-line message for an OSError while writing (disk full, permissions), saying what is kept."""
    reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
    return JobError(f"cannot write {what}: {reason}; {done} completed shard(s) are kept: "
                    "re-run the same command to resume once fixed")


@dataclass
class Scan:
    rows: int = 0
    valid_rows: int = 0
    errors: list[dict] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    seeks: list = field(default_factory=list)

    def to_manifest(self) -> dict:
        return {
            "rows": self.rows,
            "valid_rows": self.valid_rows,
            "errors": self.errors,
            "truncated": {"count": len(self.truncated), "indices": self.truncated},
            "seeks": self.seeks,
        }


def scan(source: CaptionSource, validate: Callable[[str], int], slots: int, shard_size: int, out: Path,
         progress: Callable[[int], None] | None = None) -> Scan:
    """Validate every caption (validate(text) → natural length, raising ValueError for a bad caption) and
    write the per-row arrays beside the manifest."""
    import numpy as np

    result = Scan()
    lengths = array("i")
    digests = array("Q")
    for rec in source.records():
        if rec.index % shard_size == 0:
            result.seeks.append(list(rec.seek) if isinstance(rec.seek, tuple) else rec.seek)
        error = rec.error
        n = -1
        if error is None:
            try:
                n = validate(rec.text)  # type: ignore[arg-type]
            except ValueError as exc:
                error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if error is not None:
            result.errors.append({"index": rec.index, "where": rec.where, "error": error})
        else:
            result.valid_rows += 1
            if n > slots:
                result.truncated.append(rec.index)
        lengths.append(n)
        text = rec.text if error is None else f"\x00error{rec.index}"
        digests.append(int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"))
        result.rows += 1
        if progress is not None and result.rows % 256 == 0:
            progress(256)
    if progress is not None:
        progress(result.rows % 256)
    h = np.frombuffer(digests, dtype=np.uint64) if result.rows else np.zeros(0, np.uint64)
    last = np.arange(result.rows, dtype=np.int64)
    if result.rows:
        order = np.argsort(h, kind="stable")  # equal digests stay in index order: the run's end is its last
        sorted_h = h[order]
        run_end = np.r_[np.nonzero(sorted_h[1:] != sorted_h[:-1])[0], result.rows - 1]
        run_id = np.searchsorted(run_end, np.arange(result.rows))
        last[order] = order[run_end[run_id]]
    _save_npy(out / LENGTHS, np.frombuffer(lengths, dtype=np.int32) if result.rows else np.zeros(0, np.int32))
    _save_npy(out / LAST, last)
    return result


def _save_npy(path: Path, arr) -> None:  # noqa: ANN001
    import io

    import numpy as np

    from sdclip.jobs.shards import write_bytes_atomic

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue())


def load_scan_arrays(out: Path):  # noqa: ANN201
    """(lengths int32 [n], last int64 [n]) memory-mapped; pickles are never loaded."""
    import numpy as np

    try:
        return (np.load(out / LENGTHS, mmap_mode="r", allow_pickle=False),
                np.load(out / LAST, mmap_mode="r", allow_pickle=False))
    except (OSError, ValueError):
        return None


__all__ = ["JobSpec", "Scan", "scan", "check_out_dir", "load_scan_arrays", "MANIFEST"]
