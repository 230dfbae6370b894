"""`compress`: fit without losing meaning first. Drop exact duplicate comma-separated tags, zero-weight
tokens and redundant commas; then, only when ``max_rows`` is set, drop the lowest-weight tags (the latest
first among equals) until the prompt fits in ``max_rows`` rows; everything dropped is reported. The rest is
laid out by the chunk layout (without comma backtrack when rows are capped, so the fit is exact), or
truncate for one row. The Conditioner caps compress at its `row_limit` when no ``max_rows`` is given, so
every prompt fits."""

from __future__ import annotations

from dataclasses import replace

from sdclip.layout.builder import dropped_text
from sdclip.layout.chunk import chunk
from sdclip.layout.rows import Rows
from sdclip.layout.spec import COMMA_ID, LayoutSpec
from sdclip.layout.truncate import truncate
from sdclip.tokenizer.stream import TokenStream


def _tags(stream: TokenStream, comma_id: int) -> list[list[int]]:
    """Comma-separated tags as token index lists; each tag includes its trailing comma."""
    tags: list[list[int]] = [[]]
    for i, t in enumerate(stream.ids):
        tags[-1].append(i)
        if t == comma_id:
            tags.append([])
    return [t for t in tags if t]


def importance(stream: TokenStream, tag: list[int], comma_id: int = COMMA_ID) -> float:
    """A tag's weight: the mean weight of its words (its comma does not count)."""
    body = [stream.weights[i] for i in tag if stream.ids[i] != comma_id] or [1.0]
    return sum(body) / len(body)


def drop_order(stream: TokenStream, tags: list[list[int]], comma_id: int = COMMA_ID) -> list[int]:
    """Tag indices in the order compress drops them: lowest weight first, the latest first among equals."""
    return sorted(range(len(tags)), key=lambda k: (importance(stream, tags[k], comma_id), -k))


def compress(stream: TokenStream, spec: LayoutSpec) -> Rows:
    cap, comma = spec.capacity, spec.comma_id
    breaks = set(stream.breaks)
    dropped: set[int] = set()
    reasons: list[str] = []
    seen: set[tuple[tuple[int, float], ...]] = set()
    kept_tags: list[list[int]] = []
    for tag in _tags(stream, comma):
        body = [i for i in tag if stream.ids[i] != comma]
        key = tuple((stream.ids[i], stream.weights[i]) for i in body)
        if body and key in seen and not any(i in breaks for i in tag):
            dropped.update(tag)
            reasons.append(f"duplicate tag {dropped_text(stream, body)!r}")
            continue
        if body:
            seen.add(key)
        zero = [i for i in body if stream.weights[i] == 0.0]
        if zero:
            dropped.update(zero)
            reasons.append(f"zero-weight {dropped_text(stream, zero)!r}")
        live = [i for i in tag if i not in dropped]
        if live and all(stream.ids[i] == comma for i in live) and kept_tags:
            dropped.update(live)  # a comma with nothing before it since the last comma
            reasons.append("redundant comma")
            continue
        if live:
            kept_tags.append(live)
    if spec.max_rows is not None:
        budget = spec.max_rows * cap
        total = sum(len(t) for t in kept_tags)
        for k in drop_order(stream, kept_tags, comma):
            if total <= budget:
                break
            tag = kept_tags[k]
            total -= len(tag)
            dropped.update(tag)
            reasons.append(f"low-weight tag {dropped_text(stream, tag)!r}")
            kept_tags[k] = []
    keep_idx = [i for i in range(len(stream)) if i not in dropped]
    sub = _substream(stream, keep_idx)
    inner = LayoutSpec(
        mode="truncate" if spec.max_rows == 1 else "chunk",
        length=spec.length,
        pad_id=spec.pad_id,
        # a comma backtrack would move text into rows the budget did not count: off when the rows are capped
        comma_backtrack=spec.comma_backtrack if spec.max_rows is None else 0,
        comma_id=comma,
    )
    rows = truncate(sub, inner) if inner.mode == "truncate" else chunk(sub, inner)
    text = dropped_text(stream, sorted(dropped))
    return replace(
        rows,
        tokens=[[keep_idx[t] if t >= 0 else -1 for t in row] for row in rows.tokens],  # slot → original token
        token_count=len(sub),
        dropped=" … ".join(x for x in (text, rows.dropped) if x),
        notes=tuple(f"compress dropped {r}" for r in reasons) + rows.notes,
    )


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
        fragments=[stream.fragments[i] for i in keep] if len(stream.fragments) == len(stream) else [],
    )
