"""Layout rules, checked against hand-worked cases and an independent transcription of AUTOMATIC1111's
tokenize_line (which works on parsed (text, weight) segments with "BREAK" markers, not on our stream)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from a1111_oracle import chunk_segments

from sdclip.layout import COMMA_ID, LayoutSpec, layout
from sdclip.tokenizer.stream import BOS, EOS, FIRST_VECTOR_ID, TokenStream

WORD = 320  # any ordinary token id


def stream_of(ids: list[int], weights: list[float] | None = None, breaks=(), runs=()) -> TokenStream:
    """A stream whose source text has one 'word' per token, separated by spaces."""
    words = [("," if t == COMMA_ID else f"w{i}") for i, t in enumerate(ids)]
    spans, pos, source = [], 0, ""
    for w in words:
        spans.append((pos, pos + len(w)))
        source += w + " "
        pos += len(w) + 1
    return TokenStream(
        ids=list(ids),
        weights=list(weights) if weights else [1.0] * len(ids),
        spans=spans,
        breaks=list(breaks),
        runs=list(runs),
        vectors={t: ("emb", t - FIRST_VECTOR_ID) for t in ids if t >= FIRST_VECTOR_ID},
        source=source,
    )


def members(rows) -> list[list[int]]:
    return [[t for t in row if t >= 0] for row in rows.tokens]


def a1111_oracle(segments, comma_backtrack=20):
    """The shared oracle's chunks as token lists, and its token count."""
    chunks, count = chunk_segments(segments, comma=COMMA_ID, backtrack=comma_backtrack)
    return [[t for t, _, _ in chunk] for chunk in chunks], count


def test_chunk_matches_a1111_oracle_on_random_streams():
    rng = random.Random(7)
    for trial in range(300):
        n_seg = rng.randint(1, 8)
        segments, ids, breaks = [], [], []
        for _ in range(n_seg):
            if rng.random() < 0.15:
                segments.append(("BREAK", -1))
                breaks.append(len(ids))
                continue
            seg = [COMMA_ID if rng.random() < rng.choice([0.0, 0.05, 0.2]) else WORD + rng.randint(0, 1000) for _ in range(rng.randint(0, 120))]
            segments.append((seg, 1.0))
            ids.extend(seg)
        backtrack = rng.choice([0, 20, 5, 74])
        rows = layout(stream_of(ids, breaks=breaks), LayoutSpec(mode="chunk", comma_backtrack=backtrack))
        want_chunks, want_count = a1111_oracle(segments, comma_backtrack=backtrack)
        got = [[ids[t] for t in row] for row in members(rows)]
        assert got == want_chunks, f"trial {trial}"
        assert rows.token_count == want_count


def test_chunk_rows_are_bos_tokens_eos_pad():
    ids = [WORD + i for i in range(80)]
    rows = layout(stream_of(ids), LayoutSpec(mode="chunk"))
    assert len(rows) == 2
    assert rows.ids[0] == [BOS] + ids[:75] + [EOS]
    assert rows.ids[1] == [BOS] + ids[75:] + [EOS] * 71
    assert rows.eos == [76, 6]
    assert rows.token_count == 80


def test_comma_backtrack_moves_text_after_last_comma():
    ids = [WORD] * 60 + [COMMA_ID] + [WORD + 1] * 29
    rows = layout(stream_of(ids), LayoutSpec(mode="chunk"))
    assert members(rows) == [list(range(61)), list(range(61, 90))]
    far = [WORD] * 50 + [COMMA_ID] + [WORD + 1] * 39  # comma 25 tokens from the end: no backtrack
    rows = layout(stream_of(far), LayoutSpec(mode="chunk"))
    assert members(rows) == [list(range(75)), list(range(75, 90))]
    off = layout(stream_of(ids), LayoutSpec(mode="chunk", comma_backtrack=0))
    assert members(off) == [list(range(75)), list(range(75, 90))]


def test_break_at_start_gives_padding_row_and_at_end_nothing():
    ids = [WORD] * 3
    rows = layout(stream_of(ids, breaks=[0]), LayoutSpec(mode="chunk"))
    assert rows.ids[0] == [BOS, EOS] + [EOS] * 75
    assert members(rows) == [[], [0, 1, 2]]
    rows = layout(stream_of(ids, breaks=[3]), LayoutSpec(mode="chunk"))
    assert members(rows) == [[0, 1, 2]]


def test_pad_zero_after_first_eos():
    rows = layout(stream_of([WORD] * 5), LayoutSpec(mode="chunk", pad_id=0))
    assert rows.ids[0] == [BOS] + [WORD] * 5 + [EOS] + [0] * 70


def test_embedding_run_never_split():
    emb = [FIRST_VECTOR_ID + k for k in range(4)]
    ids = [WORD] * 73 + emb + [WORD] * 2
    rows = layout(stream_of(ids, runs=[(73, 4)]), LayoutSpec(mode="chunk"))
    assert members(rows) == [list(range(73)), list(range(73, 79))]
    trunc = layout(stream_of(ids, runs=[(73, 4)]), LayoutSpec(mode="truncate"))
    assert members(trunc) == [list(range(73))]


def test_truncate_reports_dropped_text():
    ids = [WORD + i for i in range(80)]
    s = stream_of(ids)
    rows = layout(s, LayoutSpec(mode="truncate"))
    assert len(rows) == 1 and rows.ids[0] == [BOS] + ids[:75] + [EOS]
    assert rows.dropped == "w75 w76 w77 w78 w79"
    assert layout(stream_of(ids[:10]), LayoutSpec(mode="truncate")).dropped == ""


def test_long_layout_has_248_slots():
    rows = layout(stream_of([WORD] * 300), LayoutSpec(mode="long"))
    assert rows.length == 248 and len(rows.ids[0]) == 248
    assert members(rows) == [list(range(246))]


def test_window_keeps_each_token_once_from_its_earliest_window():
    n = 130
    rows = layout(stream_of([WORD + i for i in range(n)]), LayoutSpec(mode="window", stride=50))
    assert members(rows) == [list(range(0, 75)), list(range(50, 125)), list(range(100, 130))]
    kept = [t for toks, keep in zip(rows.tokens, rows.keep) for t, k in zip(toks, keep) if k and t >= 0]
    assert kept == list(range(n))  # every token exactly once, in order
    # BOS kept once, EOS + padding only from the last window
    specials = [(r, s) for r, (toks, keep) in enumerate(zip(rows.tokens, rows.keep)) for s, (t, k) in enumerate(zip(toks, keep)) if k and t < 0]
    assert specials[0] == (0, 0)
    assert all(r == 2 for r, _ in specials[1:]) and len(specials) == 1 + 77 - 31
    # every token outside the first window sees ≥ 75 - stride tokens of left context
    for r, toks in enumerate(rows.tokens):
        for s, t in enumerate(toks):
            if rows.keep[r][s] and t >= 75:
                assert s - 1 >= 75 - 50


def test_window_of_short_prompt_equals_chunk():
    s = stream_of([WORD] * 40)
    assert layout(s, LayoutSpec(mode="window")).ids == layout(s, LayoutSpec(mode="chunk")).ids


def test_compress_drops_duplicates_zero_weights_and_commas():
    C = COMMA_ID
    ids = [WORD, C, WORD + 1, WORD + 2, C, WORD, C, C, WORD + 3, C]
    weights = [1, 1, 1, 1, 1, 1, 1, 1, 0.0, 1]
    rows = layout(stream_of(ids, weights), LayoutSpec(mode="compress"))
    kept = [ids[t] for t in members(rows)[0]]
    assert kept == [WORD, C, WORD + 1, WORD + 2, C]
    assert "w5" in rows.dropped and "w8" in rows.dropped
    assert any("duplicate" in n for n in rows.notes) and any("zero-weight" in n for n in rows.notes)


def test_compress_to_rows_drops_lowest_weight_tags_first():
    C = COMMA_ID
    ids, weights = [], []
    for k in range(10):  # ten tags of 14 tokens + comma = 150 tokens
        ids += [WORD + k] * 14 + [C]
        weights += [1.0 + k / 10] * 14 + [1.0]
    weights[15 * 3 : 15 * 3 + 14] = [0.5] * 14  # tag 3 is the least important
    rows = layout(stream_of(ids, weights), LayoutSpec(mode="compress", max_rows=1))
    kept_tags = sorted({ids[t] - WORD for t in members(rows)[0] if ids[t] != C})
    assert len(rows) == 1 and len(members(rows)[0]) <= 75
    assert 3 not in kept_tags and 0 not in kept_tags  # 0.5 first, then the next lowest (1.0)
    assert kept_tags == [5, 6, 7, 8, 9]


def test_compress_drops_the_latest_of_equal_weight_tags_first():
    """Ten tags of equal weight, room for five: the last five go, the first five stay (the earliest text
    of a prompt is what its writer put first)."""
    C = COMMA_ID
    ids = []
    for k in range(10):
        ids += [WORD + k] * 14 + [C]
    rows = layout(stream_of(ids), LayoutSpec(mode="compress", max_rows=1))
    assert sorted({ids[t] - WORD for t in members(rows)[0] if ids[t] != C}) == [0, 1, 2, 3, 4]


def _segment_stream(sizes: list[int]) -> TokenStream:
    """One weighted segment (syntax fragment) per entry of `sizes`, of that many tokens each."""
    ids, spans, frags, src = [], [], [], ""
    for f, n in enumerate(sizes):
        for k in range(n):
            spans.append((len(src) + k, len(src) + k + 1))
            ids.append(WORD)
            frags.append(f)
        src += "x" * n + " "
    return TokenStream(ids=ids, weights=[1.0] * len(ids), spans=spans, source=src, fragments=frags)


def test_comfy_style_moves_short_segments_and_splits_long_ones():
    # 70 one-token segments, a 6-token segment (moves whole), 66 one-token ones, a 10-token one (split)
    s = _segment_stream([1] * 70 + [6] + [1] * 66 + [10])
    m = members(layout(s, LayoutSpec(mode="chunk", chunk_style="comfy")))
    assert m[0] == list(range(70))  # the 6-token segment did not fit in the 5 left: moved whole
    assert m[1][:6] == list(range(70, 76))
    assert len(m[1]) == 75 and m[2] == list(range(145, 152))  # the 10-token segment split at the border


@pytest.mark.parametrize("size, moved", [(7, True), (8, False)])
def test_comfy_keeps_segments_shorter_than_8_whole(size, moved):
    """ComfyUI's max_word_length is 8: a 7-token segment that straddles the border moves whole, an 8-token
    one is split at the row end."""
    s = _segment_stream([1] * 70 + [size])
    m = members(layout(s, LayoutSpec(mode="chunk", chunk_style="comfy")))
    assert len(m[0]) == (70 if moved else 75)
    assert m[1] == list(range(70, 70 + size)) if moved else list(range(75, 70 + size))


@pytest.mark.parametrize(
    "text, rows",
    [
        ("word " * 74 + "(x) y", [75, 1]),  # brackets end a segment: x fills the row, y starts the next
        ("word " * 74 + "photorealistic", [75, 1]),  # one 76-token segment: split at the row end
        ("word " * 70 + "(a b c d e f g)", [70, 7]),  # a 7-token segment moves whole
    ],
)
def test_comfy_preset_rows_match_comfyui(text, rows):
    """Row fillings that current ComfyUI (sd1_clip.SDTokenizer.tokenize_with_weights) gives."""
    from sdclip.conventions.family import get_family
    from sdclip.conventions.presets import Options
    from sdclip.prepare import prepare
    from sdclip.tokenizer import Tokenizer

    prepared = prepare(text, Options.preset("comfy"), get_family("sd1"), Tokenizer.default("hf-slow"))
    got = prepared.parts[0].rows[0]
    assert [sum(1 for t in row if t >= 0) for row in got.tokens] == rows


@pytest.mark.parametrize("mode", ["truncate", "chunk", "window", "compress", "long"])
def test_every_layout_handles_empty_stream(mode):
    rows = layout(stream_of([]), LayoutSpec(mode=mode))
    assert rows.ids[0][:2] == [BOS, EOS] and len(rows) == 1


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="unknown layout"):
        LayoutSpec(mode="squash")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stride"):
        LayoutSpec(mode="window", stride=0)


def test_window_keeps_a_phrase_that_chunking_cuts():
    """'golden hour light' at tokens 74–76: chunking puts 'golden' in row 1 and 'hour light' in row 2, where
    they see none of it; in the window layout the kept slots of 'hour light' sit in a window that also holds
    'golden' (and ≥ 25 tokens before it), so the encoder sees the whole phrase."""
    from sdclip.tokenizer.clip import Tokenizer, tokenize
    from sdclip.syntax import parse

    text = " ".join(["forest"] * 74) + " golden hour light, " + " ".join(["mist"] * 20)
    stream = tokenize(parse(text, "plain").parts[0].sequence, Tokenizer.default())
    stream = dataclasses.replace(stream, source=text)
    golden = next(i for i, (a, b) in enumerate(stream.spans) if text[a:b] == "golden")
    assert golden == 74
    chunk = layout(stream, LayoutSpec(mode="chunk", comma_backtrack=0))
    row_of = {t: r for r, row in enumerate(chunk.tokens) for t in row if t >= 0}
    assert row_of[golden] != row_of[golden + 1]  # the phrase is cut
    win = layout(stream, LayoutSpec(mode="window", stride=50))
    for r, (toks, keep) in enumerate(zip(win.tokens, win.keep)):
        for s, (t, k) in enumerate(zip(toks, keep)):
            if k and t in (golden + 1, golden + 2):
                assert golden in toks[:s]  # kept from a window that also holds 'golden' before it
                assert s - 1 >= 25


# ---- issue 24.7: windows with small strides are bounded and linear --------------------------------------

def _run_stream(n_runs: int, size: int = 2) -> TokenStream:
    """Embedding runs of `size` vectors between single words: w, e e, w, e e, ..."""
    ids, runs = [], []
    for k in range(n_runs):
        ids.append(WORD)
        runs.append((len(ids), size))
        ids.extend([FIRST_VECTOR_ID + j for j in range(size)])
    return stream_of(ids, runs=runs)


def _window_by_scanning_runs(stream: TokenStream, spec: LayoutSpec) -> list[list[int]]:
    """The window members as the first version found them (every run scanned per cut): the reference."""
    cap, stride, out = spec.capacity, spec.stride, []
    runs = dict(stream.runs)
    start, hi = 0, len(stream)
    while True:
        end = min(hi, start + cap)
        for r0, rn in runs.items():
            if r0 < end < r0 + rn:
                end = r0
        out.append(list(range(start, end)))
        if end >= hi:
            return out
        nxt = start + stride
        for r0, rn in runs.items():
            if r0 < nxt < r0 + rn:
                nxt = r0
        start = nxt if nxt > start else end


@pytest.mark.parametrize("stride", [1, 2, 7, 50])
def test_window_cuts_around_runs_as_before(stride):
    stream = _run_stream(60)
    got = layout(stream, LayoutSpec(mode="window", stride=stride))
    assert members(got) == _window_by_scanning_runs(stream, LayoutSpec(mode="window", stride=stride))


def test_window_stride_1_refuses_past_max_windows_while_making_them():
    """Stride 1 over 60,000 tokens would be 60,000 rows of 77 slots (a 61 kB prompt took 8.9 s of CPU and a
    call 30 s): refused once MAX_WINDOWS are made, with the stride named."""
    import time

    from sdclip.layout import RowLimitError
    from sdclip.layout.window import MAX_WINDOWS

    stream = stream_of([WORD] * 60_000)
    t = time.process_time()
    with pytest.raises(RowLimitError, match=rf"at most {MAX_WINDOWS} windows.*stride 1"):
        layout(stream, LayoutSpec(mode="window", stride=1))
    assert time.process_time() - t < 20  # ~0.05 s: bounded by MAX_WINDOWS, not by the 60,000 tokens
    # a smaller row limit refuses first, as every layout does
    with pytest.raises(RowLimitError, match="row_limit=64"):
        layout(stream, LayoutSpec(mode="window", stride=1, row_limit=64))
    assert len(layout(stream_of([WORD] * 1000), LayoutSpec(mode="window", stride=1))) == 1000 - 75 + 1


def test_window_and_compel_rows_over_many_runs_are_linear():
    """3,000 embedding runs: each cut looks its run up (before: every run scanned per window, ~9 s here)."""
    import time

    stream = _run_stream(3000)
    t = time.process_time()
    rows = layout(stream, LayoutSpec(mode="window", stride=10))  # 900 windows
    layout(stream, LayoutSpec(mode="chunk", chunk_style="compel"))
    assert time.process_time() - t < 20  # well under a second now
    assert all(s.count(FIRST_VECTOR_ID) == s.count(FIRST_VECTOR_ID + 1) for s in rows.ids)  # no run split
