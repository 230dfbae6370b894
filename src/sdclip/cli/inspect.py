"""`sdclip inspect`: how a prompt is tokenized, weighted and laid out. No model, no torch.

Contract (keep it stable): `--json` prints the object of `sdclip.describe.describe` (its docstring lists
the fields). Scheduled prompts (`[a:b:0.5]`, `[a|b]`) are shown as in force at `--step K` of `--steps N`.
"""

from __future__ import annotations

import argparse
import json
import sys

from sdclip.cli.options import add_text_options, embedding_names, text_options, whole_number
from sdclip.conventions.family import FAMILIES, get_family
from sdclip.describe import FULL_ROWS, ROWS_SHOWN, describe, schedule_counter

EXAMPLE = "a (red:1.3) fox in a [misty] forest, highly detailed, BREAK golden hour light"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show how a prompt is tokenized, weighted and laid out (no model needed)")
    p.add_argument("text", nargs="?", help="the prompt (default: standard input when piped, else an example)")
    p.add_argument("--family", choices=tuple(FAMILIES), default="sd1", help="model family (default sd1)")
    p.add_argument("--json", action="store_true", help="print one JSON object (stable contract)")
    p.add_argument("--full", action="store_true", help=f"list every row, up to {FULL_ROWS} (default: the first {ROWS_SHOWN}, then a summary)")
    p.add_argument("--t5-tokenizer", metavar="DIR",
                   help="T5 families (SD3, Flux, Chroma, Wan, PixArt-Σ, AuraFlow): the model's T5 tokenizer (its folder with tokenizer.json or spiece.model, or "
                        "the diffusers model folder holding tokenizer_3/ or tokenizer_2/)")
    p.add_argument("--llm-tokenizer", metavar="DIR",
                   help="qwen-image / z-image / lumina2 / flux2 / flux2-klein: the model's tokenizer (its tokenizer/ folder, or the diffusers "
                        "model folder holding it; needs the llm extra)")
    p.add_argument("--steps", type=whole_number, default=20, help="sampling steps, for scheduled prompts (default 20)")
    p.add_argument("--step", type=whole_number, default=1, help="show the prompt as in force at this step (default 1)")
    p.add_argument(
        "--embedding-name",
        action="append",
        default=[],
        metavar="NAME:N",
        help="treat NAME as a textual-inversion embedding of N vectors (repeatable; no file needed)",
    )
    add_text_options(p)
    p.set_defaults(func=run)


def _text(args: argparse.Namespace) -> str:
    if args.text is not None:
        return args.text
    if not sys.stdin.isatty():
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise ValueError(f"standard input is not UTF-8 (byte {exc.start})") from None
    return EXAMPLE


def tokenizer_folder(flag: str, path: str | None) -> str | None:
    """`path` as given, if it is a folder: the tokenizer readers say only "not a folder" / "not a tokenizer
    folder" for a mistyped path, without the flag it came from."""
    import os

    if path is not None and not os.path.isdir(path):
        what = "a file, not a folder" if os.path.exists(path) else "no such folder"
        raise ValueError(f"{flag} {path}: {what} (pass the model folder or its tokenizer folder)")
    return path


def t5_tokenizer_of(path: str | None, family):  # noqa: ANN001, ANN201
    """The T5 tokenizer `inspect` needs for SD3 / Flux (none for CLIP-only families)."""
    from sdclip.lanes import needs_tokenizer

    if not needs_tokenizer(family, "t5_tokenizer"):
        return None
    if path is None:
        raise ValueError(f"--family {family.name} tokenizes with the model's own T5 tokenizer, which sdclip does not "
                         "ship: pass --t5-tokenizer DIR (the model folder, or its tokenizer_3/ or tokenizer_2/)")
    from pathlib import Path

    from sdclip.tokenizer.t5 import T5Tokenizer

    folder = Path(tokenizer_folder("--t5-tokenizer", path))
    for sub in ("tokenizer_3", "tokenizer_2", "t5_tokenizer"):
        if (folder / sub).is_dir() and any((folder / sub / f).exists() for f in ("tokenizer.json", "spiece.model")):
            folder = folder / sub
            break
    return T5Tokenizer.from_folder(folder)


def run(args: argparse.Namespace) -> int:
    from sdclip.prepare import prepare
    from sdclip.syntax import schedule
    from sdclip.tokenizer import Tokenizer

    options = text_options(args)
    family = get_family(args.family)
    tokenizer = Tokenizer.default(options.normalize)
    names = embedding_names(args.embedding_name)
    t5 = t5_tokenizer_of(args.t5_tokenizer, family)
    from sdclip.tokenizer.llm import llm_tokenizer_of

    llm = llm_tokenizer_of(tokenizer_folder("--llm-tokenizer", args.llm_tokenizer), family)
    more = {"llm_tokenizer": llm} if llm is not None else None
    if not 1 <= args.step <= args.steps:
        raise ValueError(f"--step must be within 1..--steps ({args.steps}), got {args.step}")
    text = _text(args)
    # scheduling needs a `[`: without one the schedule is the text itself, and scheduling 10 MB of AND parts
    # cost 3 s and 0.46 GB for nothing
    sched = schedule(text, args.steps, options.dialect) if "[" in text else None
    # a schedule's texts are A1111's, extra-network tags already removed: an unscheduled prompt is shown as typed
    scheduled = sched is not None and len(sched.entries) > 1
    shown = sched.at(args.step) if scheduled else text
    texts = tuple(e.text for e in sched.entries) if scheduled else ()
    note = ""
    if scheduled:
        note = (f"scheduled prompt: showing step {args.step} of {args.steps} "
                f"({len(sched.entries)} texts; --step K shows another)")
    if args.json:
        out = describe(shown, options, family, tokenizer, names, full=args.full, t5_tokenizer=t5, tokenizers=more,
                       scheduled=texts)
        if scheduled:
            out["schedule"] = {"step": args.step, "steps": args.steps, "text": shown,
                               "entries": [{"end_step": e.end_step, "text": e.text} for e in sched.entries]}
        print(json.dumps(out, ensure_ascii=False))
        return 0
    from sdclip.cli.render import render_inspect

    prepared = prepare(shown, options, family, tokenizer, names, t5_tokenizer=t5, tokenizers=more,
                       stop_after=FULL_ROWS if args.full else ROWS_SHOWN)
    count = schedule_counter(prepared, texts, options, family, tokenizer, names, t5_tokenizer=t5, tokenizers=more)
    render_inspect(shown, prepared, family, options, full=args.full, note=note, t5_tokenizer=t5, tokenizers=more,
                   count=count)
    return 0
