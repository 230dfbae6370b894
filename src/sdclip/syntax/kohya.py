"""kohya-ss/sd-scripts `--weighted_captions`: the caption syntax its trainers read (emphasis only).

Reproduces `TokenizeStrategy._get_weighted_input_ids.parse_prompt_attention` in `library/strategy_base.py` of
sd-scripts at commit 48d368fa557731ad0488c07304dfeba8c07910eb (2026-02-16), which every trainer's
`tokenize_with_weights` uses (train_network.py, sdxl_train.py, fine_tune.py, train_db.py):

- `(x)` ×1.1, `[x]` ÷1.1, `(x:w)` ×w, nesting multiplies; multipliers apply to a run in the order its brackets
  close, unclosed `(` then `[` apply to the end, a closer with nothing open is literal text — as A1111's old
  parser, which sd-scripts copied.
- Unlike today's A1111: the weight must touch its colon and closer — `(x:1.2)` is ×1.2 but `(x: 1.2)` is the
  text "x: 1.2" at ×1.1 (sd-scripts' regex `:([+-]?[.\\d]+)\\)` has no `\\s*`).
- No `AND`, no `BREAK`, no scheduling, no extra networks: `a AND b`, `BREAK`, `[a:b:5]`, `<lora:x:1>` are
  caption text (`[a:b:5]` is the text "a:b:5" at ÷1.1).
- `\\(` `\\)` `\\[` `\\]` `\\\\` are literals; a lone backslash is dropped.
- Runs of identical weight merge *before* tokenizing (sd-scripts then tokenizes each run alone), the empty
  run a lone backslash leaves included: `(x)(\\:2)(y)` keeps "x" and "y" apart (the empty run between them
  weighs 2), so they are tokenized separately, exactly as there.

Where sdclip refuses what sd-scripts accepts: a weight that is not a number (`(x:1.2.3)`, which makes
sd-scripts raise ValueError mid-training), weights beyond ±100 or non-finite (every dialect refuses them),
brackets nested deeper than 256. Each is a PromptSyntaxError with a caret.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from sdclip.syntax.prompt import MAX_WEIGHT, ParseOptions, Part, Prompt
from sdclip.syntax._common import MAX_DEPTH, Piece, checked, error, split_embeddings, to_sequence

ROUND = 1.1
SQUARE = 1 / 1.1

#: sd-scripts' `TokenizeStrategy._re_attention`, alternative for alternative (group 1: the weight)
_ATTENTION = re.compile(
    r"""\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:([+-]?[.\d]+)\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)


def attention(text: str) -> list[Piece]:
    """sd-scripts' parse_prompt_attention → pieces with source spans (empty runs kept until merged)."""
    pieces: list[Piece] = []
    rounds: list[tuple[int, int]] = []  # (first piece, source position) of each open bracket
    squares: list[tuple[int, int]] = []

    def scale(start: int, m: float) -> None:
        for p in pieces[start:]:
            p.weight *= m

    for m in _ATTENTION.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            pieces.append(Piece(tok[1:], 1.0, m.start(), m.end()))
        elif tok == "(" or tok == "[":
            (rounds if tok == "(" else squares).append((len(pieces), m.start()))
            if len(rounds) + len(squares) > MAX_DEPTH:
                raise error(f"brackets nested deeper than {MAX_DEPTH}", text, m.start())
        elif weight is not None and rounds:
            start, at = rounds.pop()
            try:
                w = float(weight)
            except ValueError:
                raise error(f"weight {weight!r} is not a number", text, m.start(1)) from None
            if not -MAX_WEIGHT <= w <= MAX_WEIGHT:  # also NaN / inf (a 400-digit weight)
                checked(w, text[at + 1 : m.start()], text, at)
            scale(start, w)
        elif tok == ")" and rounds:
            scale(rounds.pop()[0], ROUND)
        elif tok == "]" and squares:
            scale(squares.pop()[0], SQUARE)
        else:
            pieces.append(Piece(tok, 1.0, m.start(), m.end()))
    for start, _ in rounds:
        scale(start, ROUND)
    for start, _ in squares:
        scale(start, SQUARE)
    return pieces


def merge_runs(pieces: list[Piece]) -> list[Piece]:
    """sd-scripts' "merge runs of identical weights": neighbours of bit-equal weight join, empty runs taking
    part (so an empty run of another weight keeps its neighbours apart); empty runs are dropped after."""
    out: list[Piece] = []
    for p in pieces:
        if out and out[-1].weight == p.weight:
            out[-1].text += p.text
            out[-1].end = max(out[-1].end, p.end)
        else:
            out.append(Piece(p.text, p.weight, p.start, p.end))
    return [p for p in out if p.text]


def parse(text: str, embeddings: Collection[str] = (), opts: ParseOptions = ParseOptions()) -> Prompt:
    """A caption as sd-scripts' `--weighted_captions` reads it → one part ("single": AND is text there).

    Names in `embeddings` become references where they stand as whole words (embedding_match "word"; with
    "token-ids" the tokenizer stage finds them)."""
    pieces = merge_runs(attention(text))
    if opts.embedding_match == "word":
        pieces = split_embeddings(pieces, embeddings)
    return Prompt((Part(to_sequence(pieces, text)),), "single", True, text)
