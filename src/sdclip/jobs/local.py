"""The local engine: shards one after another in this process, with one loaded Conditioner."""

from __future__ import annotations

from collections.abc import Callable

from sdclip.jobs.driver import Job
from sdclip.jobs.encode import CaptionEncoder
from sdclip.jobs.plan import os_error
from sdclip.jobs.shards import shard_name
from sdclip.jobs.work import ShardWork


def run_local(job: Job, encoder: CaptionEncoder, on_shard: Callable[[dict], None] | None = None) -> None:
    """Encode every pending shard in input order (so a caption repeated later is reused, not re-encoded)."""
    pending = job.pending()
    if not pending:  # a finished job: its scan arrays are gone, and nothing needs them
        return
    work = ShardWork(job.spec, job.digest, encoder)
    for k in pending:
        try:
            record = work.run(k, job.seek(k), job.rows)
        except OSError as exc:
            raise os_error(exc, shard_name(k), len(job.manifest.shards)) from None  # type: ignore[union-attr]
        job.complete(record)
        if on_shard is not None:
            on_shard(record)
