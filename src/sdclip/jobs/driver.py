"""The job driver, shared by both engines: folder checks, resume bookkeeping, validation, manifest updates.

Order matters: the output folder and the configuration are checked before any model loads; every caption
is validated before the first is encoded; a shard counts only once its file has been renamed into place
and the manifest (replaced atomically) lists it. On resume, listed shards are kept if their file is whole
(size and safetensors header as recorded; `--verify` re-hashes everything), and a shard file a killed job
renamed but never listed is adopted when its metadata names this very job.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import sdclip
from sdclip.jobs.folder_lock import LOCK, take as _lock
from sdclip.jobs.manifest import (ERRORS, MANIFEST, JobError, Manifest, first_difference, remove_recorded,
                                  row_lists, spill_errors, spill_lists, with_lists)
from sdclip.jobs.plan import (SCAN_FILES, JobSpec, check_out_dir, load_scan_arrays, os_error, remove_empty,
                              remove_scan_files, scan)
from sdclip.jobs.shards import header_rows, read_header, remove_stale_temps, shard_name
from sdclip.outputs import sha256_file
from sdclip.jobs.work import config_digest, rows_digest, stale_referrers

MAX_LISTED_ERRORS = 10
#: characters of one listed error before it is cut (with "…")
MAX_ERROR_CHARS = 200
#: the dataset's empty caption, one row (caption dropout), beside the shards
EMPTY = "empty.safetensors"


class Job:
    """One `sdclip embed` job on one output folder."""

    def __init__(self, spec: JobSpec, *, overwrite: bool = False, console=None):  # noqa: ANN001
        spec.check()
        self.spec = spec
        self.out = Path(spec.out)
        self.console = console
        self.manifest: Manifest | None = None
        #: one-line warnings for the user (what --overwrite left alone)
        self.notes: list[str] = []
        self._created = check_out_dir(self.out)
        #: a lock file left behind: a killed sdclip job was here (its scan arrays may precede any manifest)
        self._killed = (self.out / LOCK).is_file()
        #: False once scan arrays here are found not to be this job's: a failed start then leaves them
        self._own_scan = True
        try:
            self._lock: int | None = _lock(self.out)
        except BaseException:
            remove_empty(self._created)
            raise
        try:
            self._open(spec, overwrite)
        except BaseException:
            self.close(failed=True)
            raise
        self.started = time.perf_counter()
        self.encoded = 0

    def _open(self, spec: JobSpec, overwrite: bool) -> None:
        remove_stale_temps(self.out)
        self.source = spec.source()
        #: what the input holds when it holds no caption (None: it holds one)
        self.nothing = self.source.found_nothing()
        if self.nothing is not None and self.source.nothing_is_a_mistake:  # a wrong folder or --caption-extension
            raise JobError(f"--captions {spec.captions}: {self.nothing}")
        from sdclip.jobs.formats import get_format

        self.format = get_format(spec.format)
        if self.format is not None:  # what a killed job left beside the images; ownership read afresh
            from sdclip.jobs.formats.owned import forget, remove_dead_temps

            forget(self.out)
            if self.format.root == "images" and self.source.format == "images":
                remove_dead_temps(self.out, Path(spec.captions))
        if self.format is not None and self.format.per_image and self.source.format != "images":
            raise JobError(f"--format {spec.format} names its files after the images: --captions must be an image folder")
        if self.format is not None and self.format.per_image and spec.caption_lines:
            raise JobError(f"--format {spec.format} keeps one file per image; --caption-lines gives an image several "
                           "captions (use the safetensors or simpletuner format)")
        self.config = spec.config(self.source)
        self.digest = config_digest(self.config)
        self.input = self.source.fingerprint()
        #: what a re-run after edited captions re-encodes ({"shards": [...], "rows": n}), for the user
        self.changed: dict | None = None
        if overwrite:
            self._clear()
        elif not (self.out / MANIFEST).exists() and not (self.out / MANIFEST).is_symlink():
            self._refuse_foreign()
        if not overwrite and (self.out / MANIFEST).exists():
            old = Manifest.load(self.out)
            old.config.pop("input", None)  # sdclip ≤ this version kept the captions' hash in the identity
            diff = first_difference(old.config, self.config)
            if diff is not None:
                raise JobError(f"{self.out} holds a different job ({diff}): pass --overwrite to start again, "
                               "or choose another --out")
            self.manifest = old
        if self.nothing is not None:
            self._empty_input()

    def _empty_input(self) -> None:
        """An input of no caption is an empty dataset: a finished job of 0 rows, said in one warning. Where this
        folder's job recorded rows, it is a file emptied by mistake (`> captions.txt`) more likely than an edit
        that removes every caption: refused, every shard kept (--overwrite starts again)."""
        where = f"--captions {self.spec.captions}: {self.nothing}"
        if self.manifest is not None and self.manifest.shards:
            raise JobError(f"{where}, where {self.out} holds {len(self.manifest.shards)} shard(s) of it: nothing "
                           "removed; pass --overwrite to empty the job, or choose another --out")
        self.notes.append(f"{where}: no caption to encode; the job finishes with 0 rows")

    def _refuse_foreign(self) -> None:
        """In a folder holding no manifest, a file at one of the job's names (scan arrays, `empty.safetensors`)
        is someone else's unless it is certainly this job's: refused in one line, never replaced. Scan arrays
        are a killed job's when its lock file was left (they are written just before the first manifest);
        the empty row and shards are this job's when their header names this job (a folder with a manifest:
        its pending shards are checked in `_check_shards`)."""
        for path in sorted(self.out.glob("shard-[0-9]*.safetensors")):
            if _job_of(path) != self.digest:
                raise _foreign(path, "not a shard of this job (its metadata names no job or another)")
        for name in SCAN_FILES:
            if (self.out / name).exists() and not self._killed:
                self._own_scan = False
                raise _foreign(self.out / name, "an `sdclip embed` scan array of no job recorded here")
        empty = self.out / EMPTY
        if (empty.exists() or empty.is_symlink()) and _job_of(empty) != self.digest:
            raise _foreign(empty, "not this job's empty-caption row")

    # -- setup ------------------------------------------------------------------------------------

    def prepare(self, encoder, progress=None) -> None:  # noqa: ANN001
        """Validate every caption (or reuse a previous run's scan) and check the shards already on disk."""
        from sdclip.jobs.formats import check_format

        check_format(self.spec.format, encoder.cond.family.name, self.source.format, self.spec.rows, self.spec.options)
        info = {"captions": str(Path(self.spec.captions).resolve()), "family": encoder.cond.family.name, "slots": encoder.slots, "widths": encoder.widths,
                "loaded_fingerprint": encoder.fingerprint, "input": self.input}
        if self.manifest is None or self.manifest.scan.get("rows") is None:
            self._scan(encoder, progress, info)
            self._check_shards()
        elif self.manifest.info.get("input") != self.input:  # captions edited since the last run
            self._scan(encoder, progress, info)
            self._drop_changed()
            self._check_shards()
        else:
            self.manifest.info.update(info)
            self._check_shards()
            if self.pending() and not self._have_arrays():  # a finished job's scan files are gone: redo them
                self._scan(encoder, progress, info)
        self._save()

    def _have_arrays(self) -> bool:
        arrays = load_scan_arrays(self.out)
        return arrays is not None and len(arrays[0]) == self.rows

    def _scan(self, encoder, progress, info: dict) -> None:  # noqa: ANN001
        try:
            result = scan(self.source, encoder.check, encoder.slots, self.spec.shard_size, self.out, progress)
        except OSError as exc:
            remove_scan_files(self.out)
            raise os_error(exc, "the scan's arrays", 0) from None
        if result.errors and self.spec.on_error == "fail":
            remove_scan_files(self.out)
            raise JobError(invalid_captions(result.errors))
        if self.source.fingerprint() != self.input:  # edited between the fingerprint and the scan
            remove_scan_files(self.out)
            raise JobError(f"{self.spec.captions} changed while the job validated it: nothing written; "
                           "re-run once it no longer changes")
        old = self.manifest.scan.get("errors_file") if self.manifest is not None else None
        try:
            found = spill_errors(self.out, result.to_manifest(), old)
        except OSError as exc:
            remove_scan_files(self.out)
            raise os_error(exc, ERRORS, len(self.manifest.shards) if self.manifest is not None else 0) from None
        shards = self.manifest.shards if self.manifest is not None else {}
        self.manifest = Manifest(self.config, sdclip.__version__, found, shards, info)

    def rows_digest(self, k: int) -> str | None:
        """sha256 over the scan's digests of shard k's rows (what its captions were), or None without arrays."""
        arrays = load_scan_arrays(self.out)
        if arrays is None:
            return None
        start, stop = k * self.spec.shard_size, min((k + 1) * self.spec.shard_size, self.rows)
        return rows_digest(arrays[2][start:stop])

    def _drop_changed(self) -> None:
        """After a re-scan of edited captions: forget the shards whose rows changed (or whose range moved), and
        remove their files that no kept shard shares (only files whose sha256 the manifest recorded)."""
        from sdclip.jobs.overwrite import format_files, shard_files

        m = self.manifest
        assert m is not None
        dropped = []
        for key, rec in list(m.shards.items()):
            k = int(rec.get("shard", -1))
            start, stop = k * self.spec.shard_size, min((k + 1) * self.spec.shard_size, self.rows)
            same = (k < self.shard_count() and rec.get("start") == start and rec.get("stop") == stop
                    and rec.get("rows_digest") is not None and rec.get("rows_digest") == self.rows_digest(k))
            if not same:
                dropped.append(m.shards.pop(key))
        for key in stale_referrers(self.out, m.shards, dropped, self.spec.shard_size):  # read re-encoded rows
            dropped.append(m.shards.pop(key))
        root = self.files_root()
        if root is None:
            names = {r.get("file") for r in dropped}
            stale = [p for p in shard_files(self.out, dropped) if p.name in names]
        else:  # a trainer file a kept shard also lists (SimpleTuner's one file per caption) stays
            found = format_files(root, [with_lists(self.out, r) for r in dropped], self.format.suffixes)  # type: ignore[union-attr]
            by_name = {p.relative_to(root).as_posix(): p for p in found}
            for rec in m.shards.values():  # one sidecar at a time: memory is the dropped shards' files
                for rel in (row_lists(self.out, rec) or {}).get("files", {}):
                    by_name.pop(rel, None)
            stale = list(by_name.values())
        for path in stale:
            path.unlink(missing_ok=True)
        for rec in dropped:  # their sidecars (re-written when re-encoded; a shard past the new end has none)
            remove_recorded(self.out, rec.get("sidecar"))
        self.changed = {"shards": sorted(int(r["shard"]) for r in dropped if isinstance(r.get("shard"), int)),
                        "rows": sum(int(r.get("rows", 0)) for r in dropped), "kept": len(m.shards)}

    def _check_shards(self) -> None:
        m = self.manifest
        assert m is not None
        for key, rec in list(m.shards.items()):
            if not self._whole(rec):
                del m.shards[key]
        if self.spec.format == "safetensors":
            for k in self.pending():
                path = self.out / shard_name(k)
                if path.exists() or path.is_symlink():
                    if _job_of(path) != self.digest:  # a user's file, or another job's shard: never replaced
                        raise _foreign(path, "not a shard of this job (its metadata names no job or another)")
                    rec = self._adopt(k, path)
                    if rec is not None:
                        m.shards[str(k)] = rec

    def _whole(self, rec: dict) -> bool:
        try:
            if "files" in rec or "sidecar" in rec:  # a trainer format's files, listed inline or in a sidecar
                root, lists = self.files_root(), row_lists(self.out, rec)
                return root is not None and lists is not None and all((root / f).is_file() for f in lists["files"])
            if rec.get("file") is None:
                return True
            if rec["file"] != shard_name(int(rec["shard"])):  # the manifest is untrusted: only our own names
                return False
            path = self.out / rec["file"]
            header = read_header(path)
            return (path.stat().st_size == rec["bytes"] and header_rows(header) == rec["rows"]
                    and header.get("__metadata__", {}).get("sdclip_job") == self.digest)
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return False

    def _adopt(self, k: int, path: Path) -> dict | None:
        """A shard a killed job renamed into place but did not list: kept if it is this job's and whole."""
        try:
            header = read_header(path)
            meta = header.get("__metadata__", {})
            if meta.get("sdclip_job") != self.digest:
                return None
            start, stop = int(meta["start"]), int(meta["stop"])
            n = header_rows(header)
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None
        digest = self.rows_digest(k)
        if digest is None or meta.get("rows_digest") != digest:  # written from captions that have changed since
            return None
        return {"shard": k, "start": start, "stop": stop, "rows": n, "file": path.name,
                "sha256": sha256_file(path), "bytes": path.stat().st_size, "rows_digest": digest}

    def files_root(self) -> Path | None:
        """Where this job's trainer-format files go (the image folder or --out); None for sdclip's shards."""
        return None if self.format is None else self.format.root_of(Path(self.spec.captions), self.out)

    def _clear(self) -> None:
        """--overwrite: remove the files an earlier job wrote here, nothing else (sdclip.jobs.overwrite says
        which; the old manifest is untrusted input). A manifest sdclip did not write is refused, not removed."""
        from sdclip.jobs.formats import FORMATS
        from sdclip.jobs.overwrite import format_files, listed_paths, regular, shard_files, sidecar_files

        records: list = []
        removed: set[str] = set()  # what was removed, as the records name it (a file name, a path under a root)
        left: set[str] = set()
        unread = 0  # shards whose sidecar is missing or altered: the files it listed are not known to be ours
        if (self.out / MANIFEST).exists() or (self.out / MANIFEST).is_symlink():
            try:
                old = Manifest.load(self.out)
            except JobError as exc:
                raise JobError(f"--overwrite: {exc}; sdclip removes only files it wrote, so move that file away "
                               "or choose another --out") from None
            records = list(old.shards.values())
            old_format = FORMATS.get(str(old.config.get("format")))
            roots = (Path(self.spec.captions), self.out)
            for rec in records:  # one record's lists at a time (a sidecar's, or inline in an older manifest)
                if "sidecar" in rec:
                    lists = row_lists(self.out, rec)
                    unread += lists is None
                    rec = {**rec, **(lists or {})}
                if old_format is not None and (old_format.root == "out" or self.source.format == "images"):
                    root = old_format.root_of(Path(self.spec.captions), self.out)  # never from the manifest
                    for path in format_files(root, [rec], old_format.suffixes):
                        path.unlink(missing_ok=True)
                        removed.update(path.relative_to(r).as_posix() for r in roots if path.is_relative_to(r))
                left |= listed_paths([rec]) - removed
            remove_recorded(self.out, old.scan.get("errors_file"))
        for path in shard_files(self.out, records) + sidecar_files(self.out, records):
            path.unlink(missing_ok=True)
            removed.add(path.name)
        left -= removed
        if left:
            self.notes.append(f"--overwrite: the old manifest lists {len(left)} file(s) that are not this job's own "
                              f"here (e.g. {sorted(left)[0]!r}): left untouched")
        if unread:
            self.notes.append(f"--overwrite: {unread} shard sidecar(s) of the old job are missing or not the ones its "
                              "manifest records: the trainer files they listed are left untouched")
        for name in (MANIFEST, *SCAN_FILES):
            if regular(self.out / name):
                (self.out / name).unlink(missing_ok=True)
        if regular(self.out / EMPTY):  # only sdclip's own (its header names a job)
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError, RecursionError):
                if isinstance(read_header(self.out / EMPTY).get("__metadata__", {}).get("sdclip_job"), str):
                    (self.out / EMPTY).unlink()

    def write_empty(self, encoder) -> None:  # noqa: ANN001
        """One cached empty-caption row for caption dropout (sdclip's own format: `empty.safetensors`, the
        shards' keys; `sdclip.dataset`'s `ds.empty`). Written once; a file whose sha256 differs is redone."""
        from sdclip.jobs.shards import write_shard
        from sdclip.jobs.work import caption_sha256

        if self.format is not None:
            return
        rec = self.manifest.info.get("empty")  # type: ignore[union-attr]
        path = self.out / EMPTY
        with contextlib.suppress(OSError):
            if isinstance(rec, dict) and path.is_file() and sha256_file(path) == rec.get("sha256"):
                return
        tensors = {"index": torch_index(), **encoder.encode([""]), "caption_sha256": caption_sha256([""])}
        try:
            digest, size = write_shard(path, tensors, {"sdclip_job": self.digest, "caption": ""})
        except OSError as exc:
            raise os_error(exc, EMPTY, len(self.manifest.shards)) from None  # type: ignore[union-attr]
        self.manifest.info["empty"] = {"file": EMPTY, "sha256": digest, "bytes": size}  # type: ignore[union-attr]
        self._save()

    # -- progress ---------------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        return int(self.manifest.scan["rows"])  # type: ignore[union-attr]

    def shard_count(self) -> int:
        return -(-self.rows // self.spec.shard_size)

    def pending(self) -> list[int]:
        done = self.manifest.shards  # type: ignore[union-attr]
        return [k for k in range(self.shard_count()) if str(k) not in done]

    def seek(self, k: int) -> object:
        return self.manifest.scan["seeks"][k]  # type: ignore[union-attr]

    def complete(self, record: dict) -> None:
        """List a written shard: its per-row lists (trainer formats) go to its sidecar, written once (an
        OSError is the caller's to report: the shard is then not listed, and redone on resume)."""
        record = spill_lists(self.out, record, self.digest)
        self.manifest.shards[str(record["shard"])] = record  # type: ignore[union-attr]
        self.encoded += record["rows"]
        self._save()

    def finish(self) -> dict:
        m = self.manifest
        assert m is not None
        m.complete = not self.pending()
        self._save()
        if m.complete:  # the scan's arrays serve pending shards only; a re-run of a finished job needs none
            remove_scan_files(self.out)
        return {
            "rows": m.scan["rows"],
            "written": sum(r["rows"] for r in m.shards.values()),
            "encoded_now": self.encoded,
            "truncated": m.scan["truncated"].get("count", 0),
            "errors": m.error_count,
            "shards": len(m.shards),
            "seconds": time.perf_counter() - self.started,
        }

    def _save(self) -> None:
        try:
            self.manifest.save(self.out)  # type: ignore[union-attr]
        except OSError as exc:
            raise os_error(exc, MANIFEST, len(self.manifest.shards)) from None  # type: ignore[union-attr]

    def close(self, failed: bool = False) -> None:
        """Release the folder. A start that failed before any manifest was written leaves nothing: its scan
        files go, and so do the folders this job created, if empty."""
        if self._lock is None:
            return
        if failed and self._own_scan and not (self.out / MANIFEST).exists():
            remove_scan_files(self.out)
        with contextlib.suppress(OSError):
            (self.out / LOCK).unlink()  # unlinked while held: a job waiting on it re-checks (see folder_lock.take)
        with contextlib.suppress(OSError):
            os.close(self._lock)
        self._lock = None
        if failed:
            remove_empty(self._created)


def invalid_captions(errors: list[dict]) -> str:
    """The refusal for invalid captions: one line per caption (the first MAX_LISTED_ERRORS), then a count."""
    lines = [f"{len(errors)} invalid caption(s), nothing encoded (--on-error skip records them in the manifest "
             f"and goes on){_and_captions(errors)}:"]
    for e in errors[:MAX_LISTED_ERRORS]:
        text = f"{e['where']}: {e['error']}"
        lines.append("  " + (text[: MAX_ERROR_CHARS - 1] + "…" if len(text) > MAX_ERROR_CHARS else text))
    if len(errors) > MAX_LISTED_ERRORS:
        lines.append(f"  … and {len(errors) - MAX_LISTED_ERRORS} more")
    return "\n".join(lines)


def _and_captions(errors: list[dict]) -> str:
    """Every caption refused for its AUTOMATIC1111 AND, named in the first line ("lines 2, 4" / "row 3, cats/01.png"):
    past the listed errors, a user still learns which captions to fix or to read with --preset kohya."""
    wheres = [e["where"] for e in errors if e["error"].startswith("AUTOMATIC1111 AND makes")]
    if not wheres:
        return ""
    if all(w.startswith("line ") for w in wheres):
        wheres = [("lines " if len(wheres) > 1 else "line ") + ", ".join(w[5:] for w in wheres)]
    return f"; AUTOMATIC1111 AND in {', '.join(wheres)} (--preset kohya reads AND as text)"


def _job_of(path: Path) -> object:
    """The `sdclip_job` a regular safetensors file's metadata names (None if it names none or is no such file)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        if path.is_file() and not path.is_symlink():
            return read_header(path).get("__metadata__", {}).get("sdclip_job")
    return None


def _foreign(path: Path, why: str) -> JobError:
    return JobError(f"{path}: {why}; sdclip never replaces a file it did not write: move it away, or choose "
                    "another --out")


def torch_index():  # noqa: ANN201
    import torch

    return torch.tensor([-1], dtype=torch.int64)
