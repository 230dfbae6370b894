"""The `sdclip` command line. `inspect` and `tokenize` never import torch; `encode` does, lazily.

Stable contracts (used by other tools; change only by adding):
- `sdclip inspect TEXT --json` → one JSON object with at least
  {"rows": [{"ids": [...], "weights": [...]}], "tokens": int, "dropped": str}
- `sdclip tokenize [--normalize M]` → for each stdin line, one JSON array of ids (no BOS/EOS).
- `sdclip encode --model PATH --prompt TEXT [--negative TEXT] [--preset P] [--clip-skip N] [--layout L]
  [--weighting W] --out FILE.safetensors`
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from sdclip.cli.encode import add_encode_parser
from sdclip.conventions.family import FAMILIES, get_family
from sdclip.layout.build import LAYOUTS
from sdclip.conventions.presets import PRESETS, Options
from sdclip.syntax.prompt import PromptSyntaxError
from sdclip.syntax import DIALECTS
from sdclip.tokenizer.clip import NORMALIZATIONS

EXAMPLE = "a (red:1.3) fox in a [misty] forest, highly detailed, BREAK golden hour light"


def _add_text_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESETS, default="a1111", help="compatibility preset (default a1111)")
    p.add_argument("--syntax", choices=DIALECTS, help="prompt dialect (default: the preset's)")
    p.add_argument("--layout", choices=LAYOUTS, help="long-prompt layout (default: the preset's)")
    p.add_argument("--normalize", choices=NORMALIZATIONS, help="tokenizer normalisation (default: the preset's)")
    p.add_argument("--stride", type=int, help="window layout: tokens between window starts (default 50)")
    p.add_argument("--comma-backtrack", type=int, help="chunk layout: comma backtrack in tokens (default 20)")
    p.add_argument("--max-rows", type=int, help="compress layout: drop lowest-weight tags to fit N rows")


def _options(args: argparse.Namespace) -> Options:
    return Options.preset(
        args.preset,
        dialect=args.syntax,
        layout=args.layout,
        normalize=args.normalize,
        stride=args.stride,
        comma_backtrack=args.comma_backtrack,
        max_rows=args.max_rows,
    )


def _embedding_names(specs: Sequence[str]) -> dict[str, int]:
    out = {}
    for spec in specs:
        name, _, n = spec.rpartition(":")
        if not name or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"sdclip: --embedding-name wants NAME:N (N ≥ 1), got {spec!r}")
        out[name] = int(n)
    return out


def capacity(tokens: int, per_row: int) -> int:
    """AUTOMATIC1111's counter denominator: n/75, n/150, …"""
    return per_row * max(1, -(-max(tokens, 1) // per_row))


def cmd_inspect(args: argparse.Namespace) -> int:
    from sdclip.prepare import prepare
    from sdclip.tokenizer.clip import Tokenizer

    options = _options(args)
    family = get_family(args.family)
    tokenizer = Tokenizer.default(options.normalize)
    prepared = prepare(args.text, options, family, tokenizer, _embedding_names(args.embedding_name))
    per_row = family.length - 2
    count = prepared.token_count
    if args.json:
        def rows_json(rows):  # noqa: ANN001
            return [{"ids": ids, "weights": [round(w, 6) for w in ws]} for ids, ws in zip(rows.ids, rows.weights)]

        out = {
            "rows": [r for part in prepared.parts for r in rows_json(part.rows[0])],
            "tokens": count,
            "capacity": capacity(count, per_row),
            "dropped": prepared.dropped,
            "family": family.name,
            "syntax": options.dialect,
            "layout": options.layout,
            "normalize": options.normalize,
            "combine": prepared.prompt.combine,
            "parts": [
                {
                    "weight": part.weight,
                    "tokens": part.rows[0].token_count,
                    "rows_by_encoder": {role.name: rows_json(rows) for role, rows in zip(family.roles, part.rows)},
                    "notes": part.rows[0].notes,
                }
                for part in prepared.parts
            ],
        }
        print(json.dumps(out, ensure_ascii=False))
        return 0
    from sdclip.cli.render import render_inspect

    render_inspect(args.text, prepared, tokenizer, family, options, capacity(count, per_row))
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from sdclip.tokenizer.clip import Tokenizer

    tokenizer = Tokenizer.default(args.normalize)
    out = sys.stdout
    batch: list[str] = []

    def flush() -> None:
        for ids in tokenizer.encode_batch(batch):
            out.write(json.dumps(ids, separators=(",", ":")))
            out.write("\n")
        batch.clear()

    for number, raw in enumerate(sys.stdin.buffer, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            flush()
            raise ValueError(f"line {number} of standard input is not UTF-8 (byte {exc.start}): {raw[:60]!r}") from None
        batch.append(line.rstrip("\r\n"))
        if len(batch) >= 4096:
            flush()
    flush()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdclip", description="Stable Diffusion's CLIP text conditioning.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="show how a prompt is tokenized, weighted and laid out (no model needed)")
    p.add_argument("text", nargs="?", default=EXAMPLE, help="the prompt (default: an example)")
    p.add_argument("--family", choices=tuple(FAMILIES), default="sd1")
    p.add_argument("--json", action="store_true", help="print one JSON object (stable contract)")
    p.add_argument(
        "--embedding-name",
        action="append",
        default=[],
        metavar="NAME:N",
        help="treat NAME as a textual-inversion embedding of N vectors (repeatable; no file needed)",
    )
    _add_text_options(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("tokenize", help="ids for each stdin line, one JSON array per line (no BOS/EOS)")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default="openclip")
    p.set_defaults(func=cmd_tokenize)

    add_encode_parser(sub, _add_text_options, _options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PromptSyntaxError as exc:
        print(f"sdclip: prompt syntax error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"sdclip: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
