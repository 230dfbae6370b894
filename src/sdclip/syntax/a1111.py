"""AUTOMATIC1111 prompt syntax: emphasis, BREAK, AND, and prompt scheduling.

Reproduces stable-diffusion-webui `modules/prompt_parser.py` (behaviour, not code):

Emphasis (`parse_prompt_attention`), applied to every AND sub-prompt:
  - `(x)` ×1.1, `[x]` ÷1.1, `(x:w)` ×w (also `(x: w )`); nesting multiplies. Multipliers are applied
    to a run in the order its brackets close (so weights match A1111 to the last bit, e.g.
    `(((house:1.3)))` → 1.5730000000000004), and adjacent runs with bit-equal weights merge.
  - `\\(` `\\)` `\\[` `\\]` `\\\\` are literals; a lone backslash is dropped (A1111 does).
  - an unclosed `(`/`[` applies to the end of the prompt (round ones first, then square ones);
    a closer with nothing open is literal text (A1111 keeps it: `a)b` → "a)b"; REFERENCE §4 says
    "ignored", the tool wins).
  - `BREAK` (case-sensitive whole word) with the whitespace around it → Fragment(kind="break"),
    also inside brackets (A1111 then silently tokenizes the word "BREAK": a bug we do not copy).
  - a bad `(x:w)` weight (NaN/inf/|w|>100, or `1.2.3` which crashes A1111) → PromptSyntaxError.
AND (`get_multicond_prompt_list`): the prompt is split at the whole word `AND`; each sub-prompt may end
  in `:weight` (`a cat :1.5 AND dog`). combine is "and" when there are several parts *or* the one part
  carries a weight other than 1 (A1111 then scales that cond's guidance), else "single".
Extra networks (`modules/extra_networks.py`): every `<word:args>` tag (`<lora:name:0.8>`, `<lyco:…>`,
  `<hypernet:…>`) is removed from the text before anything else (replaced by nothing, so `a, <lora:x:1>, b`
  conditions on `a, , b`) and listed on `Prompt.extra_networks` / `Schedule.extra_networks`.
Scheduling (`get_learned_conditioning_prompt_schedules`): `[a:b:when]`, `[b:when]`, `[a::when]`,
  `[a|b|c]` (alternation per step, empty options allowed). As A1111, the prompt is split at AND first and
  each sub-prompt is scheduled on its own (`a | b AND [c:d:5]`: the first part, which the grammar cannot
  parse, stays as written; the second is ` c` to step 5, then ` d`). The `when` → step rule (webui ≥ 1.6
  by default, the pre-1.6 rule with `old_scheduling`, A1111's highres-fix second pass with
  `hires_steps`) is `Timeline`'s docstring. A text the scheduling grammar cannot parse (a `|` outside
  `[..|..]`, a trailing backslash) is not scheduled at all, exactly as in A1111.

parse() and scheduling: parse() conditions on ONE text. Given `steps` (and `hires_steps`), it reads every
  sub-prompt at `step` exactly as schedule() does. Without a step count it reads the first step from the
  sign of `when` alone (`[a:b:when]` → a when `when` > 0, `[b:when]` → nothing, `[a|b]` → a), which is
  A1111's result except where int(when · steps) rounds to 0 (`[a:b:0.04]` at 20 steps is `b` in A1111).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from sdclip.syntax.prompt import MAX_WEIGHT, ExtraNetwork, ParseOptions, Part, Prompt, Schedule, Scheduled
from sdclip.syntax._common import (
    MAX_DEPTH,
    OffsetMap,
    Piece,
    checked,
    error,
    merge_equal,
    split_embeddings,
    to_sequence,
)

ROUND = 1.1
SQUARE = 1 / 1.1

# One alternative per token kind, in the priority A1111's attention tokenizer uses.
_ATTENTION_TOKEN = re.compile(
    r"""
    (?P<esc>\\[()\[\]\\])          # escaped literal
  | (?P<lone>\\)                   # lone backslash: dropped
  | (?P<open>[(\[])
  | :\s*(?P<w>[+-]?[.\d]+)\s*\)    # weighted closer
  | (?P<close>[)\]])
  | (?P<text>[^\\()\[\]:]+|:)
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_AND = re.compile(r"\bAND\b")
#: the `:weight` ending an AND part; matched from its colon (a leading `\s*` made search() quadratic on
#: long whitespace runs), the whitespace before the colon is added by `_part_weight`
_PART_WEIGHT = re.compile(r":\s*([-+]?(?:\d+\.?|\d*\.\d+))\s*\Z")


def _part_weight(sub: str) -> tuple[int, re.Match[str] | None]:
    """(where the part's text ends, the weight match or None). Only the last colon can start a weight."""
    colon = sub.rfind(":")
    m = _PART_WEIGHT.match(sub, colon) if colon >= 0 else None
    return (len(sub[:colon].rstrip()) if m else len(sub)), m


# ---------------------------------------------------------------- emphasis


def attention(text: str, source: str, where) -> list[Piece]:
    """A1111 emphasis of one (already scheduled) sub-prompt → pieces, spans in `text` coordinates.

    `where` maps a `text` position to the source (only used for error carets).
    """
    texts: list[str] = []
    weights: list[float] = []
    starts: list[int] = []
    ends: list[int] = []
    breaks: set[int] = set()
    rounds: list[tuple[int, int]] = []
    squares: list[tuple[int, int]] = []

    def scale(start: int, m: float) -> None:
        if start < len(weights):
            weights[start:] = [w * m for w in weights[start:]]

    for m in _ATTENTION_TOKEN.finditer(text):
        kind = m.lastindex  # 1 esc, 2 lone, 3 open, 4 weighted closer, 5 closer, 6 text
        if kind == 6 or (kind == 4 and not rounds) or (
            kind == 5 and not (rounds if m.group() == ")" else squares)
        ):
            a, b = m.span()
            chunk = m.group()
            if "BREAK" in chunk:
                pos = a
                for bm in _BREAK.finditer(chunk):
                    texts += [chunk[pos - a : bm.start()], ""]
                    weights += [1.0, 1.0]
                    starts += [pos, a + bm.start()]
                    ends += [a + bm.start(), a + bm.end()]
                    breaks.add(len(texts) - 1)
                    pos = a + bm.end()
                chunk, a = chunk[pos - a :], pos
            texts.append(chunk)
            weights.append(1.0)
            starts.append(a)
            ends.append(b)
        elif kind == 3:
            stack = rounds if m.group() == "(" else squares
            stack.append((len(texts), m.start()))
            if len(rounds) + len(squares) > MAX_DEPTH:
                raise error(f"brackets nested deeper than {MAX_DEPTH}", source, where(m.start()))
        elif kind == 5:
            if m.group() == ")":
                scale(rounds.pop()[0], ROUND)
            else:
                scale(squares.pop()[0], SQUARE)
        elif kind == 4:
            start, at = rounds.pop()
            raw = m.group(4)
            try:
                w = float(raw)
            except ValueError:
                raise error(f"weight {raw!r} is not a number", source, where(m.start(4))) from None
            if not -MAX_WEIGHT <= w <= MAX_WEIGHT:
                checked(w, text[at + 1 : m.start()], source, where(at))
            scale(start, w)
        elif kind == 1:
            texts.append(m.group()[1])
            weights.append(1.0)
            starts.append(m.start())
            ends.append(m.end())
        # kind 2, a lone backslash, is dropped

    for start, _ in rounds:
        scale(start, ROUND)
    for start, _ in squares:
        scale(start, SQUARE)
    return [
        Piece(t, w, a, b, "break" if i in breaks else "text")
        for i, (t, w, a, b) in enumerate(zip(texts, weights, starts, ends))
    ]


# ---------------------------------------------------------------- AND


def split_and(text: str) -> Iterator[tuple[int, int, float | None, int]]:
    """(start, end, weight or None, weight position) of each AND sub-prompt's text, one at a time: a caller
    that stops early (`max_parts`) holds one part, not a list of 1.7 M (10 MB of `a AND `)."""
    s = 0
    for m in itertools.chain(_AND.finditer(text), (None,)):
        e = len(text) if m is None else m.start()
        sub = text[s:e]
        cut, w = _part_weight(sub)
        if w:
            yield s, s + cut, float(w.group(1)), s + w.start(1)
        else:
            yield s, s + len(sub.rstrip()), None, s
        if m is not None:
            s = m.end()


# ---------------------------------------------------------------- scheduling

_NUMBER = re.compile(
    r"\s*([+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+))\s*"
)


class _Sched:
    """`[before:after:when]` (before is None for `[after:when]`)."""

    __slots__ = ("before", "after", "when", "pos")

    def __init__(self, before: list | None, after: list, when: str, pos: int):
        self.before, self.after, self.when, self.pos = before, after, when, pos


class _Alt:
    """`[a|b|...]`: option (step-1) % n at each step."""

    __slots__ = ("options", "pos")

    def __init__(self, options: list[list], pos: int):
        self.options, self.pos = options, pos


class _Frame:
    __slots__ = ("opener", "pos", "segments", "seps")

    def __init__(self, opener: str, pos: int):
        self.opener, self.pos = opener, pos
        self.segments: list[list] = [[]]
        self.seps: list[tuple[str, int]] = []

    def flat(self) -> list:
        """The frame as plain text items (when it is not a valid construct)."""
        out: list = [(self.opener, self.pos)]
        for i, seg in enumerate(self.segments):
            if i:
                out.append(self.seps[i - 1])
            out.extend(seg)
        return out


def _seg_text(seg: list) -> str | None:
    """The segment's text if it is plain text only (no nested construct), else None."""
    if all(isinstance(x, tuple) for x in seg):
        return "".join(x[0] for x in seg)
    return None


def _close(frame: _Frame, closer: str, pos: int) -> list | None:
    """The items a successfully closed frame contributes, or None when it is not a construct."""
    colons = [s for s, _ in frame.seps if s == ":"]
    pipes = len(frame.seps) - len(colons)
    if frame.opener == "(":
        if closer != ")" or pipes or len(colons) > 1:
            return None
        return [("(", frame.pos), *frame.flat()[1:], (")", pos)]
    if closer != "]" or (pipes and colons):
        return None
    if pipes:
        return [_Alt(frame.segments, frame.pos)]
    if not colons:
        return [("[", frame.pos), *frame.segments[0], ("]", pos)]
    if len(colons) > 2:
        return None
    when = _seg_text(frame.segments[-1])
    m = _NUMBER.fullmatch(when) if when is not None else None
    if m is None:
        return None
    before = frame.segments[0] if len(colons) == 2 else None
    return [_Sched(before, frame.segments[-2], m.group(1), frame.pos)]


_SPECIAL = re.compile(r"\\.?|[()\[\]:|]", re.S)


def _maybe_scheduled(text: str) -> bool:
    """Cheap pre-scan: could any `[...]` close as `[a:b:when]` or `[a|b]`? (False is certain.)

    Mirrors schedule_tree's frame rules without building items, skipping plain text in C.
    """
    if "[" not in text:
        return False
    stack: list[list] = []  # opener, colons, pipes, end of last separator, construct in last segment
    for m in _SPECIAL.finditer(text):
        c = m.group()
        if c[0] == "\\":
            continue
        if c in "([":
            stack.append([c, 0, 0, m.end(), False])
        elif c in ":|":
            if stack:
                f = stack[-1]
                f[1 if c == ":" else 2] += 1
                f[3], f[4] = m.end(), False
        elif stack:
            opener, colons, pipes, sep, nested = stack.pop()
            if c == "]" and opener == "[":
                if pipes and not colons:
                    return True
                if colons in (1, 2) and not pipes and not nested and _NUMBER.fullmatch(text, sep, m.start()):
                    return True
            if (c == ")" and opener == "(" and not pipes and colons <= 1) or (
                c == "]" and opener == "[" and not colons and not pipes
            ):
                if stack:
                    stack[-1][4] = True
            else:
                stack.clear()
    return False


def schedule_tree(text: str) -> list | None:
    """Items of A1111's scheduling grammar: (text, pos) tuples, _Sched and _Alt; None if it fails.

    Bracket constructs nest strictly and no stray bracket may sit inside one, so a construct that
    does not close properly turns itself and every enclosing open one into literal text.
    """
    top: list = []
    stack: list[_Frame] = []

    def collapse() -> None:
        items: list = []
        for frame in stack:
            items.extend(frame.flat())
        stack.clear()
        for it in items:
            if isinstance(it, tuple) and it[0] == "|":
                raise _Unschedulable
        top.extend(items)

    def emit(item) -> None:
        (stack[-1].segments[-1] if stack else top).append(item)

    try:
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == "\\":
                if i + 1 >= n or text[i + 1] == "\n":
                    return None
                emit((text[i : i + 2], i))
                i += 2
                continue
            if c in "([":
                stack.append(_Frame(c, i))
            elif c in ")]":
                if not stack:
                    top.append((c, i))
                else:
                    frame = stack.pop()
                    done = _close(frame, c, i)
                    if done is None:
                        stack.append(frame)
                        collapse()
                        top.append((c, i))
                    else:
                        (stack[-1].segments[-1] if stack else top).extend(done)
            elif c in ":|":
                if stack:
                    stack[-1].seps.append((c, i))
                    stack[-1].segments.append([])
                elif c == "|":
                    return None
                else:
                    top.append((c, i))
            else:
                j = i + 1
                while j < n and text[j] not in "\\()[]:|":
                    j += 1
                emit((text[i:j], i))
                i = j
                continue
            i += 1
        collapse()
    except _Unschedulable:
        return None
    return top


class _Unschedulable(Exception):
    pass


@dataclass(frozen=True)
class Timeline:
    """How A1111 turns a `when` into a step (get_learned_conditioning_prompt_schedules, webui ≥ 1.6).

    - steps only (or `old`): steps 1..steps; an integer `when` is a step number, a `when` written with a
      "." is a fraction of the steps: int(when · steps) (so `[a:b:0.04]` at 20 steps is int(0.8) = 0:
      `b` from step 1, while at 30 steps int(1.2) = 1: `a` at step 1, `b` from step 2).
    - with `hires_steps` (A1111's second, highres-fix pass): steps 1..hires_steps of that pass; an
      integer `when` counts on from the first pass (when − steps), a fraction runs over both passes
      ((when − 1) · hires_steps: `[a:b:1.5]` switches half-way through the second pass; `0.5` is already
      past, so `b` throughout).
    - `old` (A1111 < 1.6, option "use old scheduling"): a `when` below 1 is a fraction, else a step;
      the second pass is then scheduled like the first.
    A switch step is min(n, int(v)); `[a:b:when]` gives `a` at every step <= it, then `b`.
    """

    n: int
    int_offset: int = 0
    float_offset: float = 0.0
    old: bool = False

    @classmethod
    def of(cls, steps: int, hires_steps: int | None = None, old: bool = False) -> "Timeline":
        for name, value in (("steps", steps), ("hires_steps", hires_steps)):
            if value is None and name == "hires_steps":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if hires_steps is None or old:
            return cls(steps, 0, 0.0, bool(old))
        return cls(hires_steps, steps, 1.0, False)

    def when(self, raw: str) -> int:
        """The last step at which `[a:b:raw]` still gives `a` (< 1: never)."""
        v = float(raw)
        if self.old:
            v = v * self.n if v < 1 else v
        elif "." in raw:
            v = (v - self.float_offset) * self.n
        else:
            v = v - self.int_offset
        if math.isinf(v) or math.isnan(v):
            return self.n if v > 0 else -1
        return min(self.n, int(v))


def _walk(items: list, choose) -> list[tuple[str, int]]:
    """Flatten items to (text, source pos) chunks, `choose(node)` picking each construct's branch."""
    out: list[tuple[str, int]] = []
    work: list = [iter(items)]
    while work:
        for it in work[-1]:
            if isinstance(it, tuple):
                out.append(it)
                continue
            branch = choose(it)
            if branch:
                work.append(iter(branch))
            break
        else:
            work.pop()
    return out


def _steps_of(items: list, timeline: Timeline) -> set[int]:
    ends = {timeline.n}
    work = [items]
    while work:
        for it in work.pop():
            if isinstance(it, _Sched):
                it_when = timeline.when(it.when)
                if it_when >= 1:
                    ends.add(it_when)
                work += [b for b in (it.before, it.after) if b]
            elif isinstance(it, _Alt):
                ends.update(range(1, timeline.n + 1))
                work += it.options
    return ends


def _has_constructs(items: list) -> bool:
    return any(not isinstance(it, tuple) for it in items)


def _chooser(step: int, timeline: Timeline | None):
    """Branch choice at `step`; without a timeline, A1111's first step read by the sign of `when`."""

    def choose(node):
        if isinstance(node, _Alt):
            return node.options[(step - 1) % len(node.options)]
        if timeline is None:
            return (node.before or []) if float(node.when) > 0 else node.after
        return (node.before or []) if step <= timeline.when(node.when) else node.after

    return choose


def _sub_prompts(text: str) -> list[tuple[str, str]]:
    """(text to schedule, the rest up to the next sub-prompt: `:weight` and the `AND` separator)."""
    bounds = [0]
    for m in _AND.finditer(text):
        bounds += [m.start(), m.end()]
    bounds.append(len(text))
    out = []
    for k, (s, e) in enumerate(zip(bounds[::2], bounds[1::2])):
        sub = text[s:e]
        cut, _ = _part_weight(sub)
        sep_end = bounds[2 * k + 2] if 2 * k + 2 < len(bounds) - 1 else len(text)
        out.append((sub[:cut], text[s + cut : sep_end]))
    return out


def schedule(text: str, steps: int, old_scheduling: bool = False, hires_steps: int | None = None) -> Schedule:
    """Per-step texts exactly as A1111's get_learned_conditioning_prompt_schedules (steps 1-based).

    As A1111: extra-network tags are removed first (kept on the Schedule), then the prompt is split at
    `AND` and each sub-prompt is scheduled on its own (a `|` or an unbalanced bracket in one part leaves
    only that part unscheduled). See `Timeline` for the `when` rule and `hires_steps`.
    """
    timeline = Timeline.of(steps, hires_steps, old_scheduling)
    body, networks, _ = strip_extra_networks(text)
    subs = []
    ends = {timeline.n}
    for core, rest in _sub_prompts(body):
        items = schedule_tree(core) if _maybe_scheduled(core) else None
        if items is not None and not _has_constructs(items):
            items = None
        if items is not None:
            ends |= _steps_of(items, timeline)
        subs.append((core, rest, items))
    entries = []
    for step in sorted(ends):
        choose = _chooser(step, timeline)
        parts = tuple(
            core if items is None else "".join(t for t, _ in _walk(items, choose)) for core, _, items in subs
        )
        joined = "".join(p + rest for p, (_, rest, _) in zip(parts, subs))
        entries.append(Scheduled(step, joined, parts))
    return Schedule(timeline.n, tuple(entries), networks)


def at_step(text: str, step: int = 1, timeline: Timeline | None = None) -> tuple[str, OffsetMap | None]:
    """One sub-prompt's text in force at `step` and its map back to `text` (None: unchanged).

    Without a timeline (no step count known) this is A1111's first step read from the sign of `when`
    alone: `[a:b:when]` → a when `when` > 0; exact only once the step count is given.
    """
    items = schedule_tree(text) if _maybe_scheduled(text) else None
    if items is None or not _has_constructs(items):
        return text, None
    chunks = _walk(items, _chooser(step, timeline))
    segs, pos = [], 0
    for t, src in chunks:
        segs.append((pos, src, len(t)))
        pos += len(t)
    return "".join(t for t, _ in chunks), OffsetMap(segs, len(text))


def first_step(text: str) -> tuple[str, OffsetMap | None]:
    """`at_step(text, 1)` without a step count (kept for callers of the old name)."""
    return at_step(text)


# ---------------------------------------------------------------- extra networks

#: A1111 modules/extra_networks.py `re_extra_net`: any `<word:args>` tag, removed before all other parsing
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def strip_extra_networks(text: str) -> tuple[str, tuple[ExtraNetwork, ...], OffsetMap | None]:
    """The text without its extra-network tags (replaced by nothing, as A1111 does: `a, <lora:x:1>, b`
    → `a, , b`), the tags, and a map from the stripped text back to `text` (None: nothing removed)."""
    if "<" not in text:
        return text, (), None
    found: list[ExtraNetwork] = []
    kept: list[str] = []
    segs: list[tuple[int, int, int]] = []
    pos = dst = 0
    for m in _EXTRA_NETWORK.finditer(text):
        if m.start() > pos:
            segs.append((dst, pos, m.start() - pos))
            kept.append(text[pos : m.start()])
            dst += m.start() - pos
        items = m.group(2).split(":")
        found.append(ExtraNetwork(m.group(1), items[0], tuple(items[1:]), m.start(), m.end()))
        pos = m.end()
    if not found:
        return text, (), None
    if pos < len(text):
        segs.append((dst, pos, len(text) - pos))
        kept.append(text[pos:])
    return "".join(kept), tuple(found), OffsetMap(segs, len(text))


# ---------------------------------------------------------------- parse


def parse(text: str, embeddings: Collection[str] = (), opts: ParseOptions = ParseOptions()) -> Prompt:
    """A1111 prompt → Prompt: extra networks out, AND parts, each read at `opts.step`, then emphasis and BREAK.

    Without `opts.steps` a scheduled part is read as at its first step from the sign of `when` (see
    `at_step`); with `steps` (and `hires_steps`) at `step` exactly as A1111 (see `Timeline`).
    `embedding_match` "token-ids" leaves embedding names to the tokenizer stage (A1111's own rule).
    """
    step, embedding_match = opts.step, opts.embedding_match
    timeline = None if opts.steps is None else Timeline.of(opts.steps, opts.hires_steps, opts.old_scheduling)
    if timeline is not None and (isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= timeline.n):
        raise ValueError(f"step must be an int in 1..{timeline.n}, got {step!r}")
    body, networks, tag_map = strip_extra_networks(text)
    n = len(text)
    parts = []
    omitted = 0
    for s, e, weight, wpos in split_and(body):
        if opts.max_parts is not None and len(parts) >= opts.max_parts:
            omitted += 1  # counted, not parsed
            continue
        if weight is not None:
            checked(weight, body[s:e], text, _outer(tag_map, wpos))
        sub, inner = at_step(body[s:e], step, timeline)
        where = _Composed(inner, s, tag_map, n)
        pieces = merge_equal(attention(sub, text, where))
        for p in pieces:
            p.start, p.end = where(p.start), where(p.end)
        if embedding_match == "word":
            pieces = split_embeddings(pieces, embeddings)
        parts.append(Part(to_sequence(pieces, text), 1.0 if weight is None else weight))
    combine = "and" if len(parts) + omitted > 1 or parts[0].weight != 1.0 else "single"
    return Prompt(tuple(parts), combine, True, text, networks, parts_omitted=omitted)


def _outer(tag_map: OffsetMap | None, pos: int) -> int:
    return pos if tag_map is None else tag_map(pos)


class _Composed(OffsetMap):
    """A position in a scheduled sub-prompt → the stripped prompt → the source prompt."""

    def __init__(self, inner: OffsetMap | None, offset: int, tags: OffsetMap | None, source_len: int):
        self._inner, self._offset, self._tags, self._n = inner, offset, tags, source_len

    def __call__(self, pos: int) -> int:
        if self._inner is not None:
            pos = self._inner(pos)
        pos += self._offset
        if self._tags is not None:
            pos = self._tags(pos)
        return max(0, min(pos, self._n))
