"""`sdclip encode`: prompts → a .safetensors file of diffusers-ready conditioning.

Contract (keep it stable): writes `prompt_embeds` and `negative_prompt_embeds` ([B, N, D]; B = 1 for
--prompt) and, for SDXL, `pooled_prompt_embeds` and `negative_pooled_prompt_embeds` ([B, 1280]), always
B rows (the contract). Without `--negative` those B negative rows are identical: `--negative-rows shared`
(added, opt-in) stores them once, [1, N, D] / [1, 1280], with metadata `negative_broadcast=true`, and a large
file without it gets a one-line note saying how much that would save.
A family whose pipeline takes no negative (Flux.2 [dev]: `Flux2Pipeline.__call__` has no
`negative_prompt_embeds`) gets `prompt_embeds` alone, so `pipe(**load_file(...))` still works.
`--clip-skip N` is AUTOMATIC1111's count (1 = last layer) whatever the preset, unless --clip-skip-convention
names another (a negative N can only be ComfyUI's, and is read as such); a bad N fails before the model loads.

Order of work, so that a mistake costs nothing: the output location is checked (never an input, a folder, a
read-only place), every prompt is read and laid out (errors name their line), then the model loads, and the
rows stream into a temporary file batch by batch (memory holds one batch) that is renamed over `--out` only
when complete. Truncated prompts are reported on stderr and in the file's metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

from sdclip.cli.options import add_model_options, add_text_options, model_options, whole_number
from sdclip.describe import lane_warnings
from sdclip.outputs import OutputError, atomic_path, check_output_file, reason

#: how many truncated prompts the file's metadata and stderr list by line (the count is always exact)
REPORTED = 20


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="encode prompts with a model's text encoder(s) to a .safetensors file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt")
    src.add_argument("--prompts-file", type=Path,
                     help="UTF-8 text, one prompt per line (line i is row i; a blank line is the empty prompt)")
    p.add_argument("--negative", help="negative prompt (default: none — the empty prompt, or zeros where the preset says)")
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file (never one of the inputs)")
    p.add_argument("--batch-size", type=whole_number, default=8, help="prompts per encoder batch with --prompts-file (default 8)")
    p.add_argument("--negative-rows", choices=("each", "shared"), default="each",
                   help="with --prompts-file and no --negative every prompt's negative is the same: 'each' (default, "
                   "the stable contract) writes negative_prompt_embeds [B, N, D] for pipe(**load_file(...)); "
                   "'shared' stores it once, [1, N, D] (metadata negative_broadcast=true; expand it to B rows)")
    add_model_options(p)
    add_text_options(p)
    p.set_defaults(func=run)


def read_prompts(path: Path) -> list[str]:
    """Every line of a prompts file, blank ones included (the empty prompt): row i of the output is line i."""
    if path.is_dir():
        raise ValueError(f"--prompts-file {path} is a folder, not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read --prompts-file {path}: {reason(exc)}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line does not start another
    out = []
    for number, raw in enumerate(lines, 1):
        try:
            out.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path} line {number} is not UTF-8 (byte {exc.start}): {raw[:60]!r}") from None
    if not out:
        raise ValueError(f"{path} holds no prompt")
    return out


def _torch():  # noqa: ANN202
    try:
        import torch
    except ModuleNotFoundError:
        raise ValueError(
            "sdclip encode runs the text encoder, which needs torch: pip install 'sdclip[torch]' (from a checkout: "
            "pip install -e '.[torch]'); "
            "CPU-only torch first, a few hundred MB instead of the multi-GB CUDA build: "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu"
        ) from None
    return torch


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError("--batch-size must be ≥ 1")
    if args.out.suffix != ".safetensors":
        raise ValueError(f"--out must be a .safetensors file, got {args.out}")
    from sdclip.encoder.loading.reads import model_reads  # the model folder / file, its tokenizers, embeddings

    inputs = [*model_reads(args.model, args.embeddings)] + ([args.prompts_file] if args.prompts_file else [])
    check_output_file(args.out, inputs)
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts_file)
    options = model_options(args)
    from sdclip.encoder.loading.hub import check_source

    check_source(args.model)  # after the options' own checks: a bad value is named even with no model yet
    torch = _torch()
    from sdclip.encoder.device import resolve_device

    args.device = resolve_device(args.device)
    from sdclip.conditioner import Conditioner

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    cond = Conditioner.from_pretrained(
        args.model, family=args.family, dtype=dtype, device=args.device, embeddings=args.embeddings,
        options=options, pack_weights=args.pack_weights, row_limit=args.row_limit,
    )
    for w in cond.embeddings.warnings:
        print(f"sdclip: warning: {w}", file=sys.stderr)
    where = (lambda i: f"line {i + 1}") if args.prompts_file else (lambda i: "the prompt")
    from sdclip.prepare import prompt_keys

    length, truncated = 0, []
    layouts: dict = {}  # every prompt laid out once: these layouts size the file and are the ones encoded
    for i, key in enumerate(prompt_keys(prompts, args.prompt_2, args.prompt_3)):
        try:
            prep = layouts[key] if key in layouts else layouts.setdefault(key, cond.prepare(key))
        except ValueError as exc:
            raise type(exc)(f"{where(i)}: {exc}") from None
        length = max(length, prep.slots)
        for w in (*prep.prompt.warnings, *_and_rule(prep.prompt, where(i)), *lane_warnings(prep, cond.family)):
            print(f"sdclip: warning: {where(i)}: {w}", file=sys.stderr)
        if prep.dropped:
            truncated.append({"line": i + 1, "dropped": excerpt(prep.dropped)})
    negative = args.negative
    if negative and not cond.family.reads_negative:  # said here once, as sdclip's own line; then never encoded
        print(f"sdclip: warning: --negative: {cond.family.name}'s pipeline takes no negative prompt: it is ignored "
              "(not encoded, not in --out)", file=sys.stderr)
        negative = None
    if negative is None:
        layouts.setdefault("", cond.prepare(""))  # the empty negative every batch reads
    else:
        prep = layouts[negative] if negative in layouts else layouts.setdefault(negative, cond.prepare(negative))
        for w in (*prep.prompt.warnings, *_and_rule(prep.prompt, "--negative"), *lane_warnings(prep, cond.family)):
            print(f"sdclip: warning: --negative: {w}", file=sys.stderr)
        length = max(length, prep.slots)
    _report(truncated, len(prompts), where)
    metadata = {
        "family": cond.family.name,
        "options": json.dumps(asdict(options)),
        "prompts": str(len(prompts)),
        "truncated": str(len(truncated)),
        "truncated_lines": json.dumps(truncated[:REPORTED], ensure_ascii=False),
    }
    shapes = _write(cond, prompts, negative, length, args, metadata, torch, layouts)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))
    return 0


#: characters of a truncated prompt's dropped text kept in reports (longer excerpts end in "…")
EXCERPT = 200


def excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


def _and_rule(prompt, where: str) -> list[str]:  # noqa: ANN001
    """`sdclip embed`'s rule too: several AUTOMATIC1111 AND parts are an error naming the prompt (the file holds
    one conditioning per prompt); a single part's weight (`16:9` is text `16`, weight 9) is a warning."""
    if prompt.combine != "and":
        return []
    if len(prompt.parts) > 1:
        raise ValueError(f"{where}: uses AUTOMATIC1111's AND (`a AND b`), which makes several conditionings per "
                         "prompt, and sdclip encode's file holds one per prompt; use --syntax plain for text that "
                         "says AND, or compel's .blend()/.and()")
    weight = prompt.parts[0].weight
    if weight == 1.0:
        return []
    return [f"its AUTOMATIC1111 AND weight {weight:g} (a trailing ':{weight:g}') scales guidance in A1111; "
            "diffusers has no such knob, so it is ignored"]


def _report(truncated: list[dict], total: int, where) -> None:  # noqa: ANN001
    if not truncated:
        return
    print(f"sdclip: warning: {len(truncated)} of {total} prompt(s) truncated:", file=sys.stderr)
    for t in truncated[:REPORTED]:
        print(f"  {where(t['line'] - 1)}: dropped {t['dropped']!r}", file=sys.stderr)
    if len(truncated) > REPORTED:
        print(f"  … and {len(truncated) - REPORTED} more (all counted in the file's metadata)", file=sys.stderr)


def _write(cond, prompts: list[str], negative, length: int, args, metadata: dict, torch, layouts: dict) -> dict:  # noqa: ANN001
    """Encode in batches straight into a temporary file; rename it over --out only when every row is in. The
    first batch gives the file's shapes and is then written as it is (never encoded twice); `layouts` are
    the prompts' layouts `run` made (never made again)."""
    from rich.console import Console
    from rich.progress import Progress

    from sdclip.safetensors_stream import StreamingSafetensors

    extra = {"prompt_2": args.prompt_2, "prompt_3": args.prompt_3}
    extra = {k: v for k, v in extra.items() if v is not None}
    first = _kwargs(cond.encode(prompts[: args.batch_size], negative, length=length, prepared=layouts, **extra))
    shared = shared_negative(args, len(prompts))
    specs = {k: (v.dtype, (1 if shared and k in NEGATIVE_KEYS else len(prompts), *v.shape[1:])) for k, v in first.items()}
    if shared:
        metadata = {**metadata, "negative_broadcast": "true"}
    elif args.negative is None and len(prompts) > 1:
        copies = sum(v.element_size() * v[:1].numel() for k, v in first.items() if k in NEGATIVE_KEYS) * (len(prompts) - 1)
        if copies >= SHARED_NOTE_BYTES:
            print(f"sdclip: note: {len(prompts) - 1:,} identical copies of the negative take {copies / 2**20:,.0f} MiB; "
                  "--negative-rows shared stores it once", file=sys.stderr)
    try:
        with atomic_path(args.out) as tmp:
            out = StreamingSafetensors(tmp, specs, metadata)
            try:
                console = Console(stderr=True)  # drawn in a terminal only: a log gets no blank line from it
                with Progress(transient=True, console=console,
                              disable=len(prompts) <= args.batch_size or not console.is_terminal) as bar:
                    task = bar.add_task("encoding", total=len(prompts))
                    for lo in range(0, len(prompts), args.batch_size):
                        batch = prompts[lo : lo + args.batch_size]
                        tensors = (first if lo == 0
                                   else _kwargs(cond.encode(batch, negative, length=length, prepared=layouts, **extra)))
                        for name, rows in tensors.items():
                            if not bool(torch.isfinite(rows).all()):  # the encoders check their own output; this is the assembly's
                                from sdclip.encoder.finite import dtype_advice

                                raise ValueError(
                                    f"{name} of prompts {lo + 1}–{lo + len(batch)} is not finite in {rows.dtype} "
                                    f"(--dtype {args.dtype}: {dtype_advice(rows.dtype, cli=True)}); nothing written"
                                )
                            if shared and name in NEGATIVE_KEYS:
                                if lo == 0:  # the same row for every prompt: written once
                                    out.write(name, 0, rows[:1])
                                continue
                            out.write(name, lo, rows)
                        bar.advance(task, len(batch))
            finally:
                out.close()
    except OSError as exc:
        raise OutputError(f"cannot write {args.out}: {reason(exc)}; nothing written") from None
    return {k: list(shape) for k, (_, shape) in specs.items()}


NEGATIVE_KEYS = ("negative_prompt_embeds", "negative_pooled_prompt_embeds")
SHARED_NOTE_BYTES = 64 * 2**20  #: identical negative copies past this size get a note pointing at --negative-rows shared


def shared_negative(args: argparse.Namespace, count: int) -> bool:
    """Store the negative once? Only when it is the same for every prompt (no --negative: the preset's empty
    prompt or zeros, padded to the file's one N), there are several prompts and `--negative-rows shared` asks for
    it: a 2,000-line file then holds one negative row, not 2,000 identical ones (GBs at real widths)."""
    return args.negative is None and count > 1 and getattr(args, "negative_rows", "each") == "shared"


def _kwargs(pair) -> dict:  # noqa: ANN001
    """diffusers kwargs. Its warnings (a lone AND weight, numbered within the batch) were already said once
    per prompt, with the prompt's line, by `_and_rule`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = pair.diffusers_kwargs()
    return {k: v.contiguous().cpu() for k, v in _padded_lists(kwargs).items()}


def _padded_lists(kwargs: dict) -> dict:
    """A pipeline that takes a list of [n_i, D] (Z-Image) is stored as the zero-padded [B, N, D] and a
    `…_mask` [B, N] of ones over each prompt's states: the list is `[e[m.bool()] for e, m in zip(embeds, mask)]`."""
    lists = [v for v in kwargs.values() if isinstance(v, list)]
    if not lists:
        return kwargs
    import torch

    n = max(len(t) for v in lists for t in v)  # positive and negative at one N, as every other family's file
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, list):
            out[k] = torch.stack([torch.nn.functional.pad(t, (0, 0, 0, n - len(t))) for t in v])
            out[f"{k}_mask"] = (torch.arange(n)[None, :] < torch.tensor([len(t) for t in v])[:, None]).long()
        else:
            out[k] = v
    return out
