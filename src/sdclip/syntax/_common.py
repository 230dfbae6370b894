"""What every dialect parser shares: raw weighted pieces → checked Fragments, embedding references.

A dialect scans the prompt into `Piece`s (text already unescaped, weight, source span). `build_sequence`
turns them into a `Sequence`: empty text dropped, equal-weight neighbours merged where the dialect merges
them, embedding names split out, every weight checked and every span clamped to the source.
"""

from __future__ import annotations

import bisect
import re
from functools import lru_cache
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from sdclip.syntax.prompt import MAX_WEIGHT, Fragment, FragmentKind, PromptSyntaxError, Sequence, check_weight

#: more brackets open at once than this is refused: no real prompt nests that deep, and the
#: A1111 weight rules cost O(depth) per text run, so the cap keeps parsing linear.
MAX_DEPTH = 256


@dataclass
class Piece:
    """A run of output text with one weight; `start`/`end` is its span in the source prompt."""

    text: str
    weight: float
    start: int
    end: int
    kind: FragmentKind = "text"


class OffsetMap:
    """Maps positions in a rewritten text back to the source prompt.

    Built from (rewritten_start, source_start, length) segments that copy source text verbatim; a
    position between segments maps to the start of the next one (inserted text has no source).
    """

    def __init__(self, segments: Iterable[tuple[int, int, int]], source_len: int):
        self._dst: list[int] = []
        self._src: list[int] = []
        self._len: list[int] = []
        for dst, src, n in segments:
            self._dst.append(dst)
            self._src.append(src)
            self._len.append(n)
        self._source_len = source_len

    def __call__(self, pos: int) -> int:
        i = bisect.bisect_right(self._dst, pos) - 1
        if i < 0:
            out = self._src[0] if self._src else 0
        elif pos <= self._dst[i] + self._len[i]:
            out = self._src[i] + (pos - self._dst[i])
        elif i + 1 < len(self._src):
            out = self._src[i + 1]
        else:
            out = self._src[i] + self._len[i]
        return max(0, min(out, self._source_len))


def error(message: str, source: str, position: int) -> PromptSyntaxError:
    return PromptSyntaxError(message, source, position)


def checked(weight: float, what: str, source: str, position: int) -> float:
    """check_weight, with the position clamped (the caret must point into the prompt)."""
    return check_weight(weight, what, source, max(0, min(position, len(source))))


@lru_cache(maxsize=64)
def _ordered(names: tuple[str, ...]) -> tuple[str, ...]:
    """Distinct non-empty names, longest first (then by text: a stable order for the pattern)."""
    return tuple(sorted({n for n in names if n}, key=lambda n: (-len(n), n)))


@lru_cache(maxsize=64)
def _embedding_pattern(
    names: tuple[str, ...], ignore_case: bool, angle: bool = False, words: bool = True
) -> re.Pattern[str] | None:
    """Whole-word matcher for embedding names, longest first; with `angle`, `<name>` too (brackets
    consumed), as compel / diffusers users write the trigger token of a loaded embedding.

    Alternative k is the named group `e{k}` for names[k], so a match finds its name by `lastgroup`, never
    by lower-casing the matched text. Case is ignored character by character as `str.lower` does
    (`_caseless`), not with re.IGNORECASE, which also equates `ſ` with `s` and `µ` (micro) with `μ`: an
    embedding named `ſ` must not replace every "s".

    "Whole word" means: not glued to a letter, digit or underscore on a side where the name itself
    starts/ends with one — so `<easy-neg>` matches anywhere, `bad` does not match inside `badhands`.
    With `words` False only the `<name>` forms are matched.
    """
    alts = []
    for k, name in enumerate(names):
        forms = []
        body = _caseless(name) if ignore_case else re.escape(name)
        if angle:
            forms.append(f"<{body}>")
        if words:
            left = r"(?<!\w)" if re.match(r"\w", name[0]) else ""
            right = r"(?!\w)" if re.match(r"\w", name[-1]) else ""
            forms.append(f"{left}{body}{right}")
        if forms:
            alts.append(f"(?P<e{k}>{'|'.join(forms)})")
    if not alts:
        return None
    return re.compile("|".join(alts))


def _caseless(name: str) -> str:
    """A pattern for the strings whose characters lower-case like `name`'s (one character each)."""
    out = []
    for c in name:
        low = c.lower()
        same = sorted({x for x in (c, low, c.upper(), c.title()) if len(x) == 1 and x.lower() == low})
        out.append(re.escape(same[0]) if len(same) == 1 else "[" + "".join(re.escape(x) for x in same) + "]")
    return "".join(out)


def split_embeddings(
    pieces: list[Piece], names: Collection[str], ignore_case: bool = True, angle: bool = False, words: bool = True
) -> list[Piece]:
    """Cut each text piece where an embedding name occurs; the reference keeps the piece's weight.

    The returned embedding piece's text is the name as given in `names` (the canonical spelling).
    """
    if not names:
        return pieces
    ordered = _ordered(names if isinstance(names, tuple) else tuple(names))
    pattern = _embedding_pattern(ordered, ignore_case, angle, words)  # cached: AND parts reuse it
    if pattern is None:
        return pieces
    out: list[Piece] = []
    for p in pieces:
        if p.kind != "text" or not p.text:
            out.append(p)
            continue
        exact = len(p.text) == p.end - p.start

        def at(i: int, p: Piece = p, exact: bool = exact) -> int:
            return p.start + i if exact else (p.start if i == 0 else p.end if i >= len(p.text) else p.start)

        last = 0
        for m in pattern.finditer(p.text):
            if m.start() > last:
                out.append(Piece(p.text[last : m.start()], p.weight, at(last), at(m.start())))
            name = ordered[int(m.lastgroup[1:])]  # type: ignore[index]
            out.append(Piece(name, p.weight, at(m.start()), at(m.end()), "embedding"))
            last = m.end()
        if last == 0:
            out.append(p)
        elif last < len(p.text):
            out.append(Piece(p.text[last:], p.weight, at(last), p.end))
    return out


def merge_equal(pieces: list[Piece]) -> list[Piece]:
    """Join neighbouring text pieces of identical weight (A1111 does, before tokenizing each run)."""
    out: list[Piece] = []
    buf: list[str] = []
    for p in pieces:
        if p.kind == "text" and not p.text:
            continue
        if out and p.kind == "text" and out[-1].kind == "text" and out[-1].weight == p.weight:
            buf.append(p.text)
            out[-1].end = max(out[-1].end, p.end)
            continue
        if out and out[-1].kind == "text" and len(buf) > 1:
            out[-1].text = "".join(buf)
        out.append(Piece(p.text, p.weight, p.start, p.end, p.kind))
        buf = [p.text]
    if out and out[-1].kind == "text" and len(buf) > 1:
        out[-1].text = "".join(buf)
    return out


def to_sequence(pieces: Iterable[Piece], source: str) -> Sequence:
    """Checked, span-clamped Fragments (empty text dropped, breaks carry weight 1)."""
    n = len(source)
    frags = []
    last = 0
    for p in pieces:
        if not p.text and p.kind == "text":
            continue
        start = p.start
        if not last <= start <= n:
            start = last if start < last else n
        end = p.end
        if not start <= end <= n:
            end = start if end < start else n
        last = start
        if p.kind == "break":
            frags.append(Fragment("", 1.0, start, end, "break"))
            continue
        weight = float(p.weight)
        if not -MAX_WEIGHT <= weight <= MAX_WEIGHT:  # also catches NaN
            checked(weight, p.text, source, start)
        frags.append(Fragment(p.text, weight, start, end, p.kind))
    return Sequence(tuple(frags))
