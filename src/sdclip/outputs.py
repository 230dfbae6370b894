"""Writing results so that nothing half-written is ever where a user would take it for a result.

Every output goes to a temporary file beside its final name, is fsynced and renamed over it (`os.replace` is
atomic on one filesystem), and the folder is fsynced so the rename survives a power cut; any failure (a full
disk, SIGINT) removes the temporary file. A SIGKILL can leave only a hidden `.NAME.*.tmp`, never NAME.
Output locations are checked before any model loads, and an output is never one of the command's inputs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class OutputError(ValueError):
    """An output location that cannot be written, or would overwrite an input."""


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened and synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yields a temporary path beside `final`; on success it is fsynced and renamed to `final`, on any
    failure (disk full included) removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=final.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
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
        if pid.isdigit() and not _alive(int(pid)):
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


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(out: Path, inputs: Iterable[str | os.PathLike] = (), flag: str = "--out") -> None:
    """Fail fast, before any model loads: `out` must be a file we can create in an existing-or-creatable
    folder, and never one of the inputs (or inside an input folder's files)."""
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"{flag} {out} is a folder; give a file name")
    for given in inputs:
        src = Path(given)
        if _same(out, src) or (src.is_dir() and out.exists() and _same(out.parent, src) and out.name in os.listdir(src)):
            raise OutputError(f"{flag} {out} is an input ({given}); refusing to overwrite it")
    parent = out.parent if str(out.parent) else Path(".")
    for p in (parent, *parent.parents):
        if p.exists():
            if not p.is_dir():
                raise OutputError(f"{flag} {out}: {p} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=TMP_SUFFIX, dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write {flag} {out}: {reason(exc)}") from None
