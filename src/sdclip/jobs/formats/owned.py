"""Which trainer files are the job folder's own: a trainer format replaces no file it did not write.

A trainer's cache (sd-scripts' npz beside an image, SimpleTuner's .pt, ai-toolkit's _t_e_cache/ file) is the
user's work when a trainer made it, and sdclip cannot tell the bytes apart (they are the same format; a marker
inside would change the bytes the trainer reads). So ownership is recorded where the files are (the format's root: the image folder, or --out):

- `.sdclip-trainer-files.jsonl` (JOURNAL), append-only: one JSON string a line, a file's path under the root,
  written *before* the file itself (which is then written atomically), once per path. A job killed mid-shard
  (kill -9) has therefore listed every file it may have left whole, and its re-run replaces them; a file at a
  trainer name that no journal line and no sidecar lists is refused in one line naming it, before it is
  touched. Beside the images, not in --out: a later job with another --out (or --overwrite) on the same
  images replaces what sdclip wrote there, and still nothing else.
- the shard sidecars (`shard-NNNNN.json`, sdclip.jobs.manifest) of the shards --out's manifest records: what
  finished shards wrote, also for folders of versions before the journal.

The journal outlives `--overwrite` (it records what sdclip wrote there, whatever job). It is untrusted input
like the manifest: read bounded, a malformed line is ignored (its file is then not known to be sdclip's).

The per-process caches are shared by every job of the process: a library caller may run two jobs in threads
(on one image folder, or on two), so they are read and changed under one lock (`forget` iterated a dict that
another job's writer was adding to: "dictionary changed size during iteration").
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from pathlib import Path

from sdclip import bounded_files
from sdclip.jobs.manifest import MANIFEST, JobError, Manifest, row_lists
from sdclip.outputs import TMP_SUFFIX, pid_alive

JOURNAL = ".sdclip-trainer-files.jsonl"
#: a journal line is ~100 bytes: 4 GB is tens of millions of files
MAX_JOURNAL = 4 << 30

#: (resolved --out, resolved root) → files known to be this folder's (a per-process cache; reloaded on a miss)
_known: dict[tuple[str, str], set[str]] = {}
#: (resolved --out, resolved root) → relative path → a killed writer's temporaries of it (remove_dead_temps)
_waiting: dict[tuple[str, str], dict[str, list[Path]]] = {}
#: held while `_known` / `_waiting` are read or changed (and while a path is journaled: once per path)
_lock = threading.Lock()


def forget(out: Path) -> None:
    """Drop the cache for `out` (a new job starts: what is on disk is read again)."""
    resolved = str(Path(out).resolve())
    with _lock:
        for cache in (_known, _waiting):
            for key in [k for k in cache if k[0] == resolved]:
                del cache[key]


def claim(out: Path, root: Path, rel: str) -> None:
    """Before writing `root/rel`: journal it if it is new; if a file is already there, it must be one this folder
    records as sdclip's (else JobError, one line naming it, and the file is left untouched)."""
    key = (str(Path(out).resolve()), str(Path(root).resolve()))
    with _lock:
        _claim(key, out, Path(root), rel)


def _claim(key: tuple[str, str], out: Path, root: Path, rel: str) -> None:
    path = root / rel
    if key in _waiting:  # a killed writer's temporary of this very file
        _unlink(_waiting[key].pop(rel, []))
    if not (path.exists() or path.is_symlink()):
        if key not in _known:
            _known[key] = _load(out, root)
        if rel not in _known[key]:  # once per path: a re-run's journal is an undisturbed run's
            _append(root, rel)
            _known[key].add(rel)
        return
    if rel in _known.get(key, ()):
        return
    _known[key] = _load(out, root)  # written meanwhile by another worker, or not yet read
    if rel not in _known[key]:
        raise JobError(f"{path}: a file of the trainer's name that sdclip did not write here (a trainer's own "
                       f"cache, or another tool's); sdclip never replaces it: move it away, or choose another "
                       "--captions / --out")


def _append(root: Path, rel: str) -> None:
    line = (json.dumps(rel) + "\n").encode()  # ASCII: a name that is not UTF-8 is escaped, not lost
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(Path(root) / JOURNAL, flags, 0o666)
    except FileNotFoundError:  # a writer used without a job (the job made --out before anything else)
        Path(root).mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(root) / JOURNAL, flags, 0o666)
    try:
        os.write(fd, line)  # one write of a short line under O_APPEND: whole, even beside another worker's
    finally:
        os.close(fd)


def _load(out: Path, root: Path) -> set[str]:
    """Every file under `root` its journal lists, and every file --out's recorded shards' sidecars list."""
    found: set[str] = set()
    with contextlib.suppress(ValueError):  # no journal, or not a regular file: nothing known from it
        with bounded_files.open_regular(Path(root) / JOURNAL, ValueError) as f:
            read = 0
            for raw in f:
                read += len(raw)
                if read > MAX_JOURNAL:
                    break
                with contextlib.suppress(ValueError, RecursionError):
                    entry = json.loads(raw)
                    if isinstance(entry, str):
                        found.add(entry)
    if (Path(out) / MANIFEST).is_file():
        with contextlib.suppress(JobError):
            for rec in Manifest.load(out).shards.values():
                found.update((row_lists(out, rec) or {}).get("files", {}))
    return found


#: sdclip.outputs.atomic_path's temporary beside `NAME`: `.NAME.PID.xxxxxxxx.tmp` (tempfile.mkstemp's 8 characters)
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}" + re.escape(TMP_SUFFIX))


def remove_dead_temps(out: Path, root: Path) -> int:
    """The temporaries a killed writer of trainer files left under `root` (beside the images): only
    `atomic_path`'s exact name whose writer's pid is gone. One the journal names the file of (journaled before
    its write began) is removed now; any other waits until this job writes the very file it names (`claim`),
    and is removed then (certainly a temporary of that file's writer). Returns how many were removed now."""
    rroot = str(Path(root).resolve())
    waiting: dict[str, list[Path]] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            m = _TEMP.fullmatch(name)
            if m is not None and not pid_alive(int(m["pid"])):
                waiting.setdefault((Path(folder) / m["name"]).relative_to(root).as_posix(), []).append(Path(folder) / name)
    if not waiting:
        return 0
    listed = _load(out, root)
    n = 0
    for rel in [rel for rel in waiting if rel in listed]:
        n += _unlink(waiting.pop(rel))
    with _lock:
        _waiting[(str(Path(out).resolve()), rroot)] = waiting
    return n


def _unlink(paths: list[Path]) -> int:
    n = 0
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
            n += 1
    return n
