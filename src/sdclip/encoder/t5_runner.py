"""The T5 lane's torch half: `T5Encoder` (sdclip.encoder.t5) through `T5RowEncoder`, or `ZeroRows` where
the pipeline has no T5 (diffusers' zeros for SD3 without text_encoder_3). No pooled vector, no layer
choice, no textual-inversion vectors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from sdclip.conventions.family import EncoderRole, Family
from sdclip.conventions.presets import Options
from sdclip.encoder.batching import RowEncoder, T5RowEncoder, ZeroRows
from sdclip.encoder.plan import Encoded, Reencoding, VectorName, plan_batch
from sdclip.encoder.runner_lane import RunnerSetup
from sdclip.encoder.t5 import T5Encoder
from sdclip.encoder.textual_inversion import EmbeddingLibrary
from sdclip.layout.rows import Rows
from sdclip.tokenizer.stream import TokenStream


class T5RunnerLane:
    kind = "t5"

    def check(self, encoder: object, role: EncoderRole, family: Family) -> None:
        if encoder is not None and not isinstance(encoder, T5Encoder):
            raise ValueError(f"family {family.name}: encoder {role.name} must be a T5 encoder, got {type(encoder).__name__}")

    def reference(self, encoder: object) -> torch.Tensor | None:
        return encoder.final_norm if isinstance(encoder, T5Encoder) else None

    def runner(self, encoder: object, role: EncoderRole, index: int, family: Family, options: Options,
               setup: RunnerSetup) -> RowEncoder:
        if encoder is None:
            return ZeroRows(setup.missing_width or role.width, setup.dtype, setup.device)
        if role.masking is not None:  # the T5-only families: the tokenizer's mask goes to T5
            from sdclip.encoder.t5_masked import MaskedT5RowEncoder

            return MaskedT5RowEncoder(encoder, role.masking, pad_id=role.pad_id, key=(setup.fingerprint, index),
                                      cache=setup.cache, batch_size=max(1, setup.batch_size // 4))
        return T5RowEncoder(encoder, key=(setup.fingerprint, index), cache=setup.cache,
                            batch_size=max(1, setup.batch_size // 4))

    def encode(self, runner: RowEncoder, rows: Sequence[Rows], streams: Sequence[TokenStream],
               reencode: Sequence[Reencoding | None], table: Mapping[VectorName, int], embeddings: EmbeddingLibrary,
               role: EncoderRole, empty_ids: Sequence[int], with_empty: bool = True) -> Encoded:
        batch = plan_batch(rows, [{} for _ in rows], reencode, {}, vocab=1 << 30, pad_id=role.pad_id,
                           length=len(empty_ids), empty_ids=empty_ids, with_empty=with_empty)
        return runner.run(batch)


T5_RUNNER = T5RunnerLane()
