"""compel prompt syntax (compel 2.x `prompt_parser.py`, a pyparsing grammar), reproduced as a PEG parser.

Behaviour (checked against compel.prompt_parser.PromptParser itself, see tests/syntax/test_syntax_compel.py):
  - `word+` ×1.1 per `+`, `word-` ×0.9 per `-`; `(a b)1.3`, `(a b)+`, `"a b"0.5` (no space before the
    weight); `x.attend(w)`; nesting multiplies (outer factor first). A `+`/`-` glued to a following
    letter is part of the word (`a+b`); whitespace before a bare-word weight makes it text (`(a) 1.3`).
  - `("a", "b").blend(1, 0.8)` → combine "blend" (weights default to 1; `no_normalize` as the last
    argument → normalize False); `("a", "b").and()` / `.add()` → combine "concat" (optional weights:
    compel lerps that part from the empty prompt's encoding). Only at the top of the prompt.
  - escapes `\\(` `\\)` `\\"` become the literal char; `\\,` `\\.` `\\+` `\\-` `\\=` only stop the
    character's meaning and keep the backslash (compel hands them to the tokenizer as is).
  - compel first writes a space after every comma that lacks one (`a,b` → "a, b"), then drops
    whitespace and joins neighbouring fragments of equal weight with one space.
  - textual inversion: compel users load embeddings under a trigger token, usually `<name>`, and write
    it as a word; pass those names in `embeddings` to get kind "embedding" fragments (both `name` and
    `<name>` refer to the embedding `name`).
Refused with PromptSyntaxError (compel does something else):
  - what compel's grammar cannot parse (an unmatched `"`, a vertical tab, `.blend()` weight counts
    that do not match, non-numeric weights) — compel raises a pyparsing/ValueError there;
  - text after `("a", "b").and(...)`, which compel silently drops;
  - `.swap()` (prompt-to-prompt needs attention control, not conditioning) and `withLora()`/`useLora()`
    (LoRAs are loaded by the pipeline, not the text encoder).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NamedTuple

from sdclip.syntax.prompt import ParseOptions, Part, Prompt
from sdclip.syntax._common import OffsetMap, Piece, checked, error, split_embeddings, to_sequence

PLUS, MINUS = 1.1, 0.9
_PP_WS = " \n\t\r"  # what pyparsing skips between elements (and what White() matches)
_WS = " \t\n\r\x0b\x0c"  # string.whitespace: what words stop at
_SYNTAX = '()",.+-='
_ESCAPES = ('\\(', '\\)', '\\"', '\\,', '\\.', '\\+', '\\-', '\\=')
_QUOTED = re.compile(r'"(?:\\"|[^"\n\r])*"')
_REAL = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_INT = re.compile(r"-?[0-9]+")
_KEYWORD = re.compile(r"[A-Za-z0-9_\-]+")
_NSW_CHAR = re.compile(r"""[^ \t\n\r\x0b\x0c()",.+\-=]|[0-9]+""")
_UNQUOTE = re.compile(r"(\\[tnfr])|(\\[0-7]{3}|\\0|\\x[0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4})|(.)|(\n)")
_COMMA = re.compile(r",(\S)")
#: words that can only be compel free words (no quote, paren, +/-, dot, backslash), each followed
#: by whitespace or the end: read in one go at the top level, where most of a prompt lives
#: inside (...) / "...": words of ordinary chars not followed by a weight, read in one go
_NSW_WORDS = re.compile(r"""[ \t\n\r]*(?:[^ \t\n\r\x0b\x0c()",.+\-=\\]+(?=[ \t\n\r\x0b\x0c()",.=]|\Z)[ \t\n\r]*)*""")
_PLAIN_WORDS = re.compile(r"""(?:[^ \t\n\r\x0b\x0c"(+\-.\\]+(?=[ \t\n\r]|\Z)[ \t\n\r]*)+""")


class _Fail(Exception):
    """This alternative does not match here (pyparsing's ParseException)."""


@dataclass
class _Frag:
    text: str  # raw text as matched (escapes still in)
    start: int
    end: int
    weight: float = 1.0
    unescaped: int = 1  # times compel has applied Fragment()'s unescape so far


@dataclass
class _Att:
    weight: float
    children: list


@dataclass
class _Special:
    what: str
    pos: int


@dataclass
class _Multi:
    kind: str  # "blend" | "concat"
    prompts: list[list]
    weights: list[float]
    normalize: bool = True
    spans: list[tuple[int, int]] = field(default_factory=list)


def _unescape(text: str) -> str:
    return text.replace("\\(", "(").replace("\\)", ")").replace('\\"', '"')


def _unquote(raw: str) -> str:
    """pyparsing QuotedString(esc_quote='\\\\"') unquoting, as compel's pyparsing does it."""
    out = []
    for m in _UNQUOTE.finditer(raw):
        if m.group(1):
            out.append({"t": "\t", "n": "\n", "f": "\f", "r": "\r"}[m.group(1)[1]])
        elif m.group(2):
            g = m.group(2)[1:]
            out.append(chr(0) if g == "0" else chr(int(g[1:], 16)) if g[0] in "xu" else chr(int(g, 8)))
        else:
            out.append(m.group(3) or m.group(4))
    return "".join(out).replace('\\"', '"')


#: compel constructs nest through several Python frames each; deeper prompts are refused
_MAX_NESTING = 64


def _memo(rule):
    """Packrat memo per (rule, position, args): the grammar backtracks a lot (a target is tried as
    `.swap` target, `.attend` target, implicit-weight target, ...); without it parsing is exponential."""

    def wrapped(self, i, *args):
        key = (rule.__name__, i, args)
        hit = self.memo.get(key)
        if hit is None:
            try:
                hit = (True, rule(self, i, *args))
            except _Fail:
                hit = (False, None)
            self.memo[key] = hit
        if not hit[0]:
            raise _Fail
        return hit[1]

    return wrapped


class _Parser:
    """One string (the prompt, or a quoted string's content) and its map to source positions."""

    def __init__(self, s: str, where, source: str, depth: int = 0):
        self.s, self.n, self.where, self.source, self.depth = s, len(s), where, source, depth
        self.memo: dict = {}
        # constructs that cannot occur are never tried (keeps plain text fast)
        self.has_attend = ".attend" in s
        self.has_swap = ".swap" in s
        self.has_lora = "Lora" in s

    # ---- lexical helpers
    def ws(self, i: int) -> int:
        while i < self.n and self.s[i] in _PP_WS:
            i += 1
        return i

    def lit(self, i: int, text: str) -> int:
        i = self.ws(i)
        if not self.s.startswith(text, i):
            raise _Fail
        return i + len(text)

    @staticmethod
    def first(alts, i: int) -> tuple[list, int] | None:
        """pyparsing's MatchFirst: the first alternative that parses at i, or None."""
        for alt in alts:
            try:
                return alt(i)
            except _Fail:
                continue
        return None

    def fail_at(self, msg: str, i: int):
        return error(msg, self.source, self.where(i))

    def enter(self, i: int) -> None:
        if self.depth >= _MAX_NESTING:
            raise self.fail_at(f"constructs nested deeper than {_MAX_NESTING}", i)

    # ---- words
    @_memo
    def nsw(self, i: int) -> tuple[list, int]:
        """non_syntax_word: escapes, a +/- glued to a following ordinary char, digits, ordinary chars."""
        i = self.ws(i)
        s, n, j = self.s, self.n, i
        while j < n:
            if s.startswith(_ESCAPES, j):
                j += 2
            elif s[j] in "+-" and j + 1 < n and s[j + 1] not in _PP_WS and s[j + 1] not in _SYNTAX:
                j += 1
            else:
                m = _NSW_CHAR.match(s, j)
                if not m:
                    break
                j = m.end()
        if j == i:
            raise _Fail
        return [_Frag(s[i:j], self.where(i), self.where(j))], j

    def free_word(self, i: int) -> tuple[list, int]:
        j = i
        while j < self.n and self.s[j] not in _WS:
            j += 1
        if j == i:
            raise _Fail
        return [_Frag(self.s[i:j], self.where(i), self.where(j))], j

    def number(self, i: int) -> tuple[float, int]:
        i = self.ws(i)
        m = _REAL.match(self.s, i) or _INT.match(self.s, i)
        if not m:
            raise _Fail
        return float(m.group()), m.end()

    def weight_op(self, i: int, numbers: bool = True) -> tuple[float, int, int]:
        i = self.ws(i)
        for c, base in (("+", PLUS), ("-", MINUS)):
            j = i
            while j < self.n and self.s[j] == c:
                j += 1
            if j > i:
                return pow(base, j - i), j, i
        if not numbers:
            raise _Fail
        w, j = self.number(i)
        return w, j, i

    # ---- fragments
    @_memo
    def quoted(self, i: int, grammar: str = "fragment") -> tuple[list, int]:
        i = self.ws(i)
        if i >= self.n or self.s[i] != '"':
            raise _Fail
        m = _QUOTED.match(self.s, i) if i < self.n and self.s[i] == '"' else None
        if not m:
            raise _Fail
        raw = m.group()[1:-1]
        content = _unquote(raw)
        if not content.strip():
            return [_Frag("", self.where(i), self.where(m.end()), unescaped=1)], m.end()
        content = content.replace('"', '\\"')
        if content == raw:
            base = i + 1
            inner_where = lambda p, base=base: self.where(base + p)  # noqa: E731
        else:
            a, b = self.where(i), self.where(m.end())
            inner_where = lambda p, a=a, b=b: a if p == 0 else b  # noqa: E731
        self.enter(i)
        sub = _Parser(content, inner_where, self.source, self.depth + 1)
        nodes, j = sub.prompt(0) if grammar == "prompt" else sub.fragment(0, True)
        if sub.ws(j) != sub.n:
            raise _Fail
        return nodes, m.end()

    @_memo
    def paren(self, i: int) -> tuple[list, int]:
        i = self.ws(i)
        if i >= self.n or self.s[i] != "(":
            raise _Fail
        i += 1
        self.enter(i)
        self.depth += 1
        try:
            nodes, j = self.fragment(i, True)
        finally:
            self.depth -= 1
        return nodes, self.lit(j, ")")

    @_memo
    def target(self, i: int) -> tuple[list, int]:
        for alt in (self.quoted, self.paren, self.nsw):
            try:
                return alt(i)
            except _Fail:
                pass
        raise _Fail

    @_memo
    def attention(self, i: int) -> tuple[list, int]:
        try:  # explicit: target.attend(w)
            if not self.has_attend:
                raise _Fail
            nodes, j = self.target(i)
            j = self.lit(j, ".attend")
            j = self.lit(j, "(")
            w, j, _ = self.weight_op(j)
            j = self.lit(j, ")")
            return [_Att(w, nodes)], j
        except _Fail:
            pass
        # implicit: (..)w / "..."w / word+ — the first char decides which target can match
        k = self.ws(i)
        c = self.s[k] if k < self.n else ""
        alt, numbers = (self.quoted, True) if c == '"' else (self.paren, True) if c == "(" else (self.nsw, False)
        nodes, j = alt(i)
        c = self.s[j] if j < self.n else ""
        if not (c == "+" or c == "-" or (numbers and (c == "." or c.isdecimal()))):
            raise _Fail
        w, k, _ = self.weight_op(j, numbers)
        return [_Att(w, nodes)], k

    @_memo
    def swap(self, i: int) -> tuple[list, int]:
        if not self.has_swap:
            raise _Fail
        _, j = self.target(i)
        at = self.ws(j)
        j = self.lit(j, ".swap")
        j = self.lit(j, "(")
        _, j = self.fragment(j, False)
        try:
            j = self.options(self.lit(j, ","))[1]
        except _Fail:
            pass
        j = self.lit(j, ")")
        return [_Special(".swap()", at)], j

    @_memo
    def lora(self, i: int) -> tuple[list, int]:
        if not self.has_lora:
            raise _Fail
        i = self.ws(i)
        for name in ("useLora", "withLora"):
            if self.s.startswith(name, i):
                break
        else:
            raise _Fail
        j = self.lit(i + len(name), "(")
        j = self.ws(j)
        m = _KEYWORD.match(self.s, j)
        if not m:
            raise _Fail
        j = m.end()
        try:
            _, j = self.number(self.lit(j, ","))
        except _Fail:
            pass
        j = self.lit(j, ")")
        return [_Special(f"{name}()", i)], j

    def options(self, i: int) -> tuple[list[tuple[str, int]], int]:
        """Comma-separated `key=value`, numbers (kept as text) or flags; possibly none."""
        out: list[tuple[str, int]] = []
        j = i
        while True:
            k = self.ws(j)
            m = _KEYWORD.match(self.s, k)
            got = None
            if m:
                try:
                    e = self.lit(m.end(), "=")
                    try:
                        _, e = self.number(e)
                    except _Fail:
                        e2 = self.ws(e)
                        m2 = _KEYWORD.match(self.s, e2)
                        if not m2:
                            raise _Fail from None
                        e = m2.end()
                    got = ("=" + self.s[k:e], e)
                except _Fail:
                    got = None
            if got is None:
                try:
                    w, e = self.number(k)
                    got = (repr(w), e)
                except _Fail:
                    if m:
                        got = (m.group(), m.end())
            if got is None:
                if out:  # a dangling comma: the list ends before it
                    return out, j
                return out, i
            out.append((got[0], k))
            j = got[1]
            try:
                j2 = self.lit(j, ",")
            except _Fail:
                return out, j
            out_len, j_before = len(out), j
            j = j2
            # the comma only belongs to the list if another option follows
            k = self.ws(j)
            if not (
                _KEYWORD.match(self.s, k) or _REAL.match(self.s, k) or _INT.match(self.s, k)
            ):
                return out[:out_len], j_before

    @_memo
    def fragment(self, i: int, commas: bool) -> tuple[list, int]:
        """ZeroOrMore of lora | attention | swap | (...) | "..." | word  [| "," | "."]."""
        nodes: list = []
        alts = [self.attention]
        if self.has_lora:
            alts.insert(0, self.lora)
        if self.has_swap:
            alts.append(self.swap)
        alts += [self.paren, self.quoted]
        fast = not (self.has_lora or self.has_swap or self.has_attend)
        while True:
            m = _NSW_WORDS.match(self.s, i) if fast else None
            if m and m.end() > i:
                words = m.group().split()
                if words:
                    a = i + len(m.group()) - len(m.group().lstrip(_PP_WS))
                    j = i + len(m.group().rstrip(_PP_WS))
                    nodes.append(_Frag(" ".join(words), self.where(a), self.where(j)))
                    i = j
            k = self.ws(i)
            c = self.s[k] if k < self.n else ""
            # (...) and "..." only where their opening character is; a word comes last
            tried = [a for a in alts if not ((a == self.paren and c != "(") or (a == self.quoted and c != '"'))]
            hit = self.first([*tried, self.nsw], i)
            if hit is not None:
                got, i = hit
                nodes += got
                continue
            k = self.ws(i)
            if commas and k < self.n and self.s[k] in ",.":
                nodes.append(_Frag(self.s[k], self.where(k), self.where(k + 1)))
                i = k + 1
                continue
            return nodes, i

    def prompt(self, i: int) -> tuple[list, int]:
        """ZeroOrMore of swap | lora | attention | "..." | (...) | free word | whitespace."""
        nodes: list = []
        alts = (self.swap, self.lora, self.attention, self.quoted, self.paren, self.free_word)
        fast = not self.has_lora
        while True:
            if i < self.n and self.s[i] in _PP_WS:
                i = self.ws(i)
                continue
            m = _PLAIN_WORDS.match(self.s, i) if fast else None
            if m:
                words = m.group().split()
                j = i + len(m.group().rstrip(_PP_WS))
                nodes.append(_Frag(" ".join(words), self.where(i), self.where(j)))
                i = m.end()
                continue
            hit = self.first(alts, i)
            if hit is None:
                return nodes, i
            got, i = hit
            nodes += got

    def multi(self, i: int) -> tuple[_Multi, int]:
        """("a", (b), c).blend(...) / .and(...) / .add(...)."""
        j = self.lit(i, "(")
        prompts, spans = [], []
        while True:
            k = self.ws(j)
            try:
                nodes, j = self.target(k)
            except _Fail:
                nodes, j = self.quoted(k, "prompt")
            prompts.append(nodes)
            spans.append((self.where(k), self.where(j)))
            try:
                j = self.lit(j, ",")
            except _Fail:
                break
        j = self.lit(j, ")")
        k = self.ws(j)
        for op in (".blend", ".and", ".add"):
            if self.s.startswith(op, k):
                break
        else:
            raise _Fail
        j = self.lit(k + len(op), "(")
        opts, j = self.options(j)
        j = self.lit(j, ")")
        normalize = True
        if op == ".blend" and opts and opts[-1][0] == "no_normalize":
            normalize = False
            opts = opts[:-1]
        weights = []
        for text, at in opts:
            try:
                weights.append(float(text))
            except ValueError:
                raise self.fail_at(f"{op}() argument {text.lstrip('=')!r} is not a weight", at) from None
        return _Multi("blend" if op == ".blend" else "concat", prompts, weights, normalize, spans), j


# ---------------------------------------------------------------- flatten


def _flatten(nodes: list, scale: float, out: list[_Frag], source: str) -> None:
    """Weights multiply outer first (compel's order), so fused runs compare bit-equal as compel's do."""
    work = [(iter(nodes), scale)]
    while work:
        it, sc = work[-1]
        for node in it:
            if isinstance(node, _Frag):
                out.append(_Frag(node.text, node.start, node.end, node.weight * sc, node.unescaped + 1))
            elif isinstance(node, _Att):
                work.append((iter(node.children), sc * node.weight))
                break
            elif isinstance(node, _Special):
                raise error(f"compel {node.what} is not supported by sdclip (text conditioning only)", source, node.pos)
        else:
            work.pop()


def _fuse(frags: list[_Frag], source: str) -> list[Piece]:
    """compel's fuse_fragments: equal-weight neighbours joined with one space.

    compel re-runs Fragment's unescape on the joined text at every join; a join never creates an
    escape, so each fragment gets one more unescape per later join in its run (applied until stable).
    """
    runs: list[list[_Frag]] = []
    for f in frags:
        if runs and runs[-1][-1].weight == f.weight:
            runs[-1].append(f)
        else:
            runs.append([f])
    out = []
    for run in runs:
        texts = []
        for idx, f in enumerate(run):
            t = f.text
            times = f.unescaped + (len(run) - 1 if idx == 0 else len(run) - idx)
            for _ in range(times):
                u = _unescape(t)
                if u == t:
                    break
                t = u
            texts.append(t)
        w = checked(run[0].weight, " ".join(texts), source, run[0].start)
        out.append(Piece(" ".join(texts), w, run[0].start, run[-1].end))
    return out


class _Embeds(NamedTuple):
    """Loaded names, and whether bare words match them (embedding_match "word") or only `<name>`."""

    names: Collection[str]
    words: bool


def _sequence(nodes: list, source: str, embeddings: _Embeds):
    frags: list[_Frag] = []
    _flatten(nodes, 1.0, frags, source)
    pieces = split_embeddings(_fuse(frags, source), embeddings.names, angle=True, words=embeddings.words)
    return to_sequence(pieces, source), bool(frags)


def parse(text: str, embeddings: Collection[str] = (), opts: ParseOptions = ParseOptions()) -> Prompt:
    """compel prompt → Prompt ("single", "blend" or "concat"); with embedding_match "token-ids" only
    `<name>` references are split out here (bare names are the tokenizer stage's)."""
    embeds = _Embeds(embeddings, opts.embedding_match == "word")
    # compel's comma rule, with a map back to the source for spans
    segs, out, pos, last = [], [], 0, 0
    for m in _COMMA.finditer(text):
        segs.append((pos, last, m.start() + 1 - last))
        out.append(text[last : m.start() + 1] + " ")
        pos += m.start() + 2 - last
        last = m.start() + 1
    segs.append((pos, last, len(text) - last))
    out.append(text[last:])
    s = "".join(out)
    where = OffsetMap(segs, len(text)) if len(segs) > 1 else (lambda p: p)

    if not s.strip():
        return Prompt((Part(to_sequence([], text)),), "single", True, text)
    p = _Parser(s, where, text)
    try:
        return _parse_top(p, s, text, embeds)
    except _Fail:
        raise error("compel syntax error", text, 0) from None
    except RecursionError:
        raise error("prompt nested too deeply", text, 0) from None


def _parse_top(p: _Parser, s: str, text: str, embeddings: _Embeds) -> Prompt:
    start = p.ws(0)
    try:
        multi, j = p.multi(start)
    except _Fail:
        multi = None
    if multi is not None:
        if p.ws(j) != p.n:
            what = ".and()" if multi.kind == "concat" else ".blend()"
            raise p.fail_at(f"text after {what} (compel drops or refuses it)", p.ws(j))
        return _combine(multi, text, embeddings)
    nodes, j = p.prompt(start)
    j = p.ws(j)
    if j != p.n:
        raise p.fail_at("compel cannot parse this", j)
    seq, _ = _sequence(nodes, text, embeddings)
    return Prompt((Part(seq),), "single", True, text)


def _combine(multi: _Multi, text: str, embeddings: _Embeds) -> Prompt:
    n = len(multi.prompts)
    weights = multi.weights or [1.0] * n
    where = multi.spans[0][0]
    if len(weights) != n:
        raise error(f"{n} prompts but {len(weights)} weights", text, where)
    parts = []
    for nodes, w, (a, _) in zip(multi.prompts, weights, multi.spans):
        seq, nonempty = _sequence(nodes, text, embeddings)
        checked(w, seq.text, text, a)
        if not nonempty:
            if multi.kind == "blend":
                raise error("a blended prompt is empty", text, a)
            continue
        parts.append(Part(seq, w))
    if not parts:
        return Prompt((Part(to_sequence([], text)),), "single", True, text)
    if multi.kind == "concat" and len(parts) == 1:
        return Prompt(tuple(parts), "single", True, text)
    return Prompt(tuple(parts), multi.kind, multi.normalize, text)
