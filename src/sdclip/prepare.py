"""Text → rows, without a model: syntax → tokenizer → layout for every part of a prompt.

Shared by `sdclip inspect` (no torch) and the Conditioner, so both always agree on what gets encoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sdclip.conventions.family import Family
from sdclip.layout import LONG_CLIP_LENGTH, RowLimitError, layout
from sdclip.conventions.presets import Options
from sdclip.syntax.prompt import Prompt, Sequence
from sdclip.layout.rows import Rows
from sdclip.syntax import parse
from sdclip.tokenizer.clip import Tokenizer, tokenize
from sdclip.tokenizer.stream import TokenStream


@dataclass(frozen=True)
class PreparedPart:
    """One sub-prompt: its weight, tokens and rows (one Rows per encoder: pad ids differ)."""

    weight: float
    stream: TokenStream
    rows: tuple[Rows, ...]
    sequence: Sequence


@dataclass(frozen=True)
class Prepared:
    prompt: Prompt
    parts: tuple[PreparedPart, ...]

    @property
    def token_count(self) -> int:
        return sum(p.rows[0].token_count for p in self.parts)

    @property
    def slots(self) -> int:
        """Slots of this text's conditioning: its parts side by side for compel .and(), else the longest."""
        sizes = [sum(sum(row) for row in part.rows[0].keep) for part in self.parts]
        return sum(sizes) if self.prompt.combine == "concat" else max(sizes)

    @property
    def dropped(self) -> str:
        return " … ".join(p.rows[0].dropped for p in self.parts if p.rows[0].dropped)


def prepare(
    text: str,
    options: Options,
    family: Family,
    tokenizer: Tokenizer,
    embeddings: Mapping[str, int] | None = None,
    *,
    row_limit: int | None = None,
) -> Prepared:
    """Parse `text` in the options' dialect and lay every part out for each of the family's encoders.

    row_limit: refuse a text that needs more rows than this (all parts together), as soon as its layout
    passes it — never after building them all (RowLimitError)."""
    if options.layout == "long" and family.length != LONG_CLIP_LENGTH:
        raise ValueError(
            f"layout 'long' is Long-CLIP's {LONG_CLIP_LENGTH} positions; a {family.name} model has {family.length}: "
            "use family 'longclip', or layout truncate / chunk / window / compress"
        )
    names = tuple(embeddings or ())
    prompt = parse(text, options.dialect, embeddings=names)
    parts: list[PreparedPart] = []
    used = 0
    for part in prompt.parts:
        left = None if row_limit is None else row_limit - used
        if left is not None and left < 1:
            raise RowLimitError(
                f"this prompt needs more than row_limit={row_limit} rows of {family.length} slots "
                f"({len(prompt.parts)} AND parts): use fewer parts, or raise row_limit (--row-limit)"
            )
        stream = tokenize(part.sequence, tokenizer, embeddings, source=text)
        rows = tuple(layout(stream, options.layout_spec(family.length, role.pad_id, left)) for role in family.roles)
        used += len(rows[0])
        parts.append(PreparedPart(part.weight, stream, rows, part.sequence))
    return Prepared(prompt, tuple(parts))
