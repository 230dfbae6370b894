"""The T5 tokenizer against transformers' (what diffusers' SD3 `tokenizer_3` / Flux `tokenizer_2` give)."""

from __future__ import annotations

import json

import pytest

from sdclip.syntax import parse
from sdclip.syntax.prompt import Fragment, Sequence
from sdclip.tokenizer.t5 import T5Tokenizer, T5TokenizerError, tokenize_t5
from tiny_t5 import build_tokenizer
from tokenizer_corpus import corpus


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("t5tok"))


@pytest.fixture(scope="module")
def tok(folders):
    return T5Tokenizer.from_folder(folders["json"])


@pytest.mark.parametrize("kind", ["json", "legacy", "spiece"])
def test_ids_equal_transformers(folders, kind):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(folders[kind]))
    mine = T5Tokenizer.from_folder(folders[kind])
    for text in corpus(400, seed=5) + ["", " ", "  lead and trail  ", "a\tb\nc", "<extra_id_0> x </s>", "ＡＢＣ ½"]:
        for length in (16, 77, None):
            want = ref(text, padding="max_length" if length else False, max_length=length,
                       truncation=length is not None).input_ids
            assert mine(text, length) == want, (kind, text, length)


def test_pad_and_eos(tok):
    ids = tok("a red fox", 12)
    assert ids[len(tok.encode("a red fox"))] == tok.eos_id == 1
    assert ids[-1] == tok.pad_id == 0 and len(ids) == 12


def test_spans_point_at_the_words(tok):
    text = "a red fox, leaping"
    ids, spans = tok.encode_with_spans(text)
    words = {text[a:b].strip() for a, b in spans}
    assert {"red", "fox", "leaping"} <= words or all(0 <= a <= b <= len(text) for a, b in spans)
    assert all(0 <= a <= b <= len(text) for a, b in spans)
    assert [a for a, _ in spans] == sorted(a for a, _ in spans)


def test_weights_follow_the_first_character(tok):
    prompt = "a (red:1.5) fox BREAK [blue] sky"
    seq = parse(prompt, "a1111").parts[0].sequence
    t = tokenize_t5(seq, tok, source=prompt)
    assert t.stream.ids == tok.encode("a red fox blue sky")
    red = [w for (a, b), w in zip(t.stream.spans, t.stream.weights) if a >= 3 and b <= 6]
    assert red and all(w == 1.5 for w in red)
    blue = [w for (a, b), w in zip(t.stream.spans, t.stream.weights) if a >= 23 and b <= 27]
    assert blue and all(abs(w - 1 / 1.1) < 1e-9 for w in blue)
    assert all(prompt[a:b].strip() in prompt for a, b in t.stream.spans)


def test_fragment_split_is_per_fragment(tok):
    frags = (Fragment("a red", 1.0, 0, 5), Fragment("fox", 2.0, 6, 9))
    t = tokenize_t5(Sequence(frags), tok, split="fragments", source="a red fox")
    assert t.stream.ids == tok.encode("a red") + tok.encode("fox")
    assert t.stream.weights == [1.0] * len(tok.encode("a red")) + [2.0] * len(tok.encode("fox"))


def test_truncation_reports_what_was_dropped(tok):
    text = "a red fox in the snow, " * 10
    t = tokenize_t5(Sequence((Fragment(text, 1.0, 0, len(text)),)), tok, 16, source=text)
    assert t.count == 16 and t.dropped_tokens > 0
    assert text.endswith(t.dropped) and len(t.dropped) > 0
    assert t.ids(16) == tok(text, 16)
    assert tokenize_t5(Sequence((Fragment(text, 1.0, 0, len(text)),)), tok, None).dropped == ""
    with pytest.raises(ValueError):
        t.ids(8)


def test_embeddings_are_left_out(tok):
    frags = (Fragment("a ", 1.0, 0, 2), Fragment("myemb", 1.0, 2, 7, "embedding"), Fragment(" fox", 1.0, 7, 11))
    assert tokenize_t5(Sequence(frags), tok).stream.ids == tok.encode("a  fox")


def test_bad_folders_are_refused(tmp_path, folders):
    with pytest.raises(T5TokenizerError, match="no tokenizer.json or spiece.model"):
        T5Tokenizer.from_folder(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(T5TokenizerError, match="not a readable"):
        T5Tokenizer.from_folder(bad)
    (bad / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []}}))
    with pytest.raises(T5TokenizerError, match="not T5"):
        T5Tokenizer.from_folder(bad)
    sp = tmp_path / "sp"
    sp.mkdir()
    (sp / "spiece.model").write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(T5TokenizerError):
        T5Tokenizer.from_folder(sp)
    with pytest.raises(TypeError):
        T5Tokenizer.from_folder(folders["json"]).encode(b"bytes")
