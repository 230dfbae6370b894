"""`sdclip inspect`: how a prompt is tokenized, weighted and laid out. No model, no torch.

Contract (keep it stable): `--json` prints the object of `sdclip.describe.describe`.
"""

from __future__ import annotations

import argparse
import json

from sdclip.cli.options import add_text_options, embedding_names, text_options
from sdclip.conventions.family import FAMILIES, get_family
from sdclip.describe import capacity, describe

EXAMPLE = "a (red:1.3) fox in a [misty] forest, highly detailed, BREAK golden hour light"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show how a prompt is tokenized, weighted and laid out (no model needed)")
    p.add_argument("text", nargs="?", default=EXAMPLE, help="the prompt (default: an example)")
    p.add_argument("--family", choices=tuple(FAMILIES), default="sd1", help="model family (default sd1)")
    p.add_argument("--json", action="store_true", help="print one JSON object (stable contract)")
    p.add_argument(
        "--embedding-name",
        action="append",
        default=[],
        metavar="NAME:N",
        help="treat NAME as a textual-inversion embedding of N vectors (repeatable; no file needed)",
    )
    add_text_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sdclip.prepare import prepare
    from sdclip.tokenizer import Tokenizer

    options = text_options(args)
    family = get_family(args.family)
    tokenizer = Tokenizer.default(options.normalize)
    names = embedding_names(args.embedding_name)
    if args.json:
        print(json.dumps(describe(args.text, options, family, tokenizer, names), ensure_ascii=False))
        return 0
    from sdclip.cli.render import render_inspect

    prepared = prepare(args.text, options, family, tokenizer, names)
    render_inspect(args.text, prepared, tokenizer, family, options, capacity(prepared.token_count, family.length - 2))
    return 0
