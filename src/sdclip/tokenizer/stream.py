"""The tokenizer stage's output: ids with the weight, source span and row breaks of each token."""

from __future__ import annotations

from dataclasses import dataclass, field

from sdclip.conventions.special_tokens import CLIP_BOS as BOS  #: <|startoftext|>
from sdclip.conventions.special_tokens import CLIP_EOS as EOS  #: <|endoftext|>
VOCAB_SIZE = 49408
#: ids from here on name textual-inversion vectors of one request (see TokenStream.vectors)
FIRST_VECTOR_ID = VOCAB_SIZE


@dataclass(frozen=True)
class TokenStream:
    """Columnar tokens of one Sequence, without BOS/EOS. Frozen: built once by `tokenize`, then only read.

    - ids[i] < VOCAB_SIZE is a vocabulary token; ids[i] >= FIRST_VECTOR_ID is a textual-inversion vector
      slot, described by vectors[ids[i]] = (embedding name, vector index).
    - spans[i] = (start, end) character span in the source prompt.
    - breaks: token indices before which a new row must start (BREAK); may equal len(ids).
    - runs: (start, length) of each embedding's vector run: layouts never split one.
    - fragments[i]: index of the syntax fragment token i came from (ComfyUI fills rows segment by segment).
    """

    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    breaks: list[int] = field(default_factory=list)
    vectors: dict[int, tuple[str, int]] = field(default_factory=dict)
    runs: list[tuple[int, int]] = field(default_factory=list)
    fragments: list[int] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids)


class SpansNeeded(Exception):
    """Raised where a stream built without spans (`NO_SPANS`) is asked for one: its caller lays the text out
    again with spans. Not a ValueError: it never means the text itself is bad."""


class _NoSpans:
    """A stream's spans where its caller reads only the rows' sizes (the embed scan's check): what the
    tokenizer adds is not kept, and any read raises SpansNeeded, so a layout reporting dropped text (the
    only layout step that reads spans) sends the text back to the full path instead of reading nothing."""

    def append(self, span: tuple[int, int]) -> None:
        pass

    def extend(self, spans: object) -> None:
        pass

    def __getitem__(self, index: object) -> tuple[int, int]:
        raise SpansNeeded

    def __iter__(self):  # noqa: ANN204
        raise SpansNeeded

    def __len__(self) -> int:
        raise SpansNeeded

    def __repr__(self) -> str:
        return "NO_SPANS"


#: the spans of every stream built with spans=False (it holds nothing, so one object serves all)
NO_SPANS: list[tuple[int, int]] = _NoSpans()  # type: ignore[assignment]
