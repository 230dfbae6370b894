"""Plain text: no syntax at all — one fragment at weight 1 (embedding names still split out)."""

from __future__ import annotations

from collections.abc import Collection

from sdclip.syntax.prompt import ParseOptions, Part, Prompt
from sdclip.syntax._common import Piece, split_embeddings, to_sequence


def parse(text: str, embeddings: Collection[str] = (), opts: ParseOptions = ParseOptions()) -> Prompt:
    """The whole text as one weight-1 run; names in `embeddings` (whole words) become references
    (with embedding_match "token-ids" the tokenizer stage matches them instead)."""
    pieces = [Piece(text, 1.0, 0, len(text))]
    if opts.embedding_match == "word":
        pieces = split_embeddings(pieces, embeddings)
    return Prompt((Part(to_sequence(pieces, text)),), "single", True, text)
