"""Layout: a TokenStream → fixed-size rows of slots ([BOS] + up to L-2 tokens + [EOS] + pad).

Modes (REFERENCE facts copied here so the code stands alone):
- ``truncate``: one row; what does not fit is dropped and reported (diffusers' default).
- ``chunk``: AUTOMATIC1111's layout: 75 tokens a row, each row wrapped in BOS/EOS; when a row fills and the
  last comma is within ``comma_backtrack`` (20) tokens of its end, the text after that comma moves to the
  next row; ``BREAK`` starts a new row (a BREAK at the very start yields a row of pure padding); an embedding's
  vector run never splits. ``chunk_style="comfy"`` gives ComfyUI's variant: no comma backtrack; a word that
  does not fit moves whole to the next row when shorter than 8 tokens, else it is split.
  ``chunk_style="compel"`` gives compel's (2.5.1, ``truncate_long_prompts=False``): while more than 75 tokens
  remain, the row ends after the last ``.`` among the next 75 tokens (a sentence), else after the last
  ``.`` ``,`` ``;`` ``:`` (a phrase), else after the last word end (a token spelled ``…</w>``), else at 75;
  no comma backtrack. compel's optional copy of the first row's EOS state into later rows
  (``COPY_FIRST_CLS_TOKEN``) is off in ``Compel``'s default and not reproduced.
- ``window``: sliding windows of 75 tokens every ``stride`` tokens. CLIP's attention is causal, so a token's
  state depends only on what precedes it inside its window: each token is therefore kept from the *earliest*
  window that holds it (where it sees the most left context), and every token after the first window still
  sees at least ``75 - stride`` tokens of context — where chunking gives the first token of each chunk none.
  The merged sequence is [BOS] + one slot per token + [EOS] + the last window's padding (``Rows.keep``).
- ``compress``: fit without losing meaning first: drop exact duplicate comma-separated tags, zero-weight
  tokens and redundant commas; then, only when ``max_rows`` is set, drop the lowest-weight tags (latest
  first among equals) until the prompt fits in ``max_rows`` rows; everything dropped is reported.
- ``long``: Long-CLIP's 248 positions, one row (truncate at 248).

Pad id: EOS (49407) for CLIP ViT-L; 0 for OpenCLIP models (SD2, SDXL's bigG), where AUTOMATIC1111 rewrites
every slot after the first EOS to 0 — which is exactly [BOS] + tokens + [EOS] + pad(0).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from sdclip.layout.rows import Rows
from sdclip.tokenizer.stream import BOS, EOS, TokenStream

LayoutMode = Literal["truncate", "chunk", "window", "compress", "long"]
LAYOUTS: tuple[str, ...] = ("truncate", "chunk", "window", "compress", "long")
COMMA_ID = 267  #: ",</w>" in the CLIP vocabulary
LONG_CLIP_LENGTH = 248
COMFY_MAX_WORD = 8  #: ComfyUI keeps words shorter than this whole when they would straddle rows


@dataclass(frozen=True)
class LayoutSpec:
    """Every layout option, by name. ``length`` is the row length (77, or 248 for Long-CLIP)."""

    mode: LayoutMode = "chunk"
    length: int = 77
    pad_id: int = EOS
    comma_backtrack: int = 20
    chunk_style: Literal["a1111", "comfy", "compel"] = "a1111"
    stride: int = 50
    max_rows: int | None = None
    comma_id: int = COMMA_ID

    def __post_init__(self) -> None:
        if self.mode not in LAYOUTS:
            raise ValueError(f"unknown layout {self.mode!r}; choose one of {', '.join(LAYOUTS)}")
        if self.length < 3:
            raise ValueError(f"row length {self.length} leaves no room for tokens")
        if not 1 <= self.stride <= self.length - 2:
            raise ValueError(f"window stride must be in 1..{self.length - 2}, got {self.stride}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be ≥ 1, got {self.max_rows}")
        if self.comma_backtrack < 0:
            raise ValueError("comma_backtrack must be ≥ 0")

    @property
    def capacity(self) -> int:
        """Tokens per row between BOS and EOS."""
        return self.length - 2


def layout(stream: TokenStream, spec: LayoutSpec = LayoutSpec()) -> Rows:
    """Lay a token stream out in rows as ``spec.mode`` says."""
    if spec.mode == "long":
        spec = LayoutSpec(mode="truncate", length=LONG_CLIP_LENGTH, pad_id=spec.pad_id)
    if spec.mode == "truncate":
        return _truncate(stream, spec)
    if spec.mode == "chunk":
        if spec.chunk_style == "compel":
            return _chunk_compel(stream, spec)
        rows = _chunk_comfy(stream, spec) if spec.chunk_style == "comfy" else _chunk_a1111(stream, spec)
        return rows
    if spec.mode == "window":
        return _window(stream, spec)
    return _compress(stream, spec)


# -- rows ---------------------------------------------------------------------------------------


class _Builder:
    """Accumulates rows of (token index) lists and renders them with BOS/EOS/pad."""

    def __init__(self, stream: TokenStream, spec: LayoutSpec):
        self.stream = stream
        self.spec = spec
        self.rows = Rows(length=spec.length)

    def emit(self, members: list[int], keep: list[bool] | None = None) -> None:
        spec, s = self.spec, self.stream
        if len(members) > spec.capacity:
            raise AssertionError("row overflow")  # internal invariant
        pad = spec.capacity - len(members)
        ids = [BOS] + [s.ids[i] for i in members] + [EOS] + [spec.pad_id] * pad
        weights = [1.0] + [s.weights[i] for i in members] + [1.0] * (pad + 1)
        tokens = [-1] + list(members) + [-1] * (pad + 1)
        self.rows.ids.append(ids)
        self.rows.weights.append(weights)
        self.rows.tokens.append(tokens)
        self.rows.keep.append(keep if keep is not None else [True] * spec.length)
        self.rows.eos.append(len(members) + 1)


def _dropped_text(stream: TokenStream, indices: list[int]) -> str:
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


def _run_ends(stream: TokenStream) -> dict[int, int]:
    """start index → length of each embedding vector run."""
    return {start: length for start, length in stream.runs}


def _truncate(stream: TokenStream, spec: LayoutSpec) -> Rows:
    b = _Builder(stream, spec)
    members: list[int] = []
    runs = _run_ends(stream)
    i = 0
    while i < len(stream):
        n = runs.get(i, 1)
        if len(members) + n > spec.capacity:
            break
        members.extend(range(i, i + n))
        i += n
    b.emit(members)
    dropped = list(range(i, len(stream)))
    b.rows.token_count = len(stream)
    b.rows.dropped = _dropped_text(stream, dropped)
    if dropped:
        b.rows.notes.append(f"truncated: {len(dropped)} of {len(stream)} tokens dropped")
    return b.rows


def _chunk_a1111(stream: TokenStream, spec: LayoutSpec) -> Rows:
    """AUTOMATIC1111's tokenize_line, token for token (sd_hijack_clip.py)."""
    b = _Builder(stream, spec)
    cap = spec.capacity
    runs = _run_ends(stream)
    chunk: list[int] = []
    last_comma = -1
    count = 0
    backtracks = 0

    def next_chunk(is_last: bool = False) -> None:
        nonlocal chunk, last_comma, count
        count += len(chunk) if is_last else cap
        b.emit(chunk)
        chunk = []
        last_comma = -1

    breaks = Counter(stream.breaks)
    i = 0
    while True:
        for _ in range(breaks.pop(i, 0)):
            next_chunk()
        if i >= len(stream):
            break
        token = stream.ids[i]
        if token == spec.comma_id:
            last_comma = len(chunk)
        elif (
            spec.comma_backtrack
            and len(chunk) == cap
            and last_comma != -1
            and len(chunk) - last_comma <= spec.comma_backtrack
        ):
            moved = chunk[last_comma + 1 :]
            chunk = chunk[: last_comma + 1]
            next_chunk()
            chunk = moved
            backtracks += 1
        if len(chunk) == cap:
            next_chunk()
        n = runs.get(i, 1)
        if n > 1 and len(chunk) + n > cap:
            next_chunk()
        if n > cap:
            raise ValueError(f"an embedding of {n} vectors cannot fit in a row of {cap} tokens")
        chunk.extend(range(i, i + n))
        i += n
    if chunk or not b.rows.ids:
        next_chunk(is_last=True)
    b.rows.token_count = count
    if backtracks:
        b.rows.notes.append(f"comma backtrack moved text to the next row {backtracks} time(s)")
    return b.rows


def _word_groups(stream: TokenStream, lo: int, hi: int) -> list[list[int]]:
    """Token indices lo..hi-1 grouped into words (ComfyUI tokenizes word by word): a new word starts
    where whitespace separates two tokens in the source, at an embedding run, or after one."""
    runs = _run_ends(stream)
    groups: list[list[int]] = []
    i = lo
    while i < hi:
        if i in runs:
            groups.append(list(range(i, i + runs[i])))
            i += runs[i]
            continue
        prev_end = stream.spans[i - 1][1] if groups and i > lo else None
        start = stream.spans[i][0]
        gap = stream.source[prev_end:start] if prev_end is not None and stream.source else ""
        if groups and prev_end is not None and (gap == "" or not gap.isspace()) and not _is_run(groups[-1], runs):
            groups[-1].append(i)
        else:
            groups.append([i])
        i += 1
    return groups


def _is_run(group: list[int], runs: dict[int, int]) -> bool:
    return len(group) > 0 and group[0] in runs and runs[group[0]] == len(group)


def _chunk_comfy(stream: TokenStream, spec: LayoutSpec) -> Rows:
    """ComfyUI's SDTokenizer.tokenize_with_weights row filling (sd1_clip.py)."""
    b = _Builder(stream, spec)
    cap = spec.capacity
    bounds = sorted(set([0] + [x for x in stream.breaks if 0 <= x <= len(stream)] + [len(stream)]))
    row: list[int] = []
    for lo, hi in zip(bounds, bounds[1:]):
        for group in _word_groups(stream, lo, hi):
            is_large = len(group) >= COMFY_MAX_WORD
            while group:
                if len(group) + len(row) > cap:
                    room = cap - len(row)
                    if is_large:
                        row.extend(group[:room])
                        group = group[room:]
                    b.emit(row)
                    row = []
                else:
                    row.extend(group)
                    group = []
    b.emit(row)
    b.rows.token_count = len(stream)
    if stream.breaks:
        b.rows.notes.append("comfy style ignores BREAK (ComfyUI core has none)")
    return b.rows


#: compel's split points: sentence ends ".</w>"; phrase ends ".</w>" ",</w>" ";</w>" ":</w>" (CLIP ids)
COMPEL_SENTENCE_IDS = frozenset({269})
COMPEL_PHRASE_IDS = frozenset({269, 267, 282, 281})


@lru_cache(maxsize=1)
def _word_end_ids() -> frozenset[int]:
    """Ids of CLIP vocabulary entries spelled with a trailing ``</w>`` (compel's word ends)."""
    from sdclip.tokenizer.vocab import END_OF_WORD, packaged

    vocab, _ = packaged()
    return frozenset(i for t, i in vocab.items() if t.endswith(END_OF_WORD))


def _compel_split(stream: TokenStream, lo: int, hi: int, cap: int, runs: dict[int, int]) -> int:
    """compel's `_find_next_best_split_point` for tokens lo..hi-1: how many go into the next row.

    Never inside an embedding's vector run: a cut there moves before the run (or after it, for a run that
    starts the row)."""
    if hi - lo <= cap:
        return hi - lo
    ids = stream.ids[lo : lo + cap]
    cut = cap
    for allowed in (COMPEL_SENTENCE_IDS, COMPEL_PHRASE_IDS, _word_end_ids()):
        found = next((k for k in range(len(ids) - 1, -1, -1) if ids[k] in allowed), None)
        if found is not None:
            cut = found + 1
            break
    for r0, rn in runs.items():
        if r0 < lo + cut < r0 + rn:
            cut = r0 - lo if r0 > lo else rn
    return cut


def _chunk_compel(stream: TokenStream, spec: LayoutSpec) -> Rows:
    """compel's `_chunk_and_pad_token_ids` with `truncate=False` (BREAK, which compel lacks, starts a row)."""
    b = _Builder(stream, spec)
    cap = spec.capacity
    runs = _run_ends(stream)
    for lo, hi in _segments(stream):
        while True:
            n = _compel_split(stream, lo, hi, cap, runs)
            if n > cap:
                raise ValueError(f"an embedding of {n} vectors cannot fit in a row of {cap} tokens")
            b.emit(list(range(lo, lo + n)))
            lo += n
            if lo >= hi:
                break
    b.rows.token_count = len(stream)
    return b.rows


def _segments(stream: TokenStream) -> list[tuple[int, int]]:
    """[lo, hi) token ranges between BREAKs."""
    bounds = sorted(set([0] + [x for x in stream.breaks if 0 <= x <= len(stream)] + [len(stream)]))
    segs = list(zip(bounds, bounds[1:]))
    if stream.breaks and 0 in stream.breaks:
        segs.insert(0, (0, 0))
    return segs or [(0, 0)]


def _window(stream: TokenStream, spec: LayoutSpec) -> Rows:
    b = _Builder(stream, spec)
    cap, stride = spec.capacity, spec.stride
    runs = _run_ends(stream)
    for lo, hi in _segments(stream):
        start = lo
        covered = lo  # tokens before this index are already kept from an earlier window
        while True:
            end = min(hi, start + cap)
            # never split an embedding run: stop before a run that would not fit
            for r0, rn in runs.items():
                if r0 < end < r0 + rn:
                    end = r0
            members = list(range(start, end))
            last = end >= hi
            keep = [start == lo] + [i >= covered for i in members] + [last] * (cap - len(members) + 1)
            b.emit(members, keep)
            covered = end
            if last:
                break
            nxt = start + stride
            for r0, rn in runs.items():  # do not start a window inside a run
                if r0 < nxt < r0 + rn:
                    nxt = r0
            start = nxt if nxt > start else end
    b.rows.token_count = len(stream)
    windows = len(b.rows.ids)
    if windows > len(_segments(stream)):
        b.rows.notes.append(f"{windows} windows of {cap} tokens, stride {stride}, earliest window kept per token")
    return b.rows


def _tags(stream: TokenStream) -> list[list[int]]:
    """Comma-separated tags as token index lists; each tag includes its trailing comma."""
    tags: list[list[int]] = [[]]
    for i, t in enumerate(stream.ids):
        tags[-1].append(i)
        if t == COMMA_ID:
            tags.append([])
    return [t for t in tags if t]


def _compress(stream: TokenStream, spec: LayoutSpec) -> Rows:
    cap = spec.capacity
    breaks = set(stream.breaks)
    dropped: set[int] = set()
    reasons: list[str] = []
    seen: set[tuple[tuple[int, float], ...]] = set()
    kept_tags: list[list[int]] = []
    for tag in _tags(stream):
        body = [i for i in tag if stream.ids[i] != COMMA_ID]
        key = tuple((stream.ids[i], stream.weights[i]) for i in body)
        if body and key in seen and not any(i in breaks for i in tag):
            dropped.update(tag)
            reasons.append(f"duplicate tag {_dropped_text(stream, body)!r}")
            continue
        if body:
            seen.add(key)
        zero = [i for i in body if stream.weights[i] == 0.0]
        if zero:
            dropped.update(zero)
            reasons.append(f"zero-weight {_dropped_text(stream, zero)!r}")
        live = [i for i in tag if i not in dropped]
        if live and all(stream.ids[i] == COMMA_ID for i in live) and kept_tags:
            dropped.update(live)  # a comma with nothing before it since the last comma
            reasons.append("redundant comma")
            continue
        if live:
            kept_tags.append(live)
    if spec.max_rows is not None:
        budget = spec.max_rows * cap
        total = sum(len(t) for t in kept_tags)
        order = sorted(
            range(len(kept_tags)),
            key=lambda k: (_importance(stream, kept_tags[k]), -k),
        )
        for k in order:
            if total <= budget:
                break
            tag = kept_tags[k]
            total -= len(tag)
            dropped.update(tag)
            reasons.append(f"low-weight tag {_dropped_text(stream, tag)!r}")
            kept_tags[k] = []
    keep_idx = [i for i in range(len(stream)) if i not in dropped]
    sub = _substream(stream, keep_idx)
    inner = LayoutSpec(
        mode="truncate" if spec.max_rows == 1 else "chunk",
        length=spec.length,
        pad_id=spec.pad_id,
        comma_backtrack=spec.comma_backtrack,
        comma_id=spec.comma_id,
    )
    rows = layout(sub, inner)
    # map slot → original token index
    rows.tokens = [[keep_idx[t] if t >= 0 else -1 for t in row] for row in rows.tokens]
    rows.token_count = len(sub)
    all_dropped = sorted(dropped)
    text = _dropped_text(stream, all_dropped)
    rows.dropped = " … ".join(x for x in (text, rows.dropped) if x)
    rows.notes = [f"compress dropped {r}" for r in reasons] + rows.notes
    return rows


def _importance(stream: TokenStream, tag: list[int]) -> float:
    """A tag's weight: the mean weight of its words (its comma does not count)."""
    body = [stream.weights[i] for i in tag if stream.ids[i] != COMMA_ID] or [1.0]
    return sum(body) / len(body)


def _substream(stream: TokenStream, keep: list[int]) -> TokenStream:
    """The stream restricted to `keep` (breaks and runs re-indexed)."""
    where = {old: new for new, old in enumerate(keep)}
    breaks = []
    for br in stream.breaks:
        nxt = next((where[i] for i in range(br, len(stream)) if i in where), len(keep))
        breaks.append(nxt)
    runs = [(where[s], n) for s, n in stream.runs if s in where]
    return TokenStream(
        ids=[stream.ids[i] for i in keep],
        weights=[stream.weights[i] for i in keep],
        spans=[stream.spans[i] for i in keep],
        breaks=breaks,
        vectors=dict(stream.vectors),
        runs=runs,
        source=stream.source,
    )
