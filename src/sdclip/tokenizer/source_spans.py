"""A token's span in its fragment's text → its span in the source prompt.

A fragment's `text` is what the tokenizer reads; `start`/`end` bound it in the source prompt. The two are
the same characters in the common case, but a dialect may rewrite them: A1111 removes `<lora:x:1>` tags
from inside a fragment (`a fox <lora:x:1>, a dog` → `a fox , a dog`), compel drops its syntax and adds
spaces (`a (red:1.3) fox` → `a red:1 . 3 fox`), escapes lose their backslash. There `start + offset` points
at the wrong characters (issue 20's inspect bugs: "fox <" drawn for ","). `fragment_spans` aligns the
fragment text to its source slice (runs of equal characters matched in order, removed source characters
skipped, inserted whitespace placed without consuming source) and maps each token through it. Linear in
the fragment; a fragment whose text is its source slice costs one comparison.
"""

from __future__ import annotations

#: candidate source positions scored at a mismatch, how far a candidate's agreement is read, and the
#: agreement that settles it at once (the earliest such candidate: a removed tag is skipped in one look)
_CANDIDATES = 8
_LOOKAHEAD = 64
_ENOUGH = 8


def _common(a: str, i: int, b: str, p: int, cap: int | None = None) -> int:
    """Length of the common prefix of a[i:] and b[p:] (at most `cap`): the first characters one by one (runs
    between rewrites are short), then by doubling slices (C-speed compares) for a long verbatim run."""
    most = min(len(a) - i, len(b) - p, cap if cap is not None else len(a))
    lo = 0
    while lo < most and lo < 16 and a[i + lo] == b[p + lo]:
        lo += 1
    if lo < 16:
        return lo
    step = 16
    while lo < most:  # grow while whole blocks agree, then halve back down
        k = min(step, most - lo)
        if a[i + lo : i + lo + k] == b[p + lo : p + lo + k]:
            lo += k
            step *= 2
        elif k == 1:
            break
        else:
            step = max(1, k // 2)
    return lo


def align(text: str, source: str) -> list[int]:
    """For each character of `text` (and one past its end), its position in `source`: equal runs map
    one to one; a text character missing at the current place is looked for ahead (the source's removed
    syntax skipped), choosing the occurrence after which most characters agree; a whitespace character
    with no better match is an insertion (mapped where it stands, consuming nothing)."""
    out: list[int] = []
    i = p = 0
    while i < len(text):
        n = _common(text, i, source, p)
        out.extend(range(p, p + n))
        i, p = i + n, p + n
        if i >= len(text):
            break
        c = text[i]
        best, score = -1, -1
        q = source.find(c, p)
        for _ in range(_CANDIDATES):
            if q < 0:
                break
            s = _common(text, i, source, q, _LOOKAHEAD)
            if s > score:
                best, score = q, s
            if s >= _ENOUGH:
                break
            q = source.find(c, q + 1)
        if c.isspace() and _common(text, i + 1, source, p, _LOOKAHEAD) >= score:
            best = -1  # an inserted space (compel's joins) agrees at least as well as a skip
        if best < 0:
            out.append(min(p, len(source)))  # inserted: no source character of its own
            i += 1
        else:
            p = best
    out.append(min(p, len(source)))
    return out


class SourceMap:
    """Offsets in fragments' texts → source positions, each fragment aligned once (on first use)."""

    def __init__(self, source: str):
        self.source = source
        self._where: dict[int, list[int] | None] = {}

    def _of(self, key: int, text: str, start: int, end: int) -> list[int] | None:
        if key not in self._where:  # None: the text is its source slice (the common case)
            verbatim = is_verbatim(self.source, text, start, end)
            self._where[key] = None if verbatim else align(text, self.source[start:end])
        return self._where[key]

    def verbatim(self, key: int, text: str, start: int, end: int) -> bool:
        """Whether the fragment's text is its source slice: its spans then map by a shift (`shifted`)."""
        return self._of(key, text, start, end) is None

    def start(self, key: int, text: str, start: int, end: int, offset: int) -> int:
        """Where the character at `offset` of the fragment's text stands in the source."""
        end = max(start, end)
        where = self._of(key, text, start, end)
        if where is None:
            return min(start + offset, end)
        return min(start + where[min(max(offset, 0), len(where) - 1)], end)

    def end(self, key: int, text: str, start: int, end: int, offset: int) -> int:
        """Where a span ending at `offset` of the fragment's text ends in the source."""
        end = max(start, end)
        where = self._of(key, text, start, end)
        if where is None or offset <= 0:
            return self.start(key, text, start, end, offset)
        return min(start + where[min(offset, len(where) - 1) - 1] + 1, end)


def is_verbatim(source: str, text: str, start: int, end: int) -> bool:
    """No source, or a fragment's text that is its source slice [start, end)."""
    return not source or source[start:end] == text


def shifted(a: int, b: int, lo: int, hi: int) -> tuple[int, int]:
    """The span (a, b) of a fragment's text whose source slice is that very text, starting at `lo`: moved by
    `lo`, clipped to the slice's end `hi` (SourceMap's verbatim case, without a call per token)."""
    s = min(lo + a, hi)
    return s, max(s, min(lo + b, hi))


def fragment_spans(text: str, start: int, end: int, spans: list[tuple[int, int]], source: str) -> list[tuple[int, int]]:
    """Spans in one fragment's `text` → source-prompt spans. Without a source (or where the text is its source
    slice) `start + offset`, clipped to `end`, as before."""
    hi = max(start, end)
    if is_verbatim(source, text, start, hi):
        return [shifted(a, b, start, hi) for a, b in spans]
    where = SourceMap(source)
    out = []
    for a, b in spans:
        s = where.start(0, text, start, end, a)
        e = where.end(0, text, start, end, b) if b > a else s
        out.append((s, max(s, e)))
    return out
