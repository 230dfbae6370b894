"""What every layout shares: rendering rows of token indices with BOS/EOS/pad, and reading a stream's
embedding runs, BREAK segments and dropped text."""

from __future__ import annotations

from sdclip.layout.rows import Rows
from sdclip.layout.spec import LayoutSpec, RowLimitError
from sdclip.tokenizer.stream import BOS, EOS, TokenStream


class RowBuilder:
    """Accumulates rows of token indices and renders them with BOS/EOS/pad; `finish` freezes them."""

    def __init__(self, stream: TokenStream, spec: LayoutSpec):
        self.stream = stream
        self.spec = spec
        self.ids: list[list[int]] = []
        self.weights: list[list[float]] = []
        self.tokens: list[list[int]] = []
        self.keep: list[list[bool]] = []
        self.eos: list[int] = []

    def __len__(self) -> int:
        return len(self.ids)

    def emit(self, members: list[int] | range, keep: list[bool] | None = None) -> None:
        """One row of the stream's tokens at `members` (a range: a slice of the stream, copied at C speed)."""
        spec, s = self.spec, self.stream
        if len(members) > spec.capacity:
            raise AssertionError("row overflow")  # internal invariant
        if spec.row_limit is not None and len(self.ids) >= spec.row_limit:
            raise RowLimitError(
                f"this prompt needs more than row_limit={spec.row_limit} rows of {spec.length} slots "
                f"({len(s)} tokens): use layout 'truncate' or 'compress', or raise row_limit (--row-limit)"
            )
        pad = spec.capacity - len(members)
        if isinstance(members, range) and members.step == 1:
            ids, weights = s.ids[members.start:members.stop], s.weights[members.start:members.stop]
        else:
            ids, weights = [s.ids[i] for i in members], [s.weights[i] for i in members]
        self.ids.append([BOS, *ids, EOS] + [spec.pad_id] * pad)
        self.weights.append([1.0, *weights] + [1.0] * (pad + 1))
        self.tokens.append([-1, *members] + [-1] * (pad + 1))
        self.keep.append(keep if keep is not None else [True] * spec.length)
        self.eos.append(len(members) + 1)

    def finish(self, token_count: int, dropped: str = "", notes: tuple[str, ...] = ()) -> Rows:
        return Rows(self.ids, self.weights, self.tokens, self.keep, self.eos, self.spec.length, token_count, dropped, notes)


def dropped_text(stream: TokenStream, indices: list[int]) -> str:
    """The source text of dropped tokens, contiguous runs joined by ' … '."""
    if not indices:
        return ""
    parts, run_start, prev = [], indices[0], indices[0]
    for i in indices[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        lo, hi = stream.spans[run_start][0], stream.spans[prev][1]
        parts.append(stream.source[lo:hi] if stream.source else "")
        if i is not None:
            run_start = prev = i
    return " … ".join(p.strip() for p in parts if p.strip())


def run_lengths(stream: TokenStream) -> dict[int, int]:
    """start index → length of each embedding vector run (layouts never split one)."""
    return {start: length for start, length in stream.runs}


def run_interiors(stream: TokenStream) -> dict[int, int]:
    """index strictly inside an embedding run → the run's start: one dict look-up per cut, where scanning
    every run per row made window / compel layouts quadratic in the embeddings of a prompt."""
    inside: dict[int, int] = {}
    for start, length in stream.runs:
        for i in range(start + 1, start + length):
            inside[i] = start
    return inside


def segments(stream: TokenStream) -> list[tuple[int, int]]:
    """[lo, hi) token ranges between BREAKs (a BREAK at the very start gives an empty first segment)."""
    bounds = sorted(set([0] + [x for x in stream.breaks if 0 <= x <= len(stream)] + [len(stream)]))
    segs = list(zip(bounds, bounds[1:]))
    if stream.breaks and 0 in stream.breaks:
        segs.insert(0, (0, 0))
    return segs or [(0, 0)]
