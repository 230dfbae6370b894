"""`sdclip embed`: a captions file → resumable, sharded embeddings for training (see sdclip.jobs).

Contract (keep it stable): DIR/manifest.json plus DIR/shard-NNNNN.safetensors, shard k holding input indices
[k·S, (k+1)·S) as `index` int64 [n], `prompt_embeds` [n, N, D] and, where the family has one,
`pooled_prompt_embeds` [n, P]; N = K·77 slots for `--max-rows K` (default 1); a caption repeated from an
earlier row is a reference row (`ref_index`, `ref_source`: its tensors are the earlier row's; `--no-dedupe`
stores every row). Re-running the same command
resumes; `--verify DIR` re-checks a folder. `--format kohya` writes sd-scripts' per-image .npz caches instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdclip.jobs.formats import NAMES as FORMAT_NAMES
from sdclip.cli.options import add_model_options, add_text_options, model_options, whole_number


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="bulk captions → resumable sharded embeddings (training caches)")
    p.add_argument("--captions", type=Path, help=".txt (one caption a line) / .jsonl / .csv / .tsv / .parquet, "
                   "or an image folder with sidecar .txt captions")
    p.add_argument("--out", type=Path, help="output folder (manifest.json + shard-NNNNN.safetensors)")
    p.add_argument("--shard-size", type=whole_number, default=1024, help="captions per shard (default 1024)")
    p.add_argument("--batch-size", type=whole_number, default=64, help="distinct captions per encoder call (default 64)")
    p.add_argument("--format", choices=FORMAT_NAMES, default="safetensors",
                   help="safetensors shards (default, sdclip.dataset reads them) or a trainer's own cache files: "
                   "kohya (sd-scripts .npz: SDXL, SD3, Flux), musubi (musubi-tuner: Flux Kontext, Wan, Qwen-Image, "
                   "Z-Image), simpletuner (.pt by caption md5), ai-toolkit (_t_e_cache/)")
    p.add_argument("--store-dtype", choices=("fp32", "fp16", "bf16"), default=None,
                   help="dtype of the stored tensors (default: --dtype, the encoders' own); e.g. --dtype fp32 "
                   "--store-dtype bf16 encodes in fp32 and halves the files")
    p.add_argument("--varlen", action="store_true",
                   help="sdclip shards without padding, lengths kept (where the family's pipeline masks "
                   "padding, or its padding is zeros); sdclip.dataset rebuilds the padded rows")
    p.add_argument("--no-dedupe", action="store_true",
                   help="store every row's tensors, a repeated caption too (default: once, later rows refer to the "
                   "first; sdclip.dataset reads both; readers older than sdclip's shard format 2 need this)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local (default) or Ray Data")
    p.add_argument("--ray-address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--workers", type=whole_number, default=1, help="Ray actors, each with its own encoder (default 1)")
    p.add_argument("--column", help="caption column of .jsonl/.csv/.tsv/.parquet (default caption, then text)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="invalid captions: fail before encoding (default) or skip them, listed in the manifest")
    p.add_argument("--caption-extension", default=".txt", metavar="EXT",
                   help="image folders: the caption files' suffix (default .txt; kohya sd-scripts' "
                   "--caption_extension); an image without one gets the empty caption, with a warning, as there")
    p.add_argument("--caption-lines", action="store_true",
                   help="image folders: every non-blank line of a sidecar is its own caption, indexed (image, line) "
                   "as SimpleTuner does (shards add image_index and caption_line)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again: remove the files an earlier job wrote in --out (only those: shards and "
                   "npz files whose hashes its manifest records), then run")
    p.add_argument("--verbose", action="store_true", help="show the Ray engine's own logs (quiet by default)")
    p.add_argument("--verify", type=Path, metavar="DIR", help="check a finished folder (hashes, every index once)")
    add_model_options(p, model_required=False, per_encoder_prompts=False)
    add_text_options(p)
    for action in p._actions:
        if action.dest == "max_rows":
            action.help = ("rows of 77 slots per caption, K → N = 77·K (default 1); longer captions are "
                           "truncated and counted; also the compress layout's limit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from rich.console import Console

    from sdclip.jobs.manifest import JobError

    console = Console(stderr=True)
    if args.verify is not None:
        from sdclip.jobs.verify import verify

        result = verify(args.verify)
        print(f"{args.verify}: ok — {result['shards']} shard(s), {result['rows']} row(s), every hash and index checked")
        return 0
    missing = [f for f, v in (("--model", args.model), ("--captions", args.captions), ("--out", args.out)) if v is None]
    if missing:
        raise JobError(f"embed needs {', '.join(missing)} (or --verify DIR)")
    if args.workers < 1:
        raise JobError("--workers must be ≥ 1")
    from sdclip.encoder.device import resolve_device
    from sdclip.encoder.loading.reads import model_reads
    from sdclip.jobs.formats import get_format
    from sdclip.outputs import check_output_folder, refuse_reads

    # never where the model load reads, nor the captions (an image folder is walked whole: nor inside it)
    reads = model_reads(args.model, args.embeddings)
    check_output_folder(args.out, [*reads, args.captions])
    fmt = get_format(args.format)
    if fmt is not None and fmt.root_of(args.captions, args.out) != args.out:  # files beside the images: same rule
        refuse_reads(fmt.root_of(args.captions, args.out), reads,
                     flag=f"--format {args.format} writes beside the images, and --captions")
    from sdclip.encoder.loading.hub import check_source

    check_source(args.model)  # after the output's checks: a wrong --out is named even with no model yet
    from sdclip.jobs.driver import Job
    from sdclip.jobs.plan import JobSpec

    args.device = resolve_device(args.device)  # before any folder is made or model read
    spec = JobSpec(
        model=str(args.model), captions=str(args.captions), out=str(args.out), options=asdict(model_options(args)),
        rows=args.max_rows or 1, shard_size=args.shard_size, batch_size=args.batch_size, dtype=args.dtype,
        device=args.device, family=args.family, embeddings=list(args.embeddings), format=args.format,
        column=args.column, on_error=args.on_error, pack_weights=args.pack_weights,
        caption_extension=args.caption_extension, store_dtype=args.store_dtype, varlen=args.varlen,
        caption_lines=args.caption_lines, dedupe=not args.no_dedupe,
    )
    restore = _sigterm_as_ctrl_c()
    try:
        job = Job(spec, overwrite=args.overwrite, console=console)  # folder + configuration checked: no model yet
        for note in job.notes:
            print(f"sdclip: warning: {note}", file=sys.stderr)
        failed = True
        try:
            code = _run(job, spec, args, console)
            failed = False
            return code
        finally:
            job.close(failed=failed)
    finally:
        restore()


def _sigterm_as_ctrl_c():  # noqa: ANN202
    """SIGTERM (`kill`, `docker stop`, a scheduler's preemption) ends a job as Ctrl-C does: the shards handed over
    are finished and listed, temporary files and the lock removed, one line, exit 130. Its default action killed
    the process silently, leaving them for the next run. Returns the call that puts the old handler back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return lambda: None

    def stop(signum, frame) -> None:  # noqa: ANN001
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, old)


def _run(job, spec, args: argparse.Namespace, console) -> int:  # noqa: ANN001
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    from sdclip.jobs.encode import CaptionEncoder
    from sdclip.jobs.manifest import JobError

    class Speed(ProgressColumn):
        def render(self, task) -> Text:  # noqa: ANN001
            return Text(f"{task.speed:,.1f} captions/s" if task.speed else "– captions/s")

    class Count(ProgressColumn):
        """done/total, or done alone while the total is unknown (the validation pass has none)."""

        def render(self, task) -> Text:  # noqa: ANN001
            done = f"{int(task.completed):,}"
            return Text(done if task.total is None else f"{done}/{int(task.total):,}")

    encoder = CaptionEncoder(spec)
    columns = (TextColumn("{task.description}"), BarColumn(), Count(), Speed(), TimeRemainingColumn(),
               TextColumn("{task.fields[shards]}"))
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        t = progress.add_task("validating", total=None, shards="")
        job.prepare(encoder, lambda n: progress.advance(t, n))
        job.write_empty(encoder)
        progress.remove_task(t)
        _warnings(job, progress.console)
        total_shards = job.shard_count()
        pending = job.pending()
        done_rows = sum(r["rows"] for r in job.manifest.shards.values())
        valid = job.manifest.scan["valid_rows"]
        task = progress.add_task("embedding", total=valid, completed=done_rows,
                                 shards=f"{total_shards - len(pending)}/{total_shards} shards")

        def on_shard(rec: dict) -> None:
            progress.update(task, advance=rec["rows"], shards=f"{len(job.manifest.shards)}/{total_shards} shards")

        if job.changed is not None:  # captions edited since the last run: say what is re-encoded
            progress.console.print(_changed(job, pending), markup=False, highlight=False, soft_wrap=True)
        elif pending and len(pending) < total_shards:  # resuming: say what is kept
            progress.console.print(f"{job.out}: {len(pending)} of {total_shards} shard(s) to do "
                                   f"({total_shards - len(pending)} kept)", markup=False, highlight=False, soft_wrap=True)
        if args.engine == "ray":
            from sdclip.jobs.ray_engine import run_ray

            run_ray(job, address=args.ray_address, workers=args.workers, on_shard=on_shard, verbose=args.verbose)
        else:
            from sdclip.jobs.local import run_local

            run_local(job, encoder, on_shard)
    s = job.finish()
    rate = s["encoded_now"] / s["seconds"] if s["seconds"] > 0 else 0.0
    print(f"{job.out}: {s['written']:,} of {s['rows']:,} caption(s) in {s['shards']} shard(s); "
          f"{s['encoded_now']:,} encoded now in {s['seconds']:.1f} s ({rate:,.1f} captions/s); "
          f"{s['truncated']:,} truncated{_truncated(job)}, {s['errors']:,} error(s) skipped", file=sys.stdout)
    if job.source.fingerprint() != job.input:  # a shard checks only its own rows: an append or an edit of a row
        raise JobError(f"{spec.captions} changed while the job ran (after the rows it changed were read, or past "
                       "them): the shards hold the captions as read; re-run the same command to encode the changes")
    return 0


#: truncated captions named in the summary (all are counted; the manifest lists the first 1,000)
SHOWN_TRUNCATED = 10


def _truncated(job) -> str:  # noqa: ANN001
    """Which captions were truncated (" (input index 1, 5, …)"): a count alone leaves the user to find them."""
    found = job.manifest.scan.get("truncated") or {}
    count, indices = int(found.get("count", 0)), list(found.get("indices", []))
    if not count:
        return ""
    more = f" …; manifest.json lists the first {len(indices):,}" if count > SHOWN_TRUNCATED else ""
    return f" (input index {', '.join(map(str, indices[:SHOWN_TRUNCATED]))}{more})"


def _changed(job, pending: list[int]) -> str:  # noqa: ANN001
    """What a re-run after edited captions does: which shards it re-encodes (their captions changed), removes
    (past the captions' new end) or still has to do, and how many it keeps."""
    c, total, size = job.changed, job.shard_count(), job.spec.shard_size
    redo = [k for k in c["shards"] if k < total]
    said = []
    if redo:
        shown = ", ".join(map(str, redo[:10])) + (" …" if len(redo) > 10 else "")
        rows = sum(min((k + 1) * size, job.rows) - k * size for k in redo)
        said.append(f"{len(redo)} shard(s) re-encoded ({shown}; {rows:,} caption(s))")
    else:
        said.append("no finished shard's captions changed")
    if len(redo) < len(c["shards"]):
        said.append(f"{len(c['shards']) - len(redo)} past the captions' new end removed")
    if len(pending) > len(redo):
        said.append(f"{len(pending) - len(redo)} more to do")
    return f"{job.out}: the captions changed since the last run: {', '.join(said)}, {c['kept']} kept"


#: scan warnings shown on stderr (all are counted; the manifest lists the first 100)
SHOWN_WARNINGS = 10


def _warnings(job, console) -> None:  # noqa: ANN001
    found = job.manifest.scan.get("warnings") or {}
    first, count = found.get("first", []), int(found.get("count", 0))
    for w in first[:SHOWN_WARNINGS]:
        console.print(f"sdclip: warning: {w['where']}: {w['warning']}", markup=False, highlight=False, soft_wrap=True)
    if count > SHOWN_WARNINGS:
        console.print(f"sdclip: warning: … and {count - SHOWN_WARNINGS} more (manifest.json lists the first "
                      f"{len(first)})", markup=False, highlight=False, soft_wrap=True)
