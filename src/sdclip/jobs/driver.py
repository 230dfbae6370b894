"""The job driver, shared by both engines: folder checks, resume bookkeeping, validation, manifest updates.

Order matters: the output folder and the configuration are checked before any model loads; every caption
is validated before the first is encoded; a shard counts only once its file has been renamed into place
and the manifest (replaced atomically) lists it. On resume, listed shards are kept if their file is whole
(size and safetensors header as recorded; `--verify` re-hashes everything), and a shard file a killed job
renamed but never listed is adopted when its metadata names this very job.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

import sdclip
from sdclip.jobs.manifest import MANIFEST, JobError, Manifest, first_difference
from sdclip.jobs.plan import LAST, LENGTHS, JobSpec, check_out_dir, load_scan_arrays, os_error, scan
from sdclip.jobs.shards import read_header, remove_stale_temps, sha256_file, shard_name
from sdclip.jobs.work import config_digest

MAX_LISTED_ERRORS = 10


class Job:
    """One `sdclip embed` job on one output folder."""

    def __init__(self, spec: JobSpec, *, overwrite: bool = False, console=None):  # noqa: ANN001
        spec.check()
        self.spec = spec
        self.out = Path(spec.out)
        self.console = console
        check_out_dir(self.out)
        self._lock = _lock(self.out)
        try:
            self._open(spec, overwrite)
        except BaseException:
            self.close()
            raise
        self.started = time.perf_counter()
        self.encoded = 0

    def _open(self, spec: JobSpec, overwrite: bool) -> None:
        remove_stale_temps(self.out)
        self.source = spec.source()
        if spec.format == "kohya" and self.source.format != "images":
            raise JobError("--format kohya writes .npz files beside the images: --captions must be an image folder")
        self.config = spec.config(self.source)
        self.digest = config_digest(self.config)
        self.manifest: Manifest | None = None
        if (self.out / MANIFEST).exists():
            if overwrite:
                self._clear()
            else:
                old = Manifest.load(self.out)
                diff = first_difference(old.config, self.config)
                if diff is not None:
                    raise JobError(f"{self.out} holds a different job ({diff}): pass --overwrite to start again, "
                                   "or choose another --out")
                self.manifest = old
        elif overwrite:
            self._clear()

    # -- setup ------------------------------------------------------------------------------------

    def prepare(self, encoder, progress=None) -> None:  # noqa: ANN001
        """Validate every caption (or reuse a previous run's scan) and check the shards already on disk."""
        from sdclip.jobs.kohya import check_kohya

        if self.spec.format == "kohya":
            check_kohya(encoder.cond.family.name, self.source.format, self.spec.rows)
        info = {"captions": str(Path(self.spec.captions).resolve()), "family": encoder.cond.family.name, "slots": encoder.slots, "widths": encoder.widths,
                "loaded_fingerprint": encoder.fingerprint}
        have_scan = (self.manifest is not None and self.manifest.scan.get("rows") is not None
                     and load_scan_arrays(self.out) is not None)
        if not have_scan:
            result = scan(self.source, encoder.validate, encoder.slots, self.spec.shard_size, self.out, progress)
            if result.errors and self.spec.on_error == "fail":
                for name in (LENGTHS, LAST):
                    (self.out / name).unlink(missing_ok=True)
                listed = "; ".join(f"{e['where']}: {e['error']}" for e in result.errors[:MAX_LISTED_ERRORS])
                more = len(result.errors) - MAX_LISTED_ERRORS
                raise JobError(f"{len(result.errors)} invalid caption(s), nothing encoded (--on-error skip records "
                               f"them and goes on): {listed}" + (f"; … {more} more" if more > 0 else ""))
            self.manifest = Manifest(self.config, sdclip.__version__, result.to_manifest(), {}, info)
        assert self.manifest is not None
        self.manifest.info.update(info)
        self._check_shards()
        self._save()

    def _check_shards(self) -> None:
        m = self.manifest
        assert m is not None
        for key, rec in list(m.shards.items()):
            if not self._whole(rec):
                del m.shards[key]
        if self.spec.format == "safetensors":
            for k in self.pending():
                path = self.out / shard_name(k)
                if path.exists():
                    rec = self._adopt(k, path)
                    if rec is not None:
                        m.shards[str(k)] = rec

    def _whole(self, rec: dict) -> bool:
        try:
            if "files" in rec:
                images = Path(self.spec.captions)
                return all((images / f).is_file() for f in rec["files"])
            if rec.get("file") is None:
                return True
            path = self.out / rec["file"]
            header = read_header(path)
            return (path.stat().st_size == rec["bytes"] and header["index"]["shape"] == [rec["rows"]]
                    and header.get("__metadata__", {}).get("sdclip_job") == self.digest)
        except (OSError, ValueError, KeyError):
            return False

    def _adopt(self, k: int, path: Path) -> dict | None:
        """A shard a killed job renamed into place but did not list: kept if it is this job's and whole."""
        try:
            header = read_header(path)
            meta = header.get("__metadata__", {})
            if meta.get("sdclip_job") != self.digest:
                return None
            start, stop = int(meta["start"]), int(meta["stop"])
            n = header["index"]["shape"][0]
        except (OSError, ValueError, KeyError):
            return None
        return {"shard": k, "start": start, "stop": stop, "rows": n, "file": path.name,
                "sha256": sha256_file(path), "bytes": path.stat().st_size}

    def _clear(self) -> None:
        """--overwrite: remove this tool's files from the folder (nothing else)."""
        with contextlib.suppress(JobError):
            old = Manifest.load(self.out)
            for rec in old.shards.values():
                for f in rec.get("files", {}):
                    with contextlib.suppress(OSError):
                        Path(old.info["captions"], f).unlink()
        for p in list(self.out.glob("shard-*.safetensors")) + [self.out / n for n in (MANIFEST, LENGTHS, LAST)]:
            p.unlink(missing_ok=True)

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
        self.manifest.shards[str(record["shard"])] = record  # type: ignore[union-attr]
        self.encoded += record["rows"]
        self._save()

    def finish(self) -> dict:
        m = self.manifest
        assert m is not None
        m.complete = not self.pending()
        self._save()
        return {
            "rows": m.scan["rows"],
            "written": sum(r["rows"] for r in m.shards.values()),
            "encoded_now": self.encoded,
            "truncated": m.scan["truncated"].get("count", 0),
            "errors": len(m.scan["errors"]),
            "shards": len(m.shards),
            "seconds": time.perf_counter() - self.started,
        }

    def _save(self) -> None:
        try:
            self.manifest.save(self.out)  # type: ignore[union-attr]
        except OSError as exc:
            raise os_error(exc, MANIFEST, len(self.manifest.shards)) from None  # type: ignore[union-attr]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock)


def _lock(out: Path) -> int:
    """An advisory lock on the folder: two jobs writing one folder would undo each other's manifest."""
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise JobError(f"{out}: another `sdclip embed` is writing this folder") from None
    return fd
