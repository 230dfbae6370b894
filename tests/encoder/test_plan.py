"""The encoder plan on its own: one batch per encoder, the slot table, and reading the result by part."""

from __future__ import annotations

import torch

from sdclip.assemble.weighting import CompelPlan
from sdclip.conventions.family import get_family
from sdclip.conventions.presets import Options
from sdclip.encoder.plan import Encoded, plan_batch, vector_table
from sdclip.prepare import prepare
from sdclip.tokenizer import Tokenizer
from sdclip.tokenizer.stream import BOS, EOS, FIRST_VECTOR_ID

TOK = Tokenizer.default("hf-slow")


def _parts(*texts: str, embeddings=None):  # noqa: ANN001, ANN202
    fam, opts = get_family("sd1"), Options.preset("a1111")
    return [part for t in texts for part in prepare(t, opts, fam, TOK, embeddings).parts]


def test_rows_then_reencodings_then_the_empty_row() -> None:
    a, b = _parts("a red fox BREAK a forest", "a cat")
    keep_all = torch.ones((1, 2, 77), dtype=torch.int64)
    masked = keep_all.clone()
    masked[0, 1, 2] = 0  # one re-encoding; it masks a slot of row 2 only
    plan = plan_batch([a.rows[0], b.rows[0]], [{}, {}], [CompelPlan((0,), (0.5,), masked), None], {},
                      vocab=49408, pad_id=EOS, length=77)
    assert [(s.start, s.count, s.masks) for s in plan.parts] == [(0, 2, 1), (4, 1, 0)]
    assert plan.ids[2] == plan.ids[0] and plan.masks[2] is None  # nothing masked in row 1: dedupes with it
    assert plan.masks[3] is not None and plan.masks[3][2] == 0
    assert plan.empty == 5 and plan.ids[5] == (BOS, EOS) + (EOS,) * 75
    hidden = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1).expand(6, 77, 3)
    out = Encoded(hidden, None, plan)
    assert out.rows(0)[:, 0, 0].tolist() == [0, 1] and out.rows(1)[:, 0, 0].tolist() == [4]
    assert out.reencoded(0).shape == (1, 2, 77, 3) and out.reencoded(0)[0, :, 0, 0].tolist() == [2, 3]
    assert out.reencoded(1) is None and out.empty[0, 0].item() == 5


def test_textual_inversion_vectors_are_numbered_once_per_request() -> None:
    """Two texts naming the same embedding share its numbers; the encoder reads ids past its table as
    rows of the request's vector matrix, named so that cache keys outlive the numbering."""
    a, b = _parts("a zqstyle fox", "zqstyle", embeddings={"zqstyle": 2})
    table = vector_table([a.stream.vectors, b.stream.vectors])
    assert table == {("zqstyle", 0): 0, ("zqstyle", 1): 1}
    plan = plan_batch([a.rows[0], b.rows[0]], [a.stream.vectors, b.stream.vectors], [None, None], table,
                      vocab=1000, pad_id=EOS, length=77)
    assert plan.slots == {1000: ("zqstyle", 0), 1001: ("zqstyle", 1)}
    assert 1000 in plan.ids[0] and 1000 in plan.ids[1] and all(t < FIRST_VECTOR_ID for t in plan.ids[0])
