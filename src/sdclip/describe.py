"""The JSON view of `prepare`: what `sdclip inspect --json` prints and the web API's /api/inspect answers.

One function, so the command line and the page can never disagree. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping

from sdclip.conventions.family import Family
from sdclip.conventions.presets import Options
from sdclip.layout.rows import Rows
from sdclip.prepare import prepare
from sdclip.tokenizer import Tokenizer


def capacity(tokens: int, per_row: int) -> int:
    """AUTOMATIC1111's counter denominator: n/75, n/150, …"""
    return per_row * max(1, -(-max(tokens, 1) // per_row))


def _rows_json(rows: Rows) -> list[dict]:
    return [{"ids": ids, "weights": [round(w, 6) for w in ws]} for ids, ws in zip(rows.ids, rows.weights)]


def describe(
    text: str,
    options: Options,
    family: Family,
    tokenizer: Tokenizer,
    embeddings: Mapping[str, int] | None = None,
) -> dict:
    """The stable inspect object (see the README's contracts) for one prompt."""
    prepared = prepare(text, options, family, tokenizer, embeddings)
    per_row = family.length - 2
    count = prepared.token_count
    return {
        "rows": [r for part in prepared.parts for r in _rows_json(part.rows[0])],
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
                "rows_by_encoder": {role.name: _rows_json(rows) for role, rows in zip(family.roles, part.rows)},
                "notes": part.rows[0].notes,
            }
            for part in prepared.parts
        ],
    }
