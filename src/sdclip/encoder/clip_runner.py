"""The CLIP lane's torch half: `CLIPTextEncoder` at the options' layer (sdclip.encoder.model), textual-
inversion vectors numbered once per request, the pooled vector where the family reads it."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch

from sdclip.conventions.family import FAMILIES, EncoderRole, Family
from sdclip.conventions.presets import Options
from sdclip.encoder.batching import RowEncoder
from sdclip.encoder.model import CLIPTextEncoder
from sdclip.encoder.plan import Encoded, Reencoding, VectorName, plan_batch, vector_matrix
from sdclip.encoder.runner_lane import RunnerSetup
from sdclip.encoder.textual_inversion import EmbeddingLibrary
from sdclip.layout.rows import Rows
from sdclip.tokenizer.stream import TokenStream


def unprojected(enc: CLIPTextEncoder) -> CLIPTextEncoder:
    """The same encoder (shared weights) whose pooled vector skips the text projection."""
    view = copy.copy(enc)
    view._modules = dict(enc._modules)
    view._modules["projection"] = None
    return view


class ClipRunnerLane:
    kind = "clip"

    def check(self, encoder: object, role: EncoderRole, family: Family) -> None:
        if not isinstance(encoder, CLIPTextEncoder):
            raise ValueError(f"family {family.name}: encoder {role.name} must be a CLIP text encoder, got {type(encoder).__name__}")
        # a real-size encoder of another family is a mistake; test-size models are let through
        real_widths = {r.width for f in FAMILIES.values() for r in f.roles if r.kind == self.kind}
        if encoder.config.width in real_widths and encoder.config.width != role.width:
            raise ValueError(
                f"family {family.name}: encoder {role.name} should be {role.width} wide, "
                f"this one is {encoder.config.width} (wrong model for this family?)"
            )

    def reference(self, encoder: object) -> torch.Tensor | None:
        return encoder.token_embedding.weight if isinstance(encoder, CLIPTextEncoder) else None

    def runner(self, encoder: object, role: EncoderRole, index: int, family: Family, options: Options,
               setup: RunnerSetup) -> RowEncoder:
        key: tuple = (setup.fingerprint, index)
        if role.name == "clip_l" and options.clip_l_pooled == "unprojected" and encoder.projection is not None:  # type: ignore[union-attr]
            encoder, key = unprojected(encoder), key + ("unprojected",)  # type: ignore[arg-type]
        return RowEncoder(encoder, options.layer(role), pooled=index in family.pooled_roles, key=key,  # type: ignore[arg-type]
                          cache=setup.cache, batch_size=setup.batch_size)

    def encode(self, runner: RowEncoder, rows: Sequence[Rows], streams: Sequence[TokenStream],
               reencode: Sequence[Reencoding | None], table: Mapping[VectorName, int], embeddings: EmbeddingLibrary,
               role: EncoderRole, empty_ids: Sequence[int], with_empty: bool = True) -> Encoded:
        enc = runner.encoder
        batch = plan_batch(rows, [s.vectors for s in streams], reencode, table, vocab=enc.config.vocab,
                           pad_id=role.pad_id, length=len(empty_ids), empty_ids=empty_ids, with_empty=with_empty)
        weight, width = enc.token_embedding.weight, enc.config.width
        vectors = vector_matrix(table, lambda nk: embeddings.get(nk[0]).for_width(width, role.name)[nk[1]],
                                width, weight.dtype, weight.device)
        return runner.run(batch, vectors)


CLIP_RUNNER = ClipRunnerLane()
