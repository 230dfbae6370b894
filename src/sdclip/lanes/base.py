"""What a lane is (the protocol every encoder kind implements) and what it is given. Torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sdclip.conventions.family import EncoderRole, Family
from sdclip.conventions.presets import Options
from sdclip.layout.rows import Rows
from sdclip.syntax.prompt import Sequence as TextSequence
from sdclip.tokenizer.stream import TokenStream


@dataclass(frozen=True)
class RoleInput:
    """What a lane gets to lay out one part for one role of a family."""

    options: Options
    family: Family
    role: EncoderRole
    index: int  #: the role's index in `family.roles`
    tokenizer: Any  #: this kind's tokenizer (the one `Lane.tokenizer_name` names)
    left: int | None = None  #: rows still allowed under the caller's row limit (None: no limit)
    earlier: tuple[Rows, ...] = ()  #: this part's rows of the roles before this one, in role order

    def first_block_rows(self) -> Rows | None:
        """Rows of the first token block's first role before this one (SD3's CLIP-L rows for its T5), or None
        where this role itself opens the first block (Flux's T5)."""
        return next((self.earlier[i] for i in self.family.sequence_blocks[0] if i < len(self.earlier)), None)


def tokenizers_by_name(tokenizer: Any = None, t5_tokenizer: Any = None,  # noqa: ANN401
                       tokenizers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The tokenizers a caller was given, by the name each lane reads (`Lane.tokenizer_name`): the two keyword
    arguments every entrance has (`tokenizer`, `t5_tokenizer`) and the later kinds' (`llm_tokenizer`)."""
    return {"tokenizer": tokenizer, "t5_tokenizer": t5_tokenizer, **(tokenizers or {})}


class Lane(Protocol):
    """The torch-free half of an encoder kind."""

    kind: str
    #: the tokenizer it reads, as `prepare` names it (`tokenizer`, `t5_tokenizer`)
    tokenizer_name: str
    #: its rows count against the caller's row limit (rows of family.length slots)
    row_limited: bool
    #: every row is exactly family.length slots (what bulk shards of fixed size need)
    fixed_rows: bool
    #: textual-inversion vectors reach it (the embedding files' keys are its roles' names)
    takes_vectors: bool
    #: prefix of what `Prepared.dropped` reports for this lane ("" for the family's main rows)
    label: str
    #: "module:attribute" of the torch half (sdclip.encoder.runner_lane.RunnerLane)
    runner_path: str
    #: how inspect draws its rows: "rows" (slot by slot with BOS/EOS and AUTOMATIC1111's n/75 counter: CLIP),
    #: "pieces" (one line of the tokenizer's pieces per part, n/limit: T5), "template" (its own drawing,
    #: sdclip.cli.render_lanes: an LLM's template greyed); the inspect object's `capacity` and `counter`
    #: follow it (rows × 75, or the lane's limit)
    view: str
    #: the inspect object's field holding this lane's `summary` per part and its `total` at the top, read
    #: with the tokenizer `tokenizer_name` names (T5: the stable `t5` field); None where the lane has no such
    #: field (CLIP: its rows are the object's own `rows`; an LLM's entry is keyed by its role's name)
    entry: str | None

    def check(self, options: Options, family: Family, role: EncoderRole) -> None:
        """Refuse options this lane cannot honour for this role, before any text is read (one line)."""

    def missing_tokenizer(self, family: Family) -> str:
        """The one-line error for a family of this kind prepared without its tokenizer."""

    def tokenize(self, seq: TextSequence, text: str, given: RoleInput, embeddings: Mapping[str, int] | None,
                 spans: bool = True) -> TokenStream:
        """One part's Sequence → this kind's TokenStream (weights and source spans kept). spans=False: a caller
        that reads only the rows' sizes (the embed scan): a lane may leave the spans out (`NO_SPANS`), all
        else the same."""

    def lay_out(self, stream: TokenStream, given: RoleInput) -> Rows:
        """A TokenStream → this role's rows (its layout registry)."""

    def weighting(self, options: Options) -> str:
        """The weighting formula this lane's rows use (sdclip.assemble.weighting)."""

    def empty_ids(self, role: EncoderRole, length: int) -> tuple[int, ...]:
        """The empty prompt's row of `length` positions."""

    def empty_length(self, options: Options, family: Family, index: int) -> int:
        """The empty row's length for a request with no text at all."""

    def padded(self, rows: Rows, length: int, role: EncoderRole) -> Rows:
        """Rows extended to `length` positions (rows of one request share one length)."""

    def summary(self, rows: Rows, options: Options, role: EncoderRole, tokenizer: Any) -> dict | None:
        """A part's entry of its own in the inspect object (T5: `t5`, its sequence with pieces and n/limit);
        None where the lane's rows are the object's main `rows` (CLIP)."""

    def total(self, entries: list[dict]) -> dict:
        """The top-level entry over every part's `summary`."""
