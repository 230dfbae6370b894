"""Stage 2: text → a TokenStream (ids, weights, character spans, breaks, vector slots), per encoder."""

from sdclip.tokenizer.clip import NORMALIZATIONS, Tokenizer, UnknownEmbeddingError, tokenize
from sdclip.tokenizer.stream import TokenStream

__all__ = ["NORMALIZATIONS", "TokenStream", "Tokenizer", "UnknownEmbeddingError", "tokenize"]
