"""ComfyUI prompt syntax (comfy/sd1_clip.py: escape_important, parse_parentheses, token_weights).

Reproduced behaviour (not code):
  - `(x)` multiplies the surrounding weight by 1.1; `(x:w)` sets w absolutely (outer weights do not
    multiply: `((foo:1.1))` is 1.1, `((foo):1.1)` is 1.21). w is the text after the LAST colon of the
    group if Python's float() accepts it (`(a:b:1.2)` → "a:b" at 1.2; `(a:b)` → "a:b" at 1.1); a colon
    at the very start of the group never weights it.
  - `[x]` is literal; only `\\(` and `\\)` escape (a backslash elsewhere is text).
  - a `)` with nothing open is text and shifts the level count: ComfyUI's splitter counts it as
    level -1, so the next `(` is text too (`)(a)` is all literal; `)((a))` weights `a` 1.1).
  - an unclosed group is literal text, unless that text ends in `)`: then it is peeled like a
    group (`((a)` → "(a" at 1.1), as ComfyUI's splitter does.
  - every weighted segment is its own fragment: ComfyUI tokenizes segments separately, so equal
    neighbours are NOT merged.
  - `embedding:name` at the start of a segment or after a space or newline is a textual-inversion
    reference (kind "embedding", text = name): the name is the next whitespace-free word, whatever it
    holds (`embedding:[x cat` names "[x"); trailing commas belong to the text unless the name with them
    is in `embeddings`. A name not in `embeddings` is dropped with a line in `Prompt.warnings` under
    unknown_embedding="drop" (ComfyUI's "embedding:NAME does not exist, ignoring"; the rest of the text
    stays), or kept for the tokenizer stage to refuse under "error".
  - no BREAK, AND or scheduling in core ComfyUI: those words are plain text.
  - weights that are NaN, infinite or beyond ±100 → PromptSyntaxError (ComfyUI accepts them).
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Collection

from sdclip.syntax.prompt import MAX_WEIGHT, ParseOptions, Part, Prompt
from sdclip.syntax._common import Piece, checked, to_sequence

#: ComfyUI splits a segment at " embedding:" and "\nembedding:" (and a segment may start with one)
_EMBED = re.compile(r"(?:^|(?<=[ \n]))embedding:")
#: a weight text longer than this (after stripping) is not taken as a number: keeps parsing linear
_MAX_NUMBER = 64


def _structure(text: str) -> tuple[list[str], array, array, list[int]]:
    """Unescaped chars, with `\\(`/`\\)` made inert; match[i] for each active `(`; last colon < i."""
    chars: list[str] = []
    src: list[int] = []
    active: list[bool] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "()":
            chars.append(text[i + 1])
            active.append(False)
            src.append(i)
            i += 2
            continue
        chars.append(c)
        active.append(c in "():")
        src.append(i)
        i += 1
    m = len(chars)
    match = array("q", [-1]) * m
    last_colon = array("q", [-1]) * (m + 1)
    stack: list[int] = []
    prev = -1
    for j, c in enumerate(chars):
        last_colon[j] = prev
        if not active[j]:
            continue
        if c == "(":
            stack.append(j)
        elif c == ")":
            if stack:
                match[stack.pop()] = j
        else:
            prev = j
    last_colon[m] = prev
    for j in range(m):
        if not active[j] and chars[j] in "():":
            chars[j] = "\0" + chars[j]  # inert marker, stripped when emitting
    src.append(n)
    return chars, match, last_colon, src


def _group_weight(chars, last_colon, lo: int, hi: int, weight: float, source: str, src) -> tuple[float, int]:
    """Weight of a group whose inner text is chars[lo:hi], and where its text ends (before `:w`).

    Cost is O(1) per group apart from the short weight text: the group's text is joined only for the
    message of a refused weight (joining it eagerly made nested prompts quadratic).
    """
    weight = weight * 1.1
    xx = last_colon[hi]
    if xx > lo:  # ComfyUI: rfind(":") > 0 within the inner text
        raw = "".join(chars[xx + 1 : hi]) if hi - xx <= 4 * _MAX_NUMBER else None
        if raw is not None and len(raw.strip()) <= _MAX_NUMBER and "\0" not in raw:
            try:
                w = float(raw)
            except ValueError:
                return weight, hi
            if not -MAX_WEIGHT <= w <= MAX_WEIGHT:  # also NaN
                checked(w, "".join(chars[lo : min(xx, lo + 80)]).replace("\0", ""), source, src[lo])
            return w, xx
    return weight, hi


def _pieces(text: str) -> list[Piece]:
    chars, match, last_colon, src = _structure(text)
    out: list[Piece] = []

    def emit(lo: int, hi: int, w: float) -> None:
        if hi > lo:
            out.append(Piece("".join(chars[lo:hi]).replace("\0", ""), w, src[lo], src[hi]))

    # work items: ("r", lo, hi, weight, top) a region to split, ("t", lo, hi, weight) text
    work: list[tuple] = [("r", 0, len(chars), 1.0, True)]
    while work:
        item = work.pop()
        if item[0] == "t":
            emit(item[1], item[2], item[3])
            continue
        _, lo, hi, w, top = item
        found: list[tuple] = []
        level = 0  # only the top level can go negative (a stray ")")
        run = lo
        i = lo
        while i < hi:
            c = chars[i]
            if c == "(" and level == 0:
                if run < i:
                    found.append(("t", run, i, w))
                j = match[i]
                if 0 <= j < hi:
                    gw, end = _group_weight(chars, last_colon, i + 1, j, w, text, src)
                    found.append(("r", i + 1, end, gw, False))
                    i = run = j + 1
                    continue
                # unclosed: the rest is one item, a group only if it ends with ")"
                if hi - i >= 2 and chars[hi - 1] == ")":
                    gw, end = _group_weight(chars, last_colon, i + 1, hi - 1, w, text, src)
                    found.append(("r", i + 1, end, gw, False))
                else:
                    found.append(("t", i, hi, w))
                run = i = hi
                break
            if c == "(":
                level += 1
            elif c == ")":
                level -= 1
            i += 1
        if run < hi:
            found.append(("t", run, hi, w))
        work.extend(reversed(found))
    return out


def _embeddings(pieces: list[Piece], known: Collection[str], unknown: str, warnings: list[str]) -> list[Piece]:
    """Split out `embedding:name` references (see module doc); drop unknown ones when `unknown` is "drop"."""
    out: list[Piece] = []
    for p in pieces:
        if "embedding:" not in p.text:
            out.append(p)
            continue
        text = p.text
        exact = len(text) == p.end - p.start
        at = (lambda i, p=p: p.start + i) if exact else (lambda i, p=p: p.start if i < len(p.text) else p.end)
        last = 0
        pos = 0
        while True:
            m = _EMBED.search(text, pos)
            if m is None:
                break
            k = m.end()
            while k < len(text) and text[k].isspace():
                k += 1
            e = k
            while e < len(text) and not text[e].isspace():
                e += 1
            name = text[k:e]
            if name not in known:
                trimmed = name.rstrip(",")
                e -= len(name) - len(trimmed)
                name = trimmed
            if not name:
                pos = m.end()
                continue
            if m.start() > last:
                out.append(Piece(text[last : m.start()], p.weight, at(last), at(m.start())))
            if name in known or unknown == "error":
                out.append(Piece(name, p.weight, at(m.start()), at(e), "embedding"))
            else:
                warnings.append(f"embedding:{name} does not exist, ignoring (at character {at(m.start())})")
            last = pos = e
        if last == 0:
            out.append(p)
        elif last < len(text):
            out.append(Piece(text[last:], p.weight, at(last), p.end))
    return out


def parse(text: str, embeddings: Collection[str] = (), opts: ParseOptions = ParseOptions()) -> Prompt:
    """ComfyUI prompt → Prompt with one part (ComfyUI has no AND).

    opts.unknown_embedding: "error" keeps an unknown `embedding:name` (the tokenizer stage refuses it, naming
    the loaded ones); "drop" removes it and records a warning, as ComfyUI does.
    """
    warnings: list[str] = []
    pieces = _embeddings(_pieces(text), set(embeddings), opts.unknown_embedding, warnings)
    return Prompt((Part(to_sequence(pieces, text)),), "single", True, text, warnings=tuple(warnings))
