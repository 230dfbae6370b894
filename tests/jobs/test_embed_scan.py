"""The validation scan (sdclip.jobs.plan.scan) made cheaper without changing what it reports.

Oracles: the job's own per-caption check (`CaptionEncoder.check`, the rule `sdclip encode` applies), called
once per caption as the scan used to; for the token spans the scan's tokenizers now shift in one step where a
fragment's text is its source slice, `SourceMap` / `_to_source` (the general per-token mapping) on the same
tokens. Models: the tests' tiny SD1 / SDXL single files and Wan folder (tests/tiny_models, tiny_t5_families).
"""

from __future__ import annotations

import bisect
from pathlib import Path

import pytest

from sdclip.jobs.encode import CaptionEncoder
import sdclip.jobs.plan as plan
from sdclip.jobs.plan import MAX_LISTED_TRUNCATED, JobSpec, load_scan_arrays, scan
from sdclip.jobs.readers import open_source
from sdclip.syntax import parse
from sdclip.tokenizer.source_spans import SourceMap, fragment_spans
from test_embed_families import build
from tiny_models import tiny_family, write_layout

LONG = ", ".join(f"word{i} (detail:1.{i % 9})" for i in range(160))  # past 77 tokens and past Wan's 512
CAPTIONS = [
    "a red fox",
    "",
    "a (blue:1.3) cat in a [misty] forest",
    r"an \(escaped\) bracket and \[another\]",
    "a cat AND a dog",  # two A1111 conditionings: an error in a training cache
    "a photo, 16:9",  # one part with a weight: a warning
    "a dog AND",
    "((unbalanced (nested:1.2) [brackets",
    "a <lora:x:1> fox, BREAK a dog",
    "café, naïve — 東京の夜景 🌃 Ω≈ç√",
    "  spaced \t out\n text  ",
    "bad \ud800 surrogate",
    "html &amp; entities &lt;b&gt;",
    LONG,
    "a red fox",  # repeats: checked once, reported per row
    "a cat AND a dog",
    LONG,
]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan-models")
    cache: dict[str, CaptionEncoder] = {}

    def get(family: str) -> CaptionEncoder:
        if family not in cache:
            if family in ("sd1", "sdxl"):
                model = write_layout("single.safetensors", tiny_family(family), root / family)
            else:
                model = build(root, family)
            cache[family] = CaptionEncoder(JobSpec(model=str(model), captions="", out="", options={}))
        return cache[family]

    return get


def write_captions(path: Path, captions: list[str]) -> Path:
    path.write_text("\n".join(c.replace("\n", " ") for c in captions) + "\n", encoding="utf-8", errors="surrogatepass")
    return path


def per_caption(enc: CaptionEncoder, texts: list[str | None]) -> tuple[list[int], list[tuple], list[tuple]]:
    """What the scan reported before it remembered checks: check(text) once per row (None: unreadable)."""
    lengths, warnings, errors = [], [], []
    for i, t in enumerate(texts):
        if t is None:
            lengths.append(-1)
            errors.append((i, None))
            continue
        try:
            n, ws = enc.check(t)
        except ValueError as exc:
            lengths.append(-1)
            errors.append((i, str(exc).splitlines()[0]))
        else:
            lengths.append(n)
            warnings.extend((i, w) for w in ws)
    return lengths, warnings, errors


@pytest.mark.parametrize("family", ["sd1", "sdxl", "wan"])
def test_scan_reports_what_the_per_caption_check_reports(tmp_path, encoders, family):
    enc = encoders(family)
    source = open_source(str(write_captions(tmp_path / "c.txt", CAPTIONS)))
    texts = [r.text for r in source.records()]
    out = tmp_path / "out"
    out.mkdir()
    result = scan(source, enc.check, enc.slots, 4, out)
    lengths, warnings, errors = per_caption(enc, texts)
    assert result.rows == len(texts) and result.valid_rows == len(texts) - len(errors)
    assert load_scan_arrays(out)[0].tolist() == lengths
    assert [(w["index"], w["warning"]) for w in result.warnings] == warnings
    assert result.warning_count == len(warnings) >= 1
    assert [(e["index"], e["error"] if e["index"] != 11 else None) for e in result.errors] == errors
    assert {i for i, _ in errors} >= {4, 15}  # the AND caption, both times
    truncated = [i for i, n in enumerate(lengths) if n > enc.slots]
    assert result.truncated == truncated[:MAX_LISTED_TRUNCATED] and result.truncated_count == len(truncated)
    assert {13, 16} <= set(truncated)  # the long caption overflows every family's row, both times


def test_a_repeated_caption_is_checked_once(tmp_path, encoders):
    enc = encoders("sd1")
    calls: list[str] = []

    def counting(text: str):  # noqa: ANN202
        calls.append(text)
        return enc.check(text)

    source = open_source(str(write_captions(tmp_path / "c.txt", CAPTIONS * 3)))
    out = tmp_path / "out"
    out.mkdir()
    result = scan(source, counting, enc.slots, 8, out)
    texts = [r.text for r in source.records() if r.text is not None]
    LIMIT = plan.REMEMBERED_CHARS  # noqa: N806
    short = sorted({t for t in texts if len(t) <= LIMIT})
    assert sorted(calls) == sorted(short + [t for t in texts if len(t) > LIMIT])  # long: each time
    assert len(short) >= 10 and any(len(t) > LIMIT for t in texts)
    rows = [r.text for r in source.records()]
    assert result.rows == 3 * len(CAPTIONS) and len(result.errors) == len(per_caption(enc, rows)[2])


def _t5_spans_by_source_map(seq, tokenizer, source: str) -> list[tuple[int, int]]:  # noqa: ANN001
    """tokenize_t5's spans through the general per-token mapping (`_to_source` for every token)."""
    from sdclip.tokenizer.t5 import _to_source

    pieces = [(" " if f.kind == "break" else f.text, f) for f in seq.fragments if f.kind != "embedding"]
    text = "".join(t for t, _ in pieces)
    bounds, at = [], 0
    for t, _ in pieces:
        bounds.append(at)
        at += len(t)
    where = SourceMap(source)
    out = []
    for a, b in tokenizer.encode_with_spans(text)[1]:
        k = max(0, bisect.bisect_right(bounds, min(a, max(len(text) - 1, 0))) - 1)
        while k + 1 < len(pieces) and not pieces[k][0] and bounds[k + 1] <= a:
            k += 1
        out.append(_to_source(a, b, k, bounds, pieces, where))
    return out


@pytest.mark.parametrize("family", ["wan", "sd1"])
def test_token_spans_equal_the_general_source_mapping(encoders, family):
    from sdclip.tokenizer.t5 import tokenize_t5
    from sdclip.tokenizer.t5_clean import cleaning

    enc = encoders(family)
    checked = 0
    for caption in CAPTIONS + ["a fox <lora:x:1>, a dog", "plain words only", "(a:1.2) (b:0.8) c"]:
        if "\ud800" in caption:
            continue
        for part in parse(caption, enc.cond.options.dialect).parts:
            seq = part.sequence
            if family == "wan":
                role = enc.family.roles[0]
                tok = cleaning(enc.cond.t5_tokenizer or enc.cond.tokenizers["t5_tokenizer"], role.masking.clean)
                got = tokenize_t5(seq, tok, None, source=caption).stream.spans
                assert got == _t5_spans_by_source_map(seq, tok, caption), caption
            else:
                for f in seq.fragments:
                    if f.kind != "text":
                        continue
                    spans = enc.cond.tokenizer.encode_with_spans(f.text)[1]
                    where = SourceMap(caption)
                    end = max(f.start, f.end)
                    want = []
                    for a, b in spans:
                        s = where.start(0, f.text, f.start, end, a)
                        e = where.end(0, f.text, f.start, end, b) if b > a else s
                        want.append((s, max(s, e)))
                    assert fragment_spans(f.text, f.start, f.end, spans, caption) == want, caption
            checked += 1
    assert checked >= len(CAPTIONS)


def test_wan_clean_skips_ftfy_only_where_ftfy_changes_nothing():
    """wan_clean skips ftfy.fix_text for printable ASCII without `&`: ftfy itself (the peer) returns such text
    unchanged, on fuzzed ASCII heavy in quotes, brackets, escapes and tag-like runs; text outside the rule
    (entities, control characters, mojibake, curly quotes) still goes through it."""
    import random
    import string

    ftfy = pytest.importorskip("ftfy")
    from sdclip.tokenizer.t5_clean import wan_clean

    rng = random.Random(21)
    alphabet = string.ascii_letters + string.digits + string.punctuation.replace("&", "") + "    "
    samples = ["", " ", "a red fox", "<b>bold</b> ``quoted'' \"x\" 'y' -- ... ;)", "\\(escaped\\) [x] {y} #1 ~%"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 200))) for _ in range(2000)]
    for s in samples:
        assert s.isascii() and s.isprintable() and "&" not in s
        assert ftfy.fix_text(s) == s, s
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean  # the pipeline's own cleaning

    others = ["a &amp;amp; b", "caf\u00c3\u00a9", "\u201ccurly\u201d", "tab\there", "line\r\nbreak", "\x1b[31mred"]
    for s in samples[:300] + others:
        assert wan_clean(s) == prompt_clean(s), s
