"""The tokenizer against the real tools: open_clip, transformers 5 (Rust), transformers 4.57 (Python, ftfy)."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import ftfy
import pytest
import regex

from sdclip.syntax.prompt import Fragment, Sequence
from sdclip.tokenizer.clip import NORMALIZATIONS, Tokenizer, UnknownEmbeddingError, tokenize
from sdclip.tokenizer.stream import FIRST_VECTOR_ID
from tokenizer_corpus import corpus

REPO = Path(__file__).resolve().parents[2]
HF4 = REPO / ".side" / "hf4"
FAST_PATH_CHARS = "\t\n" + "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "&")


def ascii_pairs() -> list[str]:
    """Every string of two ASCII characters: where the fast path and the references must agree exactly."""
    return [chr(a) + chr(b) for a in range(128) for b in range(128)]


def latin_contexts() -> list[str]:
    """Every Latin-1 Supplement to Latin Extended-B character in a few contexts (hf-fast splits these itself)."""
    out = []
    for c in map(chr, range(0xA0, 0x250)):
        out += [f"a{c}b", c, c + c.upper(), f"{c}1 {c}'S", f"Ab{c.upper()}, ({c}x:1.2)"]
    return out


CORPUS = corpus(3000) + ascii_pairs() + latin_contexts()


# references ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def open_clip_tokenizer():
    """open_clip's SimpleTokenizer, its module loaded alone (the package import needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip_torch not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
    mod_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory, open_clip_tokenizer):
    """A Hugging Face tokenizer folder written from open_clip's own tables (not from sdclip's)."""
    oc = open_clip_tokenizer
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(t, t): i for t, i in oc.encoder.items()}
    merges = [pair for pair, _ in sorted(oc.bpe_ranks.items(), key=lambda kv: kv[1])]
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in merges) + "\n", encoding="utf-8")
    return folder


def _variant(base: Path, tmp_path_factory, name: str, files: dict[str, object]) -> Path:
    folder = tmp_path_factory.mktemp(name)
    for f in ("vocab.json", "merges.txt"):
        (folder / f).write_bytes((base / f).read_bytes())
    for f, content in files.items():
        (folder / f).write_text(json.dumps(content), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def pad_bang_folder(hf_folder, tmp_path_factory):
    """SDXL `tokenizer_2` style: the config names "!" (id 0) as the pad token."""
    cfg = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}
    return _variant(hf_folder, tmp_path_factory, "pad_bang", {"tokenizer_config.json": cfg, "special_tokens_map.json": cfg})


@pytest.fixture(scope="session")
def added_token_folder(hf_folder, tmp_path_factory):
    """A folder with a textual-inversion token added by `added_tokens.json`."""
    return _variant(hf_folder, tmp_path_factory, "added", {"added_tokens.json": {"<cat-toy>": 49408}})


ADDED_CASES = ["a photo of <cat-toy>s on a <CAT-TOY>", "<cat-toy><cat-toy>", "x<cat-toy", "<Cat-Toy>!"]


@pytest.fixture(scope="session")
def hf_fast_reference(hf_folder):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(hf_folder))
    assert tok.backend_tokenizer is not None  # transformers 5: the Rust tokenizer
    return tok


@pytest.fixture(scope="session")
def hf_slow_reference(hf_folder, added_token_folder, tmp_path_factory):
    """transformers 4.57's Python CLIPTokenizer (with ftfy), run in a subprocess from .side/hf4."""
    if not (HF4 / "transformers").is_dir():
        pytest.skip(f"transformers 4 side install missing at {HF4}")
    work = tmp_path_factory.mktemp("hf_slow")
    (work / "in.json").write_text(json.dumps({"corpus": CORPUS, "added": ADDED_CASES}), encoding="utf-8")
    script = (
        "import json, sys\n"
        "from transformers import CLIPTokenizer\n"
        "data = json.load(open(sys.argv[1], encoding='utf-8'))\n"
        "tok = CLIPTokenizer(sys.argv[2] + '/vocab.json', sys.argv[2] + '/merges.txt')\n"
        "assert tok.fix_text is not None, 'ftfy missing: not the reference'\n"
        "added = CLIPTokenizer.from_pretrained(sys.argv[3])\n"
        "out = {'corpus': [tok.encode(t, add_special_tokens=False) for t in data['corpus']],\n"
        "       'added': [added.encode(t, add_special_tokens=False) for t in data['added']]}\n"
        "json.dump(out, open(sys.argv[4], 'w'))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(HF4), TRANSFORMERS_VERBOSITY="error")
    subprocess.run(
        [sys.executable, "-c", script, str(work / "in.json"), str(hf_folder), str(added_token_folder), str(work / "out.json")],
        env=env,
        check=True,
        timeout=300,
    )
    return json.loads((work / "out.json").read_text())


def assert_same(texts, expected, got, mode):
    """0 mismatches, else a readable list of the first few."""
    bad = [(t, e, g) for t, e, g in zip(texts, expected, got) if e != g]
    lines = [f"{len(bad)} of {len(texts)} prompts differ from the {mode} reference:"]
    for t, e, g in bad[:8]:
        lines.append(f"  text={t[:120]!r}\n    reference={e[:24]}\n    sdclip   ={g[:24]}")
    assert not bad, "\n".join(lines)
    assert len(expected) == len(got) == len(texts)


# exactness -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def open_clip_ids(open_clip_tokenizer):
    return [open_clip_tokenizer.encode(t) for t in CORPUS]


def test_openclip_mode_matches_open_clip(open_clip_ids):
    expected = open_clip_ids
    assert_same(CORPUS, expected, Tokenizer.default("openclip").encode_batch(CORPUS), "open_clip")


def test_hf_fast_mode_matches_transformers_5(hf_fast_reference, hf_folder):
    expected = hf_fast_reference(CORPUS, add_special_tokens=False)["input_ids"]
    assert_same(CORPUS, expected, Tokenizer.from_folder(hf_folder, "hf-fast").encode_batch(CORPUS), "transformers 5")
    assert_same(CORPUS, expected, Tokenizer.default("hf-fast").encode_batch(CORPUS), "transformers 5")


@pytest.mark.slow  # the transformers 4 subprocess takes 5-12 s
def test_hf_slow_mode_matches_transformers_4(hf_slow_reference, hf_folder):
    expected = hf_slow_reference["corpus"]
    assert_same(CORPUS, expected, Tokenizer.from_folder(hf_folder, "hf-slow").encode_batch(CORPUS), "transformers 4")


def test_the_modes_really_differ(open_clip_tokenizer, open_clip_ids, hf_fast_reference):
    """The corpus reaches the cases where the references disagree (else the tests above prove little)."""
    oc = open_clip_ids
    fast = hf_fast_reference(CORPUS, add_special_tokens=False)["input_ids"]
    assert sum(a != b for a, b in zip(oc, fast)) > 100
    assert open_clip_tokenizer.encode("<|endoftext|>") != [49407]
    assert fast[CORPUS.index("<|endoftext|>")] == [49407]


@pytest.mark.slow  # shares the transformers 4 subprocess
def test_added_tokens_match_each_reference(added_token_folder, hf_slow_reference):
    from transformers import CLIPTokenizer

    fast_ref = CLIPTokenizer.from_pretrained(str(added_token_folder))
    fast = Tokenizer.from_folder(added_token_folder, "hf-fast")
    assert fast.vocab_size == 49409
    assert [fast.encode(t) for t in ADDED_CASES] == fast_ref(ADDED_CASES, add_special_tokens=False)["input_ids"]
    slow = Tokenizer.from_folder(added_token_folder, "hf-slow")
    assert [slow.encode(t) for t in ADDED_CASES] == hf_slow_reference["added"]


def test_pad_bang_folder_keeps_typed_bang(pad_bang_folder, open_clip_tokenizer):
    from transformers import CLIPTokenizer

    hf = CLIPTokenizer.from_pretrained(str(pad_bang_folder))
    assert hf("wow!!!", add_special_tokens=False)["input_ids"] == [2781, 0, 0, 0]  # the HF behaviour we avoid
    for mode in NORMALIZATIONS:
        tok = Tokenizer.from_folder(pad_bang_folder, mode)
        assert tok.encode("wow!!!") == open_clip_tokenizer.encode("wow!!!") == [2781, 995]
        assert tok.encode("hi! there!") == open_clip_tokenizer.encode("hi! there!")


def test_fast_path_claim_holds_for_ftfy_and_html():
    """ftfy and html.unescape leave every pair of fast-path characters alone (the skip is sound)."""
    changed = [
        a + b
        for a in FAST_PATH_CHARS
        for b in FAST_PATH_CHARS
        if ftfy.fix_text(a + b) != a + b or html.unescape(a + b) != a + b
    ]
    assert not changed, changed[:10]
    # and the excluded characters are excluded for a reason
    assert ftfy.fix_text("a\rb") != "a\rb" and ftfy.fix_text("a\x1bb") != "a\x1bb" and html.unescape("&lt;") == "<"


@pytest.mark.slow  # 65k ftfy calls: 4-10 s
def test_ftfy_skip_for_unicode_is_sound():
    """`ftfy_inert` text really is left alone by ftfy and html.unescape: every BMP character in a few
    contexts, and random strings built from the characters ftfy's mojibake detector looks for."""
    from ftfy.badness import MOJIBAKE_CATEGORIES

    from sdclip.tokenizer.normalize import ftfy_inert

    wrong = []
    for code in range(0x80, 0x10000):
        if 0xD800 <= code < 0xE000:
            continue
        for text in (f"a{chr(code)}b", f"x\n{chr(code)} ", f"Ã{chr(code)}"):
            if ftfy_inert(text) and (ftfy.fix_text(text) != text or html.unescape(text) != text):
                wrong.append(text)
    classes = [regex.compile(f"[{body}]") for body in MOJIBAKE_CATEGORIES.values()]
    pool = [chr(c) for c in range(0x80, 0x2600) if any(k.match(chr(c)) for k in classes)]
    pool += list("ÃÂÎÐŒœ×²³ØÙà√≈‚Äâó°вЂВГРСβ€ΒΓΞΟā") + list("abcXYZ .,?!\n")
    rng = random.Random(0)
    inert = 0
    for _ in range(20000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 12)))
        if ftfy_inert(text):
            inert += 1
            if ftfy.fix_text(text) != text:
                wrong.append(text)
    assert not wrong, [ascii(w) for w in wrong[:10]]
    assert inert > 1000  # the check is not vacuous
    assert ftfy_inert("by zdzisław beksiński and simon stålenhag, 東京") and not ftfy_inert("cafÃ©")


def test_ascii_presplit_equals_unicode_presplit():
    """The stdlib-`re` split used on fast-path text gives the `regex` split of the references."""
    from sdclip.tokenizer.normalize import PRESPLIT, PRESPLIT_ASCII, is_plain

    rng = random.Random(1)
    alphabet = FAST_PATH_CHARS + "'sStTdDmMlLrReEvV<>|_"
    texts = [t for t in CORPUS if is_plain(t, "openclip")]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 16))) for _ in range(30000)]
    texts += ["<|endoftext|>'s<end_of_text>", "<START_OF_TEXT>x"]
    for mode in NORMALIZATIONS:
        for text in texts:
            low = text.lower()
            assert PRESPLIT_ASCII[mode].findall(low) == PRESPLIT[mode].findall(low), (mode, text)


# behaviour -------------------------------------------------------------------------------------------


def test_constants_and_token_text():
    tok = Tokenizer.default()
    assert (tok.bos_id, tok.eos_id, tok.vocab_size, tok.comma_id) == (49406, 49407, 49408, 267)
    assert tok.token_text(tok.comma_id) == ",</w>"
    assert tok.token_text(tok.encode("fox")[0]) == "fox</w>"
    assert Tokenizer.default() is Tokenizer.default("openclip")


def test_decode_round_trip(open_clip_tokenizer):
    tok = Tokenizer.default()
    for text in ["a red fox by greg rutkowski", "café 🐈 東京", "UHD !!!"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == open_clip_tokenizer.decode(ids).strip() == text.lower()
    ids = tok.encode("fox, 8k")  # every piece ends a word: CLIP cannot restore glued punctuation
    assert tok.decode(ids) == open_clip_tokenizer.decode(ids).strip() == "fox , 8 k"


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_encode_batch_equals_encode(mode):
    tok = Tokenizer.default(mode)
    texts = CORPUS[:400]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(iter(texts[:5])) == [tok.encode(t) for t in texts[:5]]


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_spans_are_within_text_and_monotonic(mode):
    tok = Tokenizer.default(mode)
    for text in CORPUS[:2500]:
        ids, spans = tok.encode_with_spans(text)
        assert ids == tok.encode(text), text
        assert len(spans) == len(ids)
        prev = (0, 0)
        for s, e in spans:
            assert 0 <= s <= e <= len(text), (text, spans)
            assert s >= prev[0] and e >= prev[1], (text, spans)
            prev = (s, e)


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_spans_are_exact_where_text_is_left_alone(mode):
    """Each token's span holds exactly its text (case aside) when cleaning changes nothing."""
    tok = Tokenizer.default(mode)
    texts = [t for t in CORPUS[:3000] if t.isascii() and "&" not in t and t.isprintable()] + ["café crème, 東京"]
    assert len(texts) > 1000
    for text in texts:
        ids, spans = tok.encode_with_spans(text)
        groups: dict[tuple[int, int], list[int]] = {}  # tokens sharing a span split one character's bytes
        for token_id, span in zip(ids, spans):
            if token_id < tok.bos_id:
                groups.setdefault(span, []).append(token_id)
        for (s, e), group in groups.items():
            assert tok.decode(group) == text[s:e].lower(), (text, group, (s, e))


def test_best_effort_spans_find_unchanged_words():
    tok = Tokenizer.default("openclip")
    text = "ﬁsh &amp; chips"
    ids, spans = tok.encode_with_spans(text)
    assert [text[s:e] for s, e in spans][-1] == "chips"
    text = "cafÃ© in the rain"  # mojibake fixed by ftfy
    ids, spans = tok.encode_with_spans(text)
    assert tok.decode(ids) == "café in the rain"
    assert [text[s:e] for s, e in spans][-3:] == ["in", "the", "rain"]


# tokenize() ------------------------------------------------------------------------------------------


def test_tokenize_weights_spans_breaks_and_embeddings():
    tok = Tokenizer.default()
    source = "a red fox BREAK <ti> in the snow <ti>"
    seq = Sequence(
        (
            Fragment("a ", 1.0, 0, 2),
            Fragment("red fox", 1.3, 2, 9),
            Fragment("", 1.0, 10, 15, kind="break"),
            Fragment("ti", 1.0, 16, 20, kind="embedding"),
            Fragment(" in the snow ", 0.8, 20, 33),
            Fragment("ti", 1.0, 33, 37, kind="embedding"),
        )
    )
    stream = tokenize(seq, tok, {"ti": 2}, source=source)
    red, fox = tok.encode("red fox")
    assert stream.ids[:3] == [tok.encode("a")[0], red, fox]
    assert stream.weights[:3] == [1.0, 1.3, 1.3]
    assert [source[s:e] for s, e in stream.spans[:3]] == ["a", "red", "fox"]
    assert stream.breaks == [3]
    v0, v1 = FIRST_VECTOR_ID, FIRST_VECTOR_ID + 1
    assert stream.ids[3:5] == [v0, v1] and stream.ids[-2:] == [v0, v1]  # same (name, index) → same id
    assert stream.vectors == {v0: ("ti", 0), v1: ("ti", 1)}
    assert stream.runs == [(3, 2), (len(stream) - 2, 2)]
    assert [source[s:e] for s, e in stream.spans[5:8]] == ["in", "the", "snow"]
    assert stream.weights[5:8] == [0.8] * 3
    assert len(stream.ids) == len(stream.weights) == len(stream.spans)
    assert stream.source == source


def test_tokenize_clips_spans_to_fragment():
    stream = tokenize(Sequence((Fragment("a long fragment", 1.0, 5, 8),)), Tokenizer.default())
    assert all(5 <= s <= e <= 8 for s, e in stream.spans)


def test_unknown_embedding_lists_known_names():
    seq = Sequence((Fragment("nope", 1.0, 0, 4, kind="embedding"),))
    with pytest.raises(UnknownEmbeddingError, match="nope.*known: alpha, beta") as info:
        tokenize(seq, Tokenizer.default(), {"beta": 1, "alpha": 3})
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownEmbeddingError, match="none loaded"):
        tokenize(seq, Tokenizer.default())


# errors ----------------------------------------------------------------------------------------------


def test_bad_input_gets_clear_errors(tmp_path, hf_folder):
    tok = Tokenizer.default()
    with pytest.raises(TypeError, match="expects str"):
        tok.encode(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tok.encode_batch("a single string")
    with pytest.raises(ValueError, match="unknown normalisation"):
        Tokenizer.default("sloppy")
    with pytest.raises(ValueError, match="not a token id"):
        tok.token_text(10**6)
    with pytest.raises(ValueError, match="not a token id"):
        tok.decode([FIRST_VECTOR_ID])
    with pytest.raises(ValueError):
        Tokenizer.default("hf-fast").encode("lone \ud800 surrogate")
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.json").write_bytes((hf_folder / "vocab.json").read_bytes())
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match="merges.txt:2"):
        Tokenizer.from_folder(tmp_path)
    with pytest.raises(ValueError, match="byte symbols"):
        Tokenizer({"a": 0}, [])
    with pytest.raises(ValueError, match="embedding 'ti'"):
        tokenize(Sequence((Fragment("ti", kind="embedding"),)), tok, {"ti": 0})


def test_importing_the_tokenizer_does_not_import_torch():
    code = "import sys, sdclip.tokenizer.clip; sdclip.tokenizer.clip.Tokenizer.default().encode('a'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# issue 11.13 / 16.7: embedding matching ---------------------------------------------------------------


def _read(stream, tok):
    return [tok.token_text(i) if i not in stream.vectors else stream.vectors[i] for i in stream.ids]


def test_token_ids_matching_finds_names_inside_words_as_a1111():
    """A1111 replaces a name's token ids wherever they occur in a weighted run (longest name first)."""
    from sdclip.syntax import parse

    tok = Tokenizer.default("hf-slow")
    emb = {"easynegative": 2, "red cat": 1, "red": 1}
    text = "foxeasynegative, (a big red cat:1.2) red"
    prompt = parse(text, "a1111", emb, embedding_match="token-ids")
    stream = tokenize(prompt.parts[0].sequence, tok, emb, source=text, embedding_match="token-ids")
    assert tok.encode("foxeasynegative")[-2:] == tok.encode("easynegative")  # the premise
    assert _read(stream, tok) == ["fox", ("easynegative", 0), ("easynegative", 1), ",</w>", "a</w>", "big</w>",
                                  ("red cat", 0), ("red", 0)]
    assert stream.weights == pytest.approx([1, 1, 1, 1, 1.2, 1.2, 1.2, 1])
    assert [text[a:b] for a, b in stream.spans] == ["fox", "easynegative", "easynegative", ",", "a", "big",
                                                    "red cat", "red"]
    assert stream.runs == [(1, 2), (6, 1), (7, 1)]
    # "word" (the other presets): only whole words, found by the syntax stage
    prompt = parse(text, "a1111", emb, embedding_match="word")
    stream = tokenize(prompt.parts[0].sequence, tok, emb, source=text)
    assert ("easynegative", 0) not in _read(stream, tok) and ("red cat", 0) in _read(stream, tok)
    with pytest.raises(ValueError, match="embedding_match"):
        tokenize(prompt.parts[0].sequence, tok, emb, embedding_match="fuzzy")


def test_token_ids_matching_never_spans_fragments():
    tok = Tokenizer.default()
    seq = Sequence((Fragment("red ", 1.0, 0, 4), Fragment("cat", 1.3, 4, 7)))
    stream = tokenize(seq, tok, {"red cat": 1}, embedding_match="token-ids")
    assert stream.vectors == {} and stream.ids == tok.encode("red cat")


def test_presets_name_their_embedding_rules():
    from sdclip.conventions.presets import Options

    assert Options.preset("a1111").embedding_match == "token-ids"
    assert {Options.preset(p).embedding_match for p in ("comfy", "compel", "diffusers")} == {"word"}
    assert Options.preset("comfy").unknown_embedding == "drop"
    assert {Options.preset(p).unknown_embedding for p in ("a1111", "compel", "diffusers")} == {"error"}
    with pytest.raises(ValueError, match="embedding_match"):
        Options.preset("a1111", embedding_match="anywhere")


@pytest.mark.parametrize("match", ["word", "token-ids"])
def test_names_whose_lowercase_changes_do_not_raise(match):
    """16.7: `ſ`, `µ-style`, `İ…` names once raised KeyError; now they match themselves only."""
    from sdclip.syntax import parse

    emb = {"ſ": 1, "µ-style": 2, "İstanbul": 1}
    for mode in NORMALIZATIONS:
        tok = Tokenizer.default(mode)
        for text in ["ſ µ-style İstanbul", "s S μ-style istanbul", "xſy"]:
            prompt = parse(text, "a1111", emb, embedding_match=match)
            stream = tokenize(prompt.parts[0].sequence, tok, emb, source=text, embedding_match=match)
            assert len(stream.ids) == len(stream.spans)


# issue 11.1 / 16.4: tokenizer folders ------------------------------------------------------------------


@pytest.fixture(scope="session")
def transformers5_folder(hf_folder, tmp_path_factory):
    """A folder saved by transformers 5's CLIPTokenizer: only tokenizer.json + tokenizer_config.json."""
    from transformers import CLIPTokenizer

    out = tmp_path_factory.mktemp("t5_saved")
    CLIPTokenizer.from_pretrained(str(hf_folder)).save_pretrained(str(out))
    assert not (out / "vocab.json").exists() and (out / "tokenizer.json").is_file()
    return out


def test_folder_saved_by_transformers_5_loads_from_tokenizer_json(transformers5_folder, hf_folder):
    from transformers import CLIPTokenizer

    ref = CLIPTokenizer.from_pretrained(str(transformers5_folder))
    ours = Tokenizer.from_folder(transformers5_folder)
    old = Tokenizer.from_folder(hf_folder)
    for text in ["a photo of a cat", "cuphead’s café <|endoftext|> wow!!!", "ﬁsh &amp; chips 12"]:
        want = ref(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text) == want == old.encode(text)


def test_tokenizer_json_with_string_merges(transformers5_folder, tmp_path):
    data = json.loads((transformers5_folder / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]  # older `tokenizers` wrote strings
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    assert Tokenizer.from_folder(tmp_path).encode("a photo of a cat") == Tokenizer.default().encode("a photo of a cat")
    data["model"]["merges"][5] = ["a"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"model.merges\[5\]"):
        Tokenizer.from_folder(tmp_path)
    data["model"] = {"type": "Unigram", "vocab": []}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="BPE"):
        Tokenizer.from_folder(tmp_path)


def test_folder_errors_are_value_errors(hf_folder, tmp_path):
    from sdclip.tokenizer.vocab import TokenizerFilesError

    (tmp_path / "vocab.json").write_bytes((hf_folder / "vocab.json").read_bytes())
    with pytest.raises(TokenizerFilesError, match="merges.txt is missing") as info:  # was a bare FileNotFoundError
        Tokenizer.from_folder(tmp_path)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)
    (tmp_path / "merges.txt").write_bytes((hf_folder / "merges.txt").read_bytes())
    (tmp_path / "tokenizer_config.json").write_bytes(b'{"pad_token": "\xff\xfe"}')  # not UTF-8
    with pytest.raises(TokenizerFilesError, match="tokenizer_config.json: not UTF-8"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"added_tokens_decoder": [1, 2], "additional_special_tokens": 3}')
    Tokenizer.from_folder(tmp_path)  # odd shapes are skipped, not crashed on
    (tmp_path / "vocab.json").write_bytes(b"\x80abc")
    with pytest.raises(TokenizerFilesError, match="vocab.json: not UTF-8"):
        Tokenizer.from_folder(tmp_path)
    with pytest.raises(TokenizerFilesError, match="does not exist"):
        Tokenizer.from_folder(tmp_path / "nope")


def test_lone_surrogate_in_hf_fast_is_named():
    tok = Tokenizer.default("hf-fast")
    for call in (tok.encode, tok.encode_with_spans):
        with pytest.raises(ValueError, match=r"lone surrogate U\+D800 at character 3"):
            call("ab \ud800 c")
    assert Tokenizer.default("openclip").encode("ab \ud800 c")  # ftfy's modes replace it
