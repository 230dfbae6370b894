"""The validation scan (sdclip.jobs.plan.scan) made cheaper without changing what it reports.

Oracles: the job's own per-caption check (`CaptionEncoder.check`, the rule `sdclip encode` applies), called
once per caption as the scan used to, with the full `prepare` (token spans worked out); for the spanless
`prepare(spans=False)` the check now reads, the full `prepare` on the same text (every row, token and
error equal); for T5's word-by-word `encode`, the `tokenizers` pipeline itself and transformers' tokenizer;
for the layouts' one-row fast paths, their token loop; for the token spans the scan's tokenizers shift in
one step where a fragment's text is its source slice, `SourceMap` / `_to_source` (the general per-token
mapping) on the same tokens. Models: the tests' tiny SD1 / SDXL single files and SD3 / Flux / Wan folders
(tests/tiny_models, tiny_pipelines, tiny_t5_families), tiny_t5's trained SentencePiece tokenizers.
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


def check_with(enc: CaptionEncoder, spans: bool):  # noqa: ANN201
    """enc.check with its Conditioner's `prepare` made with token spans (the check as it was) or without (what
    the check reads now), whatever the check itself asks for."""
    real = type(enc.cond).prepare

    def check(text: str):  # noqa: ANN202
        enc.cond.prepare = lambda t, **_: real(enc.cond, t, spans=spans)
        try:
            return enc.check(text)
        finally:
            del enc.cond.prepare

    return check


def per_caption(check, texts: list[str | None]) -> tuple[list[int], list[tuple], list[tuple]]:  # noqa: ANN001
    """What the scan reported before it remembered checks: check(text) once per row (None: unreadable)."""
    lengths, warnings, errors = [], [], []
    for i, t in enumerate(texts):
        if t is None:
            lengths.append(-1)
            errors.append((i, None))
            continue
        try:
            n, ws = check(t)
        except ValueError as exc:
            lengths.append(-1)
            errors.append((i, str(exc).splitlines()[0]))
        else:
            lengths.append(n)
            warnings.extend((i, w) for w in ws)
    return lengths, warnings, errors


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3", "flux", "wan"])
def test_scan_reports_what_the_per_caption_check_reports(tmp_path, encoders, family):
    """The scan with the spanless check against the full check once per caption, as the scan was."""
    enc = encoders(family)
    source = open_source(str(write_captions(tmp_path / "c.txt", CAPTIONS)))
    texts = [r.text for r in source.records()]
    out = tmp_path / "out"
    out.mkdir()
    result = scan(source, check_with(enc, spans=False), enc.slots, 4, out)
    lengths, warnings, errors = per_caption(check_with(enc, spans=True), texts)
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
    assert result.rows == 3 * len(CAPTIONS) and len(result.errors) == len(per_caption(enc.check, rows)[2])


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


# ---- the spanless check: rows, scans and tokens equal to the full path's --------------------------------

EMBEDDINGS = {"zqemb": 2, "zqwide": 80}  #: textual-inversion names → vector counts (80: wider than a row)
SPANLESS_CAPTIONS = CAPTIONS + [
    "a zqemb cat, (zqemb:1.3) and foxzqemb",  # token-ids matching finds the name inside a word
    "embedding:zqemb a fox, <zqemb>, zqwide",
    "a BREAK b BREAK BREAK c",
    "BREAK",
    "x AND y :0.5 AND z",
    "(a cat)++ dog-- (fox)1.3",  # compel
    '("a red fox", "a blue cat").blend(0.7, 0.3)',
    '("a red fox", "a blue cat").and()',
    "[a:b:0.5] [cat|dog] (x:0)",  # scheduling / alternation / zero weight
    "a\u00a0b\u3000c\x0bd\x1ce ﬁ ＡＢＣ ½ ▁word </s> <extra_id_3> caf\u00c3\u00a9 &amp;amp;",
    "comma, " * 40 + "end",  # a1111's comma backtrack across the row end
    " ".join(f"w{i}" for i in range(600)),  # past Wan's / Flux's 512 T5 positions
]


def spanless_configs():  # noqa: ANN201
    """(family, options, row_limit): every layout, chunk style, T5 length and split a caption can take."""
    from sdclip.conventions.presets import Options

    out = [(fam, Options.preset(p), None) for fam in ("sd1", "sdxl", "sd3", "flux", "wan")
           for p in ("a1111", "comfy", "compel", "diffusers", "kohya")]
    out += [("sd1", Options.preset("a1111", layout=layout), None) for layout in ("truncate", "window", "compress")]
    out += [("longclip", Options.preset("a1111", layout="long"), None), ("sd1", Options.preset("a1111"), 2),
            ("sd1", Options.preset("a1111", embedding_match="word", token_normalization="length+mean"), None),
            ("sd3", Options.preset("a1111", t5_length="clip"), None),
            ("sd3", Options.preset("comfy", t5_length="min", t5_split="fragments"), None)]
    return out


@pytest.fixture(scope="module")
def t5_folders(tmp_path_factory):
    from tiny_t5 import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("t5tok"))


def _prepared_or_error(text: str, options, family: str, t5, row_limit, spans: bool):  # noqa: ANN001, ANN202
    from sdclip.conventions.family import FAMILIES
    from sdclip.prepare import prepare
    from sdclip.tokenizer.clip import Tokenizer

    try:
        return prepare(text, options, FAMILIES[family], Tokenizer.default(options.normalize), EMBEDDINGS,
                       row_limit=row_limit, t5_tokenizer=t5, spans=spans)
    except ValueError as exc:
        return (type(exc), str(exc))


def _without_spans(prep):  # noqa: ANN001, ANN202
    """Everything a Prepared holds but its streams' spans."""
    if isinstance(prep, tuple):
        return prep
    def stream(s):  # noqa: ANN001, ANN202
        return (s.ids, s.weights, s.breaks, s.vectors, s.runs, s.fragments, s.source, type(s).__name__)
    return (prep.prompt, prep.family, prep.stopped, prep.block_slots(), prep.dropped,
            [(p.weight, p.rows, p.sequence, p.sequences, stream(p.stream), [stream(s) for s in p.streams])
             for p in prep.parts])


def test_spanless_prepare_equals_the_full_prepare(t5_folders):
    """prepare(spans=False) — what the scan's check reads — gives every row, token, warning and error the
    full prepare gives, for every family lane, preset, layout, T5 length and split, with textual-inversion
    names, long captions (its layouts then read spans: laid out again) and a row limit."""
    from sdclip.tokenizer.t5 import T5Tokenizer
    from tokenizer_corpus import corpus

    t5 = T5Tokenizer.from_folder(t5_folders["json"])
    texts = SPANLESS_CAPTIONS + corpus(25, seed=21)
    compared = errors = 0
    for family, options, row_limit in spanless_configs():
        for text in texts:
            full = _prepared_or_error(text, options, family, t5, row_limit, True)
            fast = _prepared_or_error(text, options, family, t5, row_limit, False)
            assert _without_spans(fast) == _without_spans(full), (family, options.dialect, options.layout, text)
            compared += 1
            errors += isinstance(full, tuple)
    assert compared >= 2000 and 20 <= errors < compared / 4  # errors seen (surrogates, wide embeddings, limits)


def test_spanless_prepare_works_no_spans_out(monkeypatch, t5_folders):
    """A caption that fits: no span is worked out (CLIP's encode_with_spans, fragment_spans, T5's offsets);
    one whose tail is dropped: its spans are (the layout names the dropped text)."""
    import sdclip.tokenizer.clip as clip
    import sdclip.tokenizer.t5 as t5_module
    from sdclip.conventions.presets import Options

    calls: list[str] = []
    for owner, name in ((clip.Tokenizer, "encode_with_spans"), (t5_module.T5Tokenizer, "encode_with_spans"),
                        (clip, "fragment_spans")):
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    t5 = t5_module.T5Tokenizer.from_folder(t5_folders["json"])
    for family in ("sd1", "sdxl", "sd3", "flux", "wan"):
        for preset in ("a1111", "diffusers"):
            prep = _prepared_or_error("a (red:1.2) fox, BREAK forest", Options.preset(preset), family, t5, None, False)
            assert not isinstance(prep, tuple) and calls == [], (family, preset, calls)
    _prepared_or_error(LONG, Options.preset("diffusers"), "sd1", t5, None, False)
    assert "encode_with_spans" in calls  # truncated: laid out again with spans


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3", "flux", "wan"])
def test_scan_with_the_spanless_check_equals_the_scan_before(tmp_path, encoders, family):
    """Two scans of one caption file, the check with and without spans: the same manifest entries (rows,
    errors, warnings, truncated list) and the same per-row arrays (lengths, digests, first / last)."""
    from tokenizer_corpus import corpus

    enc = encoders(family)
    source = open_source(str(write_captions(tmp_path / "c.txt", SPANLESS_CAPTIONS + corpus(40, seed=3))))
    results = []
    for spans in (True, False):
        out = tmp_path / f"out-{spans}"
        out.mkdir()
        result = scan(source, check_with(enc, spans), enc.slots, 16, out)
        results.append((result.to_manifest(), [a.tolist() for a in load_scan_arrays(out)]))
    assert results[0] == results[1]
    manifest = results[0][0]
    assert manifest["errors"] and manifest["truncated"]["count"] and manifest["warnings"]["count"]


def test_the_check_reads_spanless_rows(monkeypatch, encoders):
    enc = encoders("sd1")
    seen: list[bool] = []
    real = type(enc.cond).prepare
    monkeypatch.setattr(enc.cond, "prepare", lambda text, spans=True: seen.append(spans) or real(enc.cond, text, spans=spans))
    enc.check("a red fox")
    assert seen == [False]


@pytest.mark.parametrize("kind", ["json", "legacy", "spiece"])
def test_t5_encode_word_by_word_equals_the_pipeline(t5_folders, kind):
    """T5Tokenizer.encode splits a plain text into words itself and tokenizes each once: the same ids as the
    `tokenizers` pipeline it stands for and as transformers' tokenizer of the folder, on text it splits and
    on text it hands to the pipeline (non-ASCII, added tokens, odd whitespace, `▁`)."""
    import random

    from transformers import AutoTokenizer

    from sdclip.tokenizer.t5 import T5Tokenizer
    from tokenizer_corpus import corpus

    ref = AutoTokenizer.from_pretrained(str(t5_folders[kind]))
    tok = T5Tokenizer.from_folder(t5_folders[kind])
    rng = random.Random(7)
    alphabet = [chr(i) for i in range(32, 127)] + ["\t", "\n", "  ", "é", "ﬁ", "▁", "</s>", "<extra_id_3>", "\x0b",
                                                   "\x1c", "\u3000", "Ａ", "&amp;", "\u00a0"]
    texts = corpus(300, seed=9) + SPANLESS_CAPTIONS + ["", " ", "   x   ", "a  b", "x" * 300]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(600)]
    texts = [t for t in texts if "\ud800" not in t]
    split = 0
    for text in texts:
        words = tok._plain_words(text)
        split += words is not None
        got = tok.encode(text)
        assert got == list(tok._encoding(text).ids), text
        if kind != "legacy":  # transformers runs the legacy file's own pipeline (sdclip: pipeline="file")
            assert got == ref(text, add_special_tokens=False).input_ids, text
        assert tok.encode(text) == got  # the remembered words give the same ids
    assert len(texts) / 4 < split < len(texts)  # both ways taken
    assert tok._ascii_kept  # the SentencePiece table keeps printable ASCII: such a text skips it
    assert T5Tokenizer.from_file(t5_folders["legacy"] / "tokenizer.json", pipeline="file")._plain_words("a b") is None


def test_t5_words_of_a_normaliser_that_changes_ascii(t5_folders):
    """A normaliser that rewrites ASCII (here the table, then lower-casing): the words come from its output."""
    from tokenizers import Tokenizer, normalizers

    from sdclip.tokenizer.t5 import T5Tokenizer

    backend = Tokenizer.from_file(str(t5_folders["json"] / "tokenizer.json"))
    backend.normalizer = normalizers.Sequence([backend.normalizer, normalizers.Lowercase()])
    tok = T5Tokenizer(backend, word_split=True)
    assert not tok._ascii_kept
    for text in ["A Red FOX", "MiXeD   case\tTAB", "ＡＢＣ fox", "x </s> Y", ""] + SPANLESS_CAPTIONS[:8]:
        assert tok.encode(text) == list(tok._encoding(text).ids), text
    assert tok._plain_words("A Red FOX") == ["a", "red", "fox"]


def test_layout_one_row_fast_paths_equal_the_token_loop():
    """truncate and AUTOMATIC1111's chunking skip their token loop where a text has no embedding run (and,
    chunking, fits one row without BREAK); the loop itself is the oracle, reached through a one-vector
    run at the first token (which the loop reads as the plain token it is)."""
    from dataclasses import replace

    from sdclip.layout import LayoutSpec, layout
    from sdclip.tokenizer.clip import Tokenizer, tokenize
    from tokenizer_corpus import corpus

    tok = Tokenizer.default("hf-slow")
    checked = 0
    for text in corpus(200, seed=4) + ["", "a", "comma, " * 37 + "x", LONG]:
        stream = tokenize(parse(text, "plain").parts[0].sequence, tok, source=text)
        if not len(stream):
            continue
        looped = replace(stream, runs=[(0, 1)])
        for spec in (LayoutSpec("truncate"), LayoutSpec("chunk"), LayoutSpec("chunk", comma_backtrack=0),
                     LayoutSpec("truncate", length=20, stride=9), LayoutSpec("chunk", length=20, stride=9)):
            assert layout(stream, spec) == layout(looped, spec), (text, spec)
            checked += 1
    assert checked > 900
