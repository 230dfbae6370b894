"""An `sdclip embed` folder's lock: taken by the job that writes the folder, looked at by `--verify`.

Torch-free and small on purpose: `--verify` of a trainer format's folder loads no model code.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sdclip.jobs.manifest import JobError

LOCK = ".lock"


def take(out: Path) -> int:
    """An advisory lock on the folder: two jobs writing one folder would undo each other's manifest. The lock
    file is removed when a job ends, so after locking, the path must still name the file locked (else a
    finishing job unlinked it meanwhile: lock the new one)."""
    for _ in range(10):
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JobError(f"{out}: another `sdclip embed` is writing this folder") from None
        try:
            if os.stat(out / LOCK).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise JobError(f"{out}: another `sdclip embed` keeps taking this folder")


def held(out: Path) -> bool:
    """Whether a job holds `out` now. Looked at without taking the folder: a shared lock tried and dropped at
    once, on the lock file only if it exists (nothing is created; a killed job's left-over file is not held)."""
    try:
        fd = os.open(Path(out) / LOCK, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:  # EWOULDBLOCK: a job's exclusive lock
        return True
    except OSError:  # not a file flock can lock (no job made it)
        return False
    finally:
        os.close(fd)  # drops the shared lock, if taken
    return False
