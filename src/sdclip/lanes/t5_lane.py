"""The T5 lane: the model's SentencePiece tokens, one sequence per part (max / min / CLIP-length, see
sdclip.layout.t5), [`</s>`, pad…] as the empty prompt, no textual-inversion vectors. Torch-free; its runner
is sdclip.encoder.t5_runner."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sdclip.conventions.family import EncoderRole, Family
from sdclip.conventions.presets import Options
from sdclip.conventions.special_tokens import T5_EOS
from sdclip.lanes.base import RoleInput
from sdclip.layout.rows import Rows
from sdclip.layout.t5 import pad_t5_rows, t5_row_length, t5_rows, t5_rows_cut
from sdclip.syntax.prompt import Sequence
from sdclip.tokenizer.stream import TokenStream
from sdclip.tokenizer.t5 import tokenize_t5
from sdclip.tokenizer.t5_clean import cleaning


@dataclass(frozen=True)
class T5Lane:
    kind: str = "t5"
    tokenizer_name: str = "t5_tokenizer"
    row_limited: bool = False
    fixed_rows: bool = False
    takes_vectors: bool = False
    label: str = "T5"
    runner_path: str = "sdclip.encoder.t5_runner:T5_RUNNER"
    view: str = "pieces"
    entry: str | None = "t5"

    def check(self, options: Options, family: Family, role: EncoderRole) -> None:
        t5_row_length(options, role, 1)  # refuses a max_sequence_length diffusers refuses

    def missing_tokenizer(self, family: Family) -> str:
        return f"family {family.name} needs a T5 tokenizer ({self.tokenizer_name}=: the model's tokenizer_3 / tokenizer_2 folder)"

    def tokenize(self, seq: Sequence, text: str, given: RoleInput, embeddings: Mapping[str, int] | None,
                 spans: bool = True) -> TokenStream:
        """The whole text (or each fragment, t5_split="fragments") through SentencePiece, untruncated: the
        layout cuts it. Embedding references are left out (T5 has no textual-inversion vectors)."""
        tok = cleaning(given.tokenizer, given.role.masking.clean) if given.role.masking is not None else given.tokenizer
        return tokenize_t5(seq, tok, None, source=text, split=given.options.t5_split, spans=spans).stream

    def lay_out(self, stream: TokenStream, given: RoleInput) -> Rows:
        options, role = given.options, given.role
        eos = given.tokenizer.eos_id
        clip = given.first_block_rows() if options.t5_length == "clip" else None
        if clip is not None:
            return t5_rows_cut(stream, eos, sum(sum(k) for k in clip.keep), role.pad_id)
        length, limit = t5_row_length(options, role, len(stream) + 1)
        return t5_rows(stream, eos, length, role.pad_id, limit)

    def weighting(self, options: Options) -> str:
        return options.t5_weighting or options.weighting

    def empty_ids(self, role: EncoderRole, length: int) -> tuple[int, ...]:
        return (T5_EOS,) + (role.pad_id,) * (length - 1)

    def empty_length(self, options: Options, family: Family, index: int) -> int:
        if options.t5_length == "clip" and any(i != index for i in family.sequence_blocks[0]):
            return family.length  # the empty prompt's one row of the first block
        return t5_row_length(options, family.roles[index], 1)[0]

    def padded(self, rows: Rows, length: int, role: EncoderRole) -> Rows:
        return pad_t5_rows(rows, length, role.pad_id)

    def summary(self, rows: Rows, options: Options, role: EncoderRole, tokenizer: object) -> dict | None:
        """`ids` (content + `</s>` + pad), `weights`, `pieces` (up to `</s>`), `count` (the n of n/256),
        `length` (positions encoded), `limit` (max_sequence_length, None where never truncated), `dropped`."""
        limit = rows.length if options.t5_length == "clip" else t5_row_length(options, role, 1)[1]
        n = rows.eos[0]
        return {
            "ids": rows.ids[0],
            "weights": [round(w, 6) for w in rows.weights[0]],
            "pieces": [tokenizer.token_text(i) for i in rows.ids[0][: n + 1]],  # type: ignore[attr-defined]
            "count": rows.token_count,
            "length": rows.length,
            "limit": limit,
            "dropped": rows.dropped,
        }

    def total(self, entries: list[dict]) -> dict:
        return {"count": sum(p["count"] for p in entries), "length": max(p["length"] for p in entries),
                "limit": entries[0]["limit"], "dropped": " … ".join(p["dropped"] for p in entries if p["dropped"])}


T5_LANE = T5Lane()
