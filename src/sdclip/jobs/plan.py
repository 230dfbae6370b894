"""A job's specification, its output folder's checks, and the validation scan that runs before any encoding.

The scan reads every caption once (streamed), checks it (UTF-8, syntax, row limit) with the conditioner's
own `prepare`, and keeps per row only numbers: its natural length in slots, a digest of its text, and the
first and last indices holding the same caption (identical captions are encoded once, and sdclip's own shards
store them once: a later row refers to the first), as .npy files in the job folder (28 bytes per caption,
memory-mapped on resume). It also records each shard's seek, so a shard can be re-read directly.
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
from sdclip.jobs.readers import CaptionSource, Record, detect_format, open_source

LENGTHS = "scan-lengths.npy"
LAST = "scan-last.npy"
#: blake2b-64 of each record as the scan read it: a shard's rows are checked against it before it is written
DIGESTS = "scan-digests.npy"
#: the first index holding the same valid caption (itself for a first occurrence or an invalid row)
FIRST = "scan-first.npy"
#: the scan's files: needed while shards are pending, removed when the job finishes
SCAN_FILES = (LENGTHS, LAST, DIGESTS, FIRST)
#: warnings listed in the manifest (all are counted)
MAX_RECORDED_WARNINGS = 100
#: truncated captions listed in the manifest (all are counted): a list of every one grew with the captions,
#: in memory and in a manifest rewritten after every shard (1M long captions: MBs per rewrite)
MAX_LISTED_TRUNCATED = 1000
#: captions whose check results the scan keeps (a repeated caption, often 4× in a dataset, is checked once):
#: at most this many, each of at most REMEMBERED_CHARS characters, forgotten all at once when full, so the
#: memory stays bounded (≤ 4M characters) whatever the job's size
MAX_REMEMBERED_CHECKS = 4096
REMEMBERED_CHARS = 1024


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
    caption_extension: str = ".txt"  #: image folders: the sidecar captions' suffix (kohya's --caption_extension)
    store_dtype: str | None = None  #: the stored tensors' dtype (None: --dtype, the encoders' own)
    varlen: bool = False  #: sdclip shards without padding (sdclip.jobs.varlen)
    caption_lines: bool = False  #: image folders: each sidecar line its own caption, indexed (image, line)
    #: sdclip's own shards store a repeated caption once: later rows refer to the first (sdclip.jobs.shards)
    dedupe: bool = True

    def check(self) -> None:
        for name in ("rows", "shard_size", "batch_size"):
            if getattr(self, name) < 1:
                flag = {"rows": "--max-rows"}.get(name, "--" + name.replace("_", "-"))
                raise JobError(f"{flag} must be ≥ 1, got {getattr(self, name)}")
        from sdclip.jobs.formats import NAMES

        if self.format not in NAMES:
            raise JobError(f"--format must be one of {', '.join(NAMES)}")
        if self.varlen and self.format != "safetensors":
            raise JobError(f"--varlen applies to sdclip's own shards; --format {self.format} stores what its "
                           "trainer reads")
        if self.on_error not in ("fail", "skip"):
            raise JobError("--on-error must be fail or skip")
        self.check_format()

    def check_format(self) -> None:
        """Before any model loads: a trainer format that cannot hold this job whatever the family (or for
        `--family`) is refused now, in that format's own words (`--format kohya --max-rows 4`); the full
        check runs again once the model names the family (sdclip.jobs.formats.check_format)."""
        from sdclip.jobs.formats import check_format, get_format

        fmt = get_format(self.format)
        if fmt is None:
            return
        try:
            source_format = detect_format(Path(self.captions))
        except ValueError:  # the captions' own error comes later, from the source
            return
        refusals = []
        for family in [self.family] if self.family else fmt.families:
            try:
                check_format(self.format, family, source_format, self.rows, self.options)
            except JobError as exc:
                refusals.append(exc)
            else:
                return
        raise refusals[0]

    def source(self) -> CaptionSource:
        return open_source(self.captions, self.column, self.caption_extension, self.caption_lines)

    def config(self, source: CaptionSource) -> dict:
        """The job's identity (see sdclip.jobs.manifest): what must match for a folder to be resumed. The
        captions themselves are not part of it: a re-run after an edit re-encodes the shards whose captions
        changed (sdclip.jobs.driver), keeping the others."""
        extra = {"caption_extension": self.caption_extension} if source.format == "images" else {}
        return {
            **extra,
            "model": model_fingerprint(self.model),
            "family": self.family,
            "embeddings": [model_fingerprint(e) for e in self.embeddings],
            "options": self.options,
            "dtype": self.dtype,
            **({"store_dtype": self.store_dtype} if self.store_dtype not in (None, self.dtype) else {}),
            **({"varlen": True} if self.varlen else {}),
            **({"caption_lines": True} if self.caption_lines else {}),
            **({"dedupe": False} if not self.dedupe and self.format == "safetensors" else {}),
            "rows_per_caption": self.rows,
            "shard_size": self.shard_size,
            "format": self.format,
            "column": self.column,
            "on_error": self.on_error,
        }

    def to_dict(self) -> dict:
        return asdict(self)


def check_out_dir(out: Path) -> list[Path]:
    """Fail fast, before any model loads: the output folder must be a creatable, writable folder. Returns
    the folders this call created (deepest first), so a failed start can remove them if still empty."""
    if out.exists() and not out.is_dir():
        raise JobError(f"--out {out} is a file, not a folder")
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        remove_empty(created)
        raise JobError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
    return created


def remove_empty(folders: list[Path]) -> None:
    """rmdir each folder (deepest first) that is still empty; a folder holding anything stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


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
    truncated: list[int] = field(default_factory=list)  #: the first MAX_LISTED_TRUNCATED
    truncated_count: int = 0
    seeks: list = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    warning_count: int = 0

    def warn(self, index: int, where: str, warning: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < MAX_RECORDED_WARNINGS:
            self.warnings.append({"index": index, "where": where, "warning": warning})

    def to_manifest(self) -> dict:
        return {
            "rows": self.rows,
            "valid_rows": self.valid_rows,
            "errors": self.errors,
            "truncated": {"count": self.truncated_count, "indices": self.truncated,
                          **({"more": self.truncated_count - len(self.truncated)}
                             if self.truncated_count > len(self.truncated) else {})},
            "seeks": self.seeks,
            "warnings": {"count": self.warning_count, "first": self.warnings},
        }


def record_digest(rec: Record) -> int:
    """blake2b-64 of what a record holds: its text, or (unreadable) its error and index. Equal texts have
    equal digests (identical captions are encoded once); a shard re-reads its rows and compares."""
    text = rec.text if rec.text is not None else f"\x00error{rec.index}\x00{rec.error}"
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


Check = Callable[[str], "tuple[int, tuple[str, ...]]"]


def scan(source: CaptionSource, check: Check, slots: int, shard_size: int, out: Path,
         progress: Callable[[int], None] | None = None) -> Scan:
    """Validate every caption (check(text) → (natural length, warnings), raising ValueError for a bad caption)
    and write the per-row arrays beside the manifest (OSError, e.g. a full disk, is the caller's to report)."""
    import numpy as np

    result = Scan()
    seen: dict[str, tuple[int, tuple[str, ...], str | None]] = {}  #: repeated captions checked once
    lengths = array("i")
    digests = array("Q")
    for rec in source.records():
        if rec.index % shard_size == 0:
            result.seeks.append(list(rec.seek) if isinstance(rec.seek, tuple) else rec.seek)
        error = rec.error
        n = -1
        if rec.warning is not None:
            result.warn(rec.index, rec.where, rec.warning)
        if error is None:
            outcome = seen.get(rec.text)  # type: ignore[arg-type]
            if outcome is None:
                outcome = _checked(check, rec.text)  # type: ignore[arg-type]
                if len(seen) >= MAX_REMEMBERED_CHECKS:
                    seen.clear()
                if len(rec.text) <= REMEMBERED_CHARS:  # type: ignore[arg-type]
                    seen[rec.text] = outcome  # type: ignore[index]
            n, warnings, error = outcome
            for w in warnings:
                result.warn(rec.index, rec.where, w)
        if error is not None:
            result.errors.append({"index": rec.index, "where": rec.where, "error": error})
        else:
            result.valid_rows += 1
            if n > slots:
                result.truncated_count += 1
                if len(result.truncated) < MAX_LISTED_TRUNCATED:
                    result.truncated.append(rec.index)
        lengths.append(n)
        digests.append(record_digest(rec))
        result.rows += 1
        if progress is not None and result.rows % 256 == 0:
            progress(256)
    if progress is not None:
        progress(result.rows % 256)
    h = np.frombuffer(digests, dtype=np.uint64) if result.rows else np.zeros(0, np.uint64)
    valid = np.frombuffer(lengths, dtype=np.int32) >= 0 if result.rows else np.zeros(0, bool)
    last = np.arange(result.rows, dtype=np.int64)
    first = np.arange(result.rows, dtype=np.int64)
    if result.rows:
        # identical valid captions: each row points at the last row holding its text (invalid rows: at themselves)
        rows = np.nonzero(valid)[0]
        hv = h[rows]
        order = np.argsort(hv, kind="stable")  # equal digests stay in index order: the run's end is its last
        sorted_h = hv[order]
        run_end = np.r_[np.nonzero(sorted_h[1:] != sorted_h[:-1])[0], len(rows) - 1] if len(rows) else np.zeros(0, np.int64)
        run_id = np.searchsorted(run_end, np.arange(len(rows)))
        last[rows[order]] = rows[order[run_end[run_id]]]
        run_start = np.r_[0, run_end[:-1] + 1] if len(rows) else np.zeros(0, np.int64)
        first[rows[order]] = rows[order[run_start[run_id]]]
    _save_npy(out / LENGTHS, np.frombuffer(lengths, dtype=np.int32) if result.rows else np.zeros(0, np.int32))
    _save_npy(out / LAST, last)
    _save_npy(out / DIGESTS, h)
    _save_npy(out / FIRST, first)
    return result


def _checked(check: Check, text: str) -> tuple[int, tuple[str, ...], str | None]:
    """check(text) as (natural length, warnings, None), or (-1, (), its one-line error) for a bad caption."""
    try:
        n, warnings = check(text)
    except ValueError as exc:
        return -1, (), str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return n, tuple(warnings), None


def _save_npy(path: Path, arr) -> None:  # noqa: ANN001
    import io

    import numpy as np

    from sdclip.jobs.shards import write_bytes_atomic

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue())


def load_scan_arrays(out: Path):  # noqa: ANN201
    """(lengths int32 [n], last int64 [n], digests uint64 [n], first int64 [n]) memory-mapped, or None when one
    is missing (a scan by an earlier version: redone) or of another length; pickles are never loaded."""
    import numpy as np

    try:
        arrays = tuple(np.load(out / name, mmap_mode="r", allow_pickle=False) for name in SCAN_FILES)
    except (OSError, ValueError):
        return None
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        return None
    return arrays


def remove_scan_files(out: Path) -> None:
    for name in SCAN_FILES:
        (out / name).unlink(missing_ok=True)


__all__ = ["JobSpec", "Scan", "scan", "check_out_dir", "load_scan_arrays", "record_digest", "MANIFEST"]
