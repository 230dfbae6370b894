"""The row cache keys textual-inversion slots by their vectors' content: replacing an embedding's vectors
under the same name (`EmbeddingLibrary.add(replace=True)`) never serves a row encoded with the old ones."""

from __future__ import annotations

import torch

from sdclip.encoder.textual_inversion import Embedding
from tiny_conditioners import encoders_of, make


def _embedding(seed: int) -> Embedding:
    width = encoders_of("sd1")[0].config.width
    return Embedding("zorbify", {"any": torch.randn(2, width, generator=torch.Generator().manual_seed(seed))})


def test_replaced_vectors_are_encoded_again():
    cond = make("sd1")
    cond.embeddings.add(_embedding(1))
    before = cond("a zorbify fox").positive.embeds
    cond.embeddings.add(_embedding(2), replace=True)
    after = cond("a zorbify fox").positive.embeds
    fresh = make("sd1", embeddings=[_embedding(2)])("a zorbify fox").positive.embeds
    torch.testing.assert_close(after, fresh)
    assert not torch.allclose(before, after)


def test_same_vectors_still_hit_the_cache():
    cond = make("sd1", embeddings=[_embedding(1)])
    cond("a zorbify fox")
    hits = cond.cache.stats.hits
    cond.embeddings.add(_embedding(1), replace=True)  # the same values again: nothing to re-encode
    cond("a zorbify fox")
    assert cond.cache.stats.hits > hits and cond.cache.stats.misses == len(cond.cache)
