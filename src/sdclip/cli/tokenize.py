"""`sdclip tokenize`: ids for each stdin line. No torch.

Contract (keep it stable): one JSON array of ids (no BOS/EOS) per input line.
"""

from __future__ import annotations

import argparse
import json
import sys

from sdclip.tokenizer import NORMALIZATIONS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="ids for each stdin line, one JSON array per line (no BOS/EOS)")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default="openclip",
                   help="tokenizer normalisation (default openclip, the reference tokenizer; inspect and encode "
                        "default to their preset's: a1111 and comfy hf-slow, compel and diffusers hf-fast)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sdclip.tokenizer import Tokenizer

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
