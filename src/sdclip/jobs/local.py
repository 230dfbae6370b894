"""The local engine: shards in input order in this process, with one loaded Conditioner.

Encoding shard k+1 overlaps writing shard k: the main thread reads and encodes (the encoder is used from
one thread only, in shard order, so a caption repeated later is reused, not re-encoded), and one writer
thread hashes and writes each shard atomically, then lists it in the manifest. The queue between them
holds at most `DEPTH` shards, so memory stays a few shards whatever the job's size. A writer error (a
full disk) stops the job at the next hand-over with the same one line as before; on any error or Ctrl-C,
the shards already handed over are finished and listed first (nothing half-written, nothing encoded lost).
"""

from __future__ import annotations

import ctypes
import functools
import os
import queue
import threading
from collections.abc import Callable

from sdclip.jobs.driver import Job
from sdclip.jobs.encode import CaptionEncoder
from sdclip.jobs.plan import os_error
from sdclip.jobs.shards import shard_name
from sdclip.jobs.work import ShardInput, ShardWork

#: encoded shards waiting for the writer (besides the one it is writing)
DEPTH = 1


def run_local(job: Job, encoder: CaptionEncoder, on_shard: Callable[[dict], None] | None = None) -> None:
    """Encode every pending shard in input order, writing each in the background while the next encodes."""
    pending = job.pending()
    if not pending:  # a finished job: its scan arrays are gone, and nothing needs them
        return
    work = ShardWork(job.spec, job.digest, encoder)
    writer = ShardWriter(job, work, on_shard)
    try:
        for k in pending:
            writer.check()
            try:
                shard = work.prepare(k, job.seek(k), job.rows)
                tensors = work.encode(shard)
            except OSError as exc:
                raise os_error(exc, shard_name(k), len(job.manifest.shards)) from None  # type: ignore[union-attr]
            writer.put(shard, tensors)
            del tensors  # the writer's now: not kept alive here while the next shard encodes
    except BaseException:
        writer.close()  # finish what was handed over; this error, not a later writer one, is the job's
        raise
    writer.close()
    writer.check()


class ShardWriter:
    """One background thread: `ShardWork.write` then `Job.complete` (and `on_shard`) per shard, in order."""

    def __init__(self, job: Job, work: ShardWork, on_shard: Callable[[dict], None] | None):
        self.job, self.work, self.on_shard = job, work, on_shard
        self.queue: queue.Queue = queue.Queue(maxsize=DEPTH)
        #: the first error the writer met (raised in the main thread by `check`); later shards are dropped
        self.error: BaseException | None = None
        self.closing = False
        self.thread = threading.Thread(target=self._loop, name="sdclip-shard-writer")
        self.thread.start()

    def put(self, shard: ShardInput, tensors: dict) -> None:
        self.queue.put((shard, tensors))  # blocks while DEPTH shards wait: the writer never falls far behind

    def check(self) -> None:
        """Raise the writer's error, if it met one (a shard it could not write is not in the manifest)."""
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Wait until every shard handed over is written and listed (or the writer failed)."""
        interrupted = False
        while self.thread.is_alive():  # a second Ctrl-C waits too: at most DEPTH + 1 shard writes
            try:
                if not self.closing:
                    self.queue.put(None)
                    self.closing = True
                self.thread.join()
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:  # keep draining so the main thread never blocks on a full queue
                continue
            shard, tensors = item
            try:
                record = self.work.write(shard, tensors)
                del tensors, item  # this shard's rows, freed before the trim below
                self.job.complete(record)
                if self.on_shard is not None:
                    self.on_shard(record)
                release_freed_memory()
            except OSError as exc:
                self.error = os_error(exc, failed_file(exc, self.work, shard.k),
                                      len(self.job.manifest.shards))  # type: ignore[union-attr]
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
                self.error = exc


def failed_file(exc: OSError, work: ShardWork, k: int) -> str:
    """What a write error names: sdclip's shard k, or for a trainer format the file the error names (its rows
    are the trainer's own files, never a shard: a kohya job has no shard-00000.safetensors to name)."""
    if work.format is None:
        return shard_name(k)
    return os.fsdecode(exc.filename) if exc.filename else f"shard {k}'s --format {work.format.name} files"


def release_freed_memory() -> None:
    """Hand memory freed in this thread's malloc arena back to the system (glibc's `malloc_trim`; elsewhere
    nothing). A second thread gets its own arena, which kept what each shard's write had freed: a Wan job's
    peak RSS grew with its shards (tiny umT5, `--varlen`: 484 MiB at 1 shard, 528 at 3, 562 at 10; the same
    jobs with one arena, MALLOC_ARENA_MAX=1: 503 and 505)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():  # noqa: ANN202
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl; Windows has no CDLL(None)): no trim
        return None
