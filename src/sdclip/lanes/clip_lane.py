"""The CLIP lane: exact BPE tokens, rows of 77 (Long-CLIP 248) slots in one of five layouts, [BOS, EOS, pad…]
as the empty prompt. Torch-free; its runner is sdclip.encoder.clip_runner."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sdclip.conventions.family import EncoderRole, Family
from sdclip.conventions.presets import Options
from sdclip.conventions.special_tokens import CLIP_BOS, CLIP_EOS
from sdclip.lanes.base import RoleInput
from sdclip.layout import LONG_CLIP_LENGTH, layout
from sdclip.layout.rows import Rows
from sdclip.layout.spec import spec_for
from sdclip.syntax.prompt import Sequence
from sdclip.tokenizer.clip import tokenize
from sdclip.tokenizer.stream import TokenStream
from sdclip.tokenizer.weight_norm import normalize_token_weights


@dataclass(frozen=True)
class ClipLane:
    kind: str = "clip"
    tokenizer_name: str = "tokenizer"
    row_limited: bool = True
    fixed_rows: bool = True
    takes_vectors: bool = True
    label: str = ""
    runner_path: str = "sdclip.encoder.clip_runner:CLIP_RUNNER"
    view: str = "rows"
    entry: str | None = None

    def check(self, options: Options, family: Family, role: EncoderRole) -> None:
        if options.layout == "long" and family.length != LONG_CLIP_LENGTH:
            raise ValueError(
                f"layout 'long' is Long-CLIP's {LONG_CLIP_LENGTH} positions; a {family.name} model has "
                f"{family.length}: use family 'longclip', or layout truncate / chunk / window / compress"
            )

    def missing_tokenizer(self, family: Family) -> str:
        return f"family {family.name} needs a CLIP tokenizer ({self.tokenizer_name}=)"

    def tokenize(self, seq: Sequence, text: str, given: RoleInput, embeddings: Mapping[str, int] | None,
                 spans: bool = True) -> TokenStream:
        """Each fragment tokenized on its own (AUTOMATIC1111), embeddings found as the options say, then the
        token weights normalised (ComfyUI_ADV_CLIP_emb)."""
        options = given.options
        stream = tokenize(seq, given.tokenizer, embeddings, source=text, embedding_match=options.embedding_match,
                          spans=spans)
        return normalize_token_weights(stream, options.token_normalization)

    def lay_out(self, stream: TokenStream, given: RoleInput) -> Rows:
        spec = spec_for(given.options, given.family.length, given.role.pad_id, given.left)
        return layout(stream, spec)

    def weighting(self, options: Options) -> str:
        return options.weighting

    def empty_ids(self, role: EncoderRole, length: int) -> tuple[int, ...]:
        return (CLIP_BOS, CLIP_EOS) + (role.pad_id,) * (length - 2)

    def empty_length(self, options: Options, family: Family, index: int) -> int:
        return family.length

    def padded(self, rows: Rows, length: int, role: EncoderRole) -> Rows:
        if length != rows.length:
            raise ValueError(f"CLIP rows are {rows.length} slots, never {length}")
        return rows

    def summary(self, rows: Rows, options: Options, role: EncoderRole, tokenizer: object) -> dict | None:
        return None  # CLIP rows are the inspect object's own `rows`

    def total(self, entries: list[dict]) -> dict:
        return {}


CLIP_LANE = ClipLane()
