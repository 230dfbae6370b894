"""The torch half of an encoder kind's lane (sdclip.lanes names it by a dotted path): which encoder type a
role takes, the runner that turns its rows into hidden states (and pooled vectors), and one planned batch of
a request's rows through it.

`RunnerSetup` is what every runner of a Conditioner shares: the model's fingerprint and the row cache (their
keys), the batch size, and where a stand-in for a missing encoder lives (SD3 without its T5: zeros).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from sdclip.conventions.family import EncoderRole, Family
from sdclip.conventions.presets import Options
from sdclip.encoder.batching import RowCache, RowEncoder
from sdclip.encoder.plan import Encoded, Reencoding, VectorName
from sdclip.encoder.textual_inversion import EmbeddingLibrary
from sdclip.layout.rows import Rows
from sdclip.tokenizer.stream import TokenStream


@dataclass(frozen=True)
class RunnerSetup:
    fingerprint: str
    cache: RowCache
    batch_size: int
    dtype: torch.dtype  #: of the model's encoders (a stand-in's zeros take it)
    device: torch.device
    missing_width: int | None = None  #: width of a stand-in for a missing encoder (None: the role's)


class RunnerLane(Protocol):
    def check(self, encoder: object, role: EncoderRole, family: Family) -> None:
        """Refuse an encoder that does not fit the role (wrong type, a real model of another width)."""

    def reference(self, encoder: object) -> torch.Tensor | None:
        """A tensor of the encoder's compute dtype and device (None for a missing one)."""

    def runner(self, encoder: object, role: EncoderRole, index: int, family: Family, options: Options,
               setup: RunnerSetup) -> RowEncoder:
        """The runner of this role, keyed by (fingerprint, index) in the shared row cache."""

    def encode(self, runner: RowEncoder, rows: Sequence[Rows], streams: Sequence[TokenStream],
               reencode: Sequence[Reencoding | None], table: Mapping[VectorName, int], embeddings: EmbeddingLibrary,
               role: EncoderRole, empty_ids: Sequence[int], with_empty: bool = True) -> Encoded:
        """Every part's rows (and re-encodings, and the empty row where `with_empty`) in one planned batch."""
