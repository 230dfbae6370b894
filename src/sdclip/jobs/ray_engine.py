"""`--engine ray`: the same job on Ray Data, one Conditioner per actor.

The job's pending shards become a small dataset (one row per shard: k, seek); `map_batches` runs
`ShardActor` — a callable class that loads the encoders once in its constructor — over an
`ActorPoolStrategy` of `--workers` actors (one GPU each when CUDA is there). Each actor reads its shard's
input range itself and writes the shard file atomically, under the same name the local engine uses, so the
driver only records finished shards in the manifest and a job may be resumed by either engine. On a
cluster, the captions file, the model and the output folder must be at the same path on every node (a
shared filesystem); for data that lives elsewhere, build your own pipeline with `embed_dataset`.

Python API for an existing Ray pipeline:

>>> ds = ray.data.read_parquet("s3://bucket/captions/")
>>> ds = embed_dataset(ds, model="sdxl.safetensors", column="caption", workers=4, preset="diffusers")
>>> ds.write_parquet(...)   # adds prompt_embeds [N, D] (and pooled_prompt_embeds [P]) per row, float32 numpy
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict

from sdclip.jobs.driver import Job
from sdclip.jobs.local import failed_file
from sdclip.jobs.manifest import JobError
from sdclip.jobs.plan import JobSpec, os_error


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def _strategy(workers: int):  # noqa: ANN202
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=workers)


class ShardActor:
    """Ray Data callable class: loads the job's encoder once; each call encodes and writes whole shards."""

    def __init__(self, spec: dict, digest: str, rows: int):
        from sdclip.jobs.work import ShardWork

        self.work = ShardWork(JobSpec(**spec), digest)
        self.rows = rows

    def __call__(self, batch: dict) -> dict:
        records = []
        for k, seek in zip(batch["shard"], batch["seek"]):
            try:
                records.append(json.dumps(self.work.run(int(k), json.loads(seek), self.rows)))
            except OSError as exc:  # the driver's one line names the file that failed, as the local engine's
                exc.sdclip_file = failed_file(exc, self.work, int(k))  # type: ignore[attr-defined] - pickled along
                raise
            except JobError as exc:  # kept as said: Ray Data appends its retry advice to the message on the way
                exc.sdclip_line = str(exc)  # type: ignore[attr-defined]
                raise
        return {"record": records}


def shard_dataset(job: Job, workers: int = 1):  # noqa: ANN201
    """The Ray dataset that does a prepared job's pending shards (yields one JSON manifest record per shard)."""
    import ray.data

    items = [{"shard": k, "seek": json.dumps(job.seek(k))} for k in job.pending()]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    return ds.map_batches(
        ShardActor,
        fn_constructor_kwargs={"spec": asdict(job.spec), "digest": job.digest, "rows": job.rows},
        batch_size=1,
        compute=_strategy(min(workers, len(items))),  # no more actors than shards (Ray Data warns of idle ones)
        num_gpus=1 if _cuda() and job.spec.device.startswith("cuda") else 0,
        num_cpus=1,
    )


def quiet_ray_logs() -> None:
    """Ray and Ray Data log pages of lines (cluster start, token notice, execution plans, operator progress,
    actor notes from the C++ core) to the terminal: errors only, unless `sdclip embed --verbose`. Ray Data's
    console handler is configured by Ray itself (DEBUG logger, INFO handler, no propagation), so its level is
    set on the handler; the files under /tmp/ray keep everything. Ray Data's own errors are a failed
    dataset's traceback, which `run_ray` raises (a worker's JobError or OSError as one line): not printed twice."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the core worker's own stderr lines
    for name in ("ray", "ray.util", "ray._private"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for name, level in (("ray", logging.ERROR), ("ray.data", logging.CRITICAL)):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
                handler.setLevel(level)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost error under Ray's wrappers (`cause` of a RayTaskError, then __cause__ / __context__)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
        if not isinstance(nxt, BaseException):
            break
        exc = nxt
    return exc


def run_ray(job: Job, *, address: str | None = None, workers: int = 1,
            on_shard: Callable[[dict], None] | None = None, init_kwargs: dict | None = None,
            verbose: bool = False) -> None:
    """Run a prepared job's pending shards on Ray (a local Ray unless `address` names a cluster)."""
    import ray

    if not job.pending():
        return
    if not verbose:
        import ray.data  # noqa: F401 - configures Ray Data's logging, which quiet_ray_logs then turns down

        quiet_ray_logs()
    started_here = False
    if not ray.is_initialized():
        kwargs = dict(init_kwargs or {})
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("log_to_driver", verbose)
        if not verbose:
            kwargs.setdefault("logging_level", logging.ERROR)
            kwargs.setdefault("configure_logging", True)
        if address:
            kwargs["address"] = address
        ray.init(**kwargs)
        started_here = True
        if not verbose:
            quiet_ray_logs()
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.preserve_order = False
        # a worker's error (JobError, OSError) arrives as itself: Ray Data's UserCodeException wrapper keeps
        # it only as its __cause__, which does not cross processes (the driver printed Ray's traceback)
        ctx.raise_original_map_exception = True
        try:
            for row in shard_dataset(job, workers).iter_rows():
                record = json.loads(row["record"])
                job.complete(record)
                if on_shard is not None:
                    on_shard(record)
        except Exception as exc:  # a worker's one-line error (changed input, full disk) arrives wrapped by Ray
            inner = _root_cause(exc)
            if isinstance(inner, JobError):
                raise JobError(getattr(inner, "sdclip_line", str(inner))) from None
            if isinstance(inner, OSError):
                failed = getattr(inner, "sdclip_file", "a shard")  # ShardActor names the file
                raise os_error(inner, failed, len(job.manifest.shards)) from None  # type: ignore[union-attr]
            raise
    finally:
        if started_here:
            ray.shutdown()


class EmbedCaptions:
    """Ray Data callable class for your own pipeline: a batch with a caption column → the same fixed-size
    conditioning `sdclip embed` writes (float32 numpy; identical captions in a batch encoded once)."""

    def __init__(self, model: str, column: str = "caption", rows: int = 1, batch_size: int = 64,
                 dtype: str = "fp32", device: str = "cpu", preset: str = "a1111", **overrides: object):
        from sdclip.conventions.presets import Options
        from sdclip.jobs.encode import CaptionEncoder

        options = asdict(Options.preset(preset, **overrides))
        spec = JobSpec(model=model, captions="", out="", options=options, rows=rows, batch_size=batch_size,
                       dtype=dtype, device=device)
        self.column = column
        self.encoder = CaptionEncoder(spec)

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) if t is not None else "" for t in batch[self.column]]
        out = self.encoder.encode(texts)
        for name, t in out.items():
            batch[name] = t.float().numpy()
        return batch


def embed_dataset(ds, model: str, *, column: str = "caption", workers: int = 1, batch_size: int = 64,  # noqa: ANN001, ANN201
                  **kwargs: object):
    """`ds.map_batches(EmbedCaptions, …)` over `workers` actors (one GPU each when device is cuda)."""
    device = str(kwargs.get("device", "cpu"))
    return ds.map_batches(
        EmbedCaptions,
        fn_constructor_kwargs={"model": model, "column": column, "batch_size": batch_size, **kwargs},
        batch_size=batch_size,
        compute=_strategy(workers),
        num_gpus=1 if device.startswith("cuda") else 0,
    )
