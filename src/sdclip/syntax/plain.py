"""Plain text: no syntax at all — one fragment at weight 1 (embedding names still split out)."""

from __future__ import annotations

from collections.abc import Collection

from sdclip.syntax.prompt import Part, Prompt
from sdclip.syntax._common import Piece, split_embeddings, to_sequence


def parse(text: str, embeddings: Collection[str] = ()) -> Prompt:
    """The whole text as one weight-1 run; names in `embeddings` (whole words) become references."""
    pieces = split_embeddings([Piece(text, 1.0, 0, len(text))], embeddings)
    return Prompt((Part(to_sequence(pieces, text)),), "single", True, text)
