"""Writing results so that nothing half-written is ever where a user would take it for a result.

Every output goes to a temporary file beside its final name, is fsynced and renamed over it (`os.replace` is
atomic on one filesystem), and the folder is fsynced so the rename survives a power cut; any failure (a full
disk, SIGINT) removes the temporary file. A SIGKILL can leave only a hidden `.NAME.*.tmp`, never NAME.
Output locations are checked before any model loads, and an output is never one of the command's inputs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

TMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process umask now (read from /proc where it can be, since os.umask can only be read by setting it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file: results are ordinary files (issue 19.11)."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """The mode a plain `mkdir` would give a new folder (`tempfile.mkdtemp` makes 0700)."""
    return 0o777 & ~current_umask()


class OutputError(ValueError):
    """An output location that cannot be written, or would overwrite an input."""


def sha256_file(path: Path) -> str:
    """A file's sha256, read in 4 MB pieces (what manifests and records use to know a file is still ours)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened and synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def drop_cached(fd: int) -> None:
    """Let the kernel free a synced file's pages now (posix_fadvise DONTNEED; where there is none, nothing).

    A job writes gigabytes it does not read back: left cached, each new shard's pages come from memory the
    kernel must find (on this project's 2-core VM the writer's CPU per 512 KiB SD3 row was 1.6 ms, 0.6 ms
    once the last shard's freed pages are reused), and they push out files that are read again."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


@contextlib.contextmanager
def atomic_path(final: Path, cached: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside `final`; on success it is fsynced and renamed to `final`, on any
    failure (disk full included) removed. `cached=False`: its pages leave the page cache once on disk
    (`drop_cached`), for bulk results nothing reads back soon (the job's shards)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600, and writers that replace the path (safetensors' save_file) make 0600 too:
        # the result gets the mode the umask gives any new file, as manifest.json always had
        os.chmod(tmp, file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
            if not cached:
                drop_cached(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (a temporary file named with it may still be in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temps(final: Path) -> int:
    """Remove the temporary files that killed writers of `final` left (`.NAME.PID.*.tmp` whose PID is gone:
    a SIGKILL cannot be cleaned up after at the time); returns how many."""
    n = 0
    for p in Path(final).parent.glob(f".{Path(final).name}.*{TMP_SUFFIX}"):
        pid = p.name[len(Path(final).name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


def reason(exc: OSError) -> str:
    """A short, human reason for an OSError (disk full, read-only, permission…)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    if exc.errno == errno.EROFS:
        return "read-only filesystem"
    return exc.strerror or str(exc)


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def refuse_reads(out: Path, reads: Iterable[str | os.PathLike], flag: str = "--out", writes: Iterable[str] = ()) -> None:
    """OutputError when `out` (or `out/NAME` for each NAME in `writes`) is one of `reads` or inside one.

    `reads` are what the command reads: the paths `sdclip.encoder.loading.reads.model_reads` returns for
    the model and embeddings, and any input file. Compared with symbolic links followed, so another name
    for the same file or a link into the model folder is refused too."""
    real = _real(out)
    targets = [(real, out)] + [(real / name, Path(out) / name) for name in writes]
    for given in reads:
        src = _real(given)
        for target, shown in targets:
            if target == src or src in target.parents:
                what = f"{flag} {out}" if shown == out else f"{flag} {out}: the command writes {shown}, which"
                where = "is" if target == src else f"is inside {given},"
                raise OutputError(
                    f"{what} {where} read by this command (the model, its tokenizers, embeddings or an input); "
                    "refusing to write there: choose an output outside it"
                )


def _file_ancestor(out: Path, flag: str) -> Path:
    """The nearest existing ancestor of `out`; OutputError if it is a file (PATH/under/a/file)."""
    parent = out.parent if str(out.parent) else Path(".")
    for p in (parent, *parent.parents):
        if p.exists():
            if not p.is_dir():
                raise OutputError(f"{flag} {out}: {p} is a file, not a folder")
            return p
    return Path(".")


def check_output_file(out: Path, inputs: Iterable[str | os.PathLike] = (), flag: str = "--out") -> None:
    """Fail fast, before any model loads: `out` must be a file we can create in an existing-or-creatable
    folder, and never one of the inputs nor inside anything they read (see `refuse_reads`)."""
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"{flag} {out} is a folder; give a file name")
    refuse_reads(out, inputs, flag)
    _file_ancestor(out, flag)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=TMP_SUFFIX, dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write {flag} {out}: {reason(exc)}") from None


def check_output_folder(
    out: Path, inputs: Iterable[str | os.PathLike] = (), flag: str = "--out", writes: Iterable[str] = ()
) -> None:
    """Fail fast, before any model loads, and create nothing: `out` must be an existing or creatable, writable
    folder that is not one of the inputs nor inside anything they read, and whose `writes` (the names the
    command writes in it) are not either. A folder that merely *contains* the model is allowed: the commands
    write only their own names in it and never remove or replace a file they did not create."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {out} is a file, not a folder")
    refuse_reads(out, inputs, flag, writes)
    where = out if out.is_dir() else _file_ancestor(out, flag)
    if out.is_dir():
        try:
            fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=TMP_SUFFIX, dir=out)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OutputError(f"cannot write to {flag} {out}: {reason(exc)}") from None
    elif not os.access(where, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {flag} {out}: {where} is not writable")
