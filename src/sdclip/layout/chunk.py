"""`chunk`: rows of 75 tokens, each wrapped in BOS/EOS and encoded on its own, concatenated → 77·k slots.

How rows are filled differs between tools; each way is a chunker in `CHUNKERS`, chosen by the preset's
`chunk_style` (a named option, never a branch on a tool):
- ``a1111`` (AUTOMATIC1111 `sd_hijack_clip.tokenize_line`): when a row fills and the last comma is within
  ``comma_backtrack`` (20) tokens of its end, the text after that comma moves to the next row; ``BREAK``
  starts a new row (a BREAK at the very start yields a row of pure padding); an embedding's vector run never
  splits.
- ``comfy`` (ComfyUI `SDTokenizer.tokenize_with_weights`, sd1_clip.py as of 2025): rows are filled group
  by group, a group being a whole weighted segment of the prompt (split only where an ``embedding:`` starts).
  A group that does not fit moves whole to the next row when shorter than 8 tokens; a longer one is split at
  the row end. No comma backtrack. (Before 2024's rewrite ComfyUI grouped word by word; not reproduced.)
- ``compel`` (compel 2.5.1, ``truncate_long_prompts=False``): while more than 75 tokens remain, the row ends
  after the last ``.`` among the next 75 tokens (a sentence), else after the last ``.`` ``,`` ``;`` ``:``
  (a phrase), else after the last word end (a token spelled ``…</w>``), else at 75; no comma backtrack.
  compel's optional copy of the first row's EOS state into later rows (``COPY_FIRST_CLS_TOKEN``) is off in
  ``Compel``'s default and not reproduced.
- ``kohya`` (kohya-ss/sd-scripts `--max_token_length`): exactly ``max_rows`` rows of 75, the rest cut, joined
  as n·75+2 slots (sdclip.layout.kohya).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import lru_cache

from sdclip.layout.builder import RowBuilder, run_interiors, run_lengths, segments
from sdclip.layout.kohya import chunk_kohya
from sdclip.layout.rows import Rows
from sdclip.layout.spec import LayoutSpec
from sdclip.tokenizer.stream import TokenStream

COMFY_MAX_WORD = 8  #: ComfyUI's max_word_length: shorter groups move whole to the next row
#: compel's split points: sentence ends ".</w>"; phrase ends ".</w>" ",</w>" ";</w>" ":</w>" (CLIP ids)
COMPEL_SENTENCE_IDS = frozenset({269})
COMPEL_PHRASE_IDS = frozenset({269, 267, 282, 281})


def chunk_a1111(stream: TokenStream, spec: LayoutSpec) -> Rows:
    """AUTOMATIC1111's tokenize_line, token for token (sd_hijack_clip.py)."""
    b = RowBuilder(stream, spec)
    cap = spec.capacity
    if len(stream) <= cap and not stream.runs and not stream.breaks:  # the loop below on a one-row text:
        b.emit(range(len(stream)))  # every token in the one row (a chunk is never full: no comma backtrack)
        return b.finish(len(stream))
    runs = run_lengths(stream)
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
    if chunk or not len(b):
        next_chunk(is_last=True)
    notes = (f"comma backtrack moved text to the next row {backtracks} time(s)",) if backtracks else ()
    return b.finish(count, notes=notes)


def comfy_groups(stream: TokenStream, lo: int, hi: int) -> list[list[int]]:
    """Token indices lo..hi-1 in ComfyUI's groups: runs of one syntax fragment (a weighted segment), an
    embedding's vector run on its own."""
    runs = run_lengths(stream)
    frag = stream.fragments if len(stream.fragments) == len(stream) else [0] * len(stream)
    groups: list[list[int]] = []
    i = lo
    while i < hi:
        if i in runs:
            groups.append(list(range(i, i + runs[i])))
            i += runs[i]
            continue
        if groups and i > lo and frag[i] == frag[i - 1] and (i - 1) not in _run_members(runs, groups[-1]):
            groups[-1].append(i)
        else:
            groups.append([i])
        i += 1
    return groups


def _run_members(runs: dict[int, int], group: list[int]) -> set[int]:
    """The group's indices if it is an embedding run, else nothing."""
    return set(group) if group and runs.get(group[0]) == len(group) else set()


def chunk_comfy(stream: TokenStream, spec: LayoutSpec) -> Rows:
    """ComfyUI's SDTokenizer.tokenize_with_weights row filling (sd1_clip.py)."""
    b = RowBuilder(stream, spec)
    cap = spec.capacity
    bounds = sorted(set([0] + [x for x in stream.breaks if 0 <= x <= len(stream)] + [len(stream)]))
    row: list[int] = []
    for lo, hi in zip(bounds, bounds[1:]):
        for group in comfy_groups(stream, lo, hi):
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
    notes = ("comfy style ignores BREAK (ComfyUI core has none)",) if stream.breaks else ()
    return b.finish(len(stream), notes=notes)


@lru_cache(maxsize=1)
def _word_end_ids() -> frozenset[int]:
    """Ids of CLIP vocabulary entries spelled with a trailing ``</w>`` (compel's word ends)."""
    from sdclip.tokenizer.vocab import END_OF_WORD, packaged

    vocab, _ = packaged()
    return frozenset(i for t, i in vocab.items() if t.endswith(END_OF_WORD))


def _compel_split(
    stream: TokenStream, lo: int, hi: int, cap: int, runs: dict[int, int], inside: dict[int, int]
) -> int:
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
    r0 = inside.get(lo + cut)
    if r0 is not None:
        cut = r0 - lo if r0 > lo else runs[r0]
    return cut


def chunk_compel(stream: TokenStream, spec: LayoutSpec) -> Rows:
    """compel's `_chunk_and_pad_token_ids` with `truncate=False` (BREAK, which compel lacks, starts a row)."""
    b = RowBuilder(stream, spec)
    cap = spec.capacity
    runs, inside = run_lengths(stream), run_interiors(stream)
    for lo, hi in segments(stream):
        while True:
            n = _compel_split(stream, lo, hi, cap, runs, inside)
            if n > cap:
                raise ValueError(f"an embedding of {n} vectors cannot fit in a row of {cap} tokens")
            b.emit(range(lo, lo + n))
            lo += n
            if lo >= hi:
                break
    return b.finish(len(stream))


#: chunk_style → how rows are filled
CHUNKERS: dict[str, Callable[[TokenStream, LayoutSpec], Rows]] = {
    "a1111": chunk_a1111,
    "comfy": chunk_comfy,
    "compel": chunk_compel,
    "kohya": chunk_kohya,
}


def chunk(stream: TokenStream, spec: LayoutSpec) -> Rows:
    return CHUNKERS[spec.chunk_style](stream, spec)
