"""Inspect draws each token from the characters it was read from, where a dialect rewrote the text a
fragment holds (compel's syntax and joins, A1111's removed `<lora:…>` tags, escapes, schedules).

The oracle is the tokenizer's own decoding of each id: a slot's drawn text (and the source characters its
span covers) must read as that token. Issue 20's inspect bugs: `--syntax compel "a (red:1.3) fox"` drew
"(re d : . )" and `"a fox <lora:x:1>, "` drew "fox <" for "fox ,"."""

from __future__ import annotations

import pytest

from sdclip.cli.main import main
from sdclip.conventions.family import get_family
from sdclip.conventions.presets import options_from_user
from sdclip.describe import readable_slots
from sdclip.prepare import prepare
from sdclip.tokenizer import Tokenizer
from sdclip.tokenizer.source_spans import align

CASES = [
    ("compel", "a (red:1.3) fox"),
    ("compel", "a,b (c d)1.2, e\\(f\\) g"),
    ("compel", "a red++ fox, (misty forest)0.8 at dawn"),
    ("a1111", "a fox <lora:x:1>, "),
    ("a1111", "a fox <lora:x:1>, a red dog"),
    ("a1111", "<lora:detail:0.8> a <hypernet:h:1> castle, (tall:1.2) towers <lyco:y:0.5> at dusk"),
    ("a1111", "a [dog:cat:0.5] fox <lora:z:1> in snow"),
    ("a1111", "a \\(fox\\) <lora:x:1>, a dog"),
    # long verbatim runs between the rewrites, several rows
    ("a1111", " ".join(f"a misty forest at dawn number {i} with a quiet red fox <lora:l{i % 3}:0.5>" for i in range(12))),
    ("compel", ", ".join(f"a misty forest at dawn number {i},with a quiet red fox" for i in range(12))),
]


def _options(dialect: str):
    return options_from_user("a1111" if dialect == "a1111" else "compel")


@pytest.mark.parametrize(("dialect", "text"), CASES, ids=[f"{d}-{i}" for i, (d, _) in enumerate(CASES)])
def test_every_slot_reads_as_its_token(dialect, text):
    options = _options(dialect)
    tok = Tokenizer.default(options.normalize)
    prepared = prepare(text, options, get_family("sd1"), tok)
    seen = 0
    for part in prepared.parts:
        for r in range(len(part.rows[0])):
            for slot in readable_slots(text, part, r):
                if slot["kind"] != "token" or slot["cont"]:
                    continue
                want = tok.decode([slot["id"]]).replace(" ", "")
                a, b = slot["span"]
                assert slot["t"].lower().replace(" ", "") == want, (text, slot)
                assert text[a:b].lower().replace(" ", "") == want, (text, slot)
                seen += 1
    assert seen >= 3


def test_terminal_rows_show_the_right_characters(capsys):
    assert main(["inspect", "--syntax", "compel", "a (red:1.3) fox"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("row 1"))
    assert "a red : 1 . 3 fox" in row and "(" not in row.split("│")[1].split("[EOS]")[0]
    assert main(["inspect", "--family", "sd1", "a fox <lora:x:1>, "]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("row 1"))
    assert "a fox , [EOS]" in row and "<" not in row.split("│")[1].split("[EOS]")[0]


def test_align_maps_kept_characters_and_places_inserted_spaces():
    source = "a (red:1.3) fox"
    text = "a red:1 . 3 fox"
    where = align(text, source)
    assert len(where) == len(text) + 1
    for k, c in enumerate(text):
        if not c.isspace():
            assert source[where[k]] == c
    assert where == sorted(where)  # order kept
    assert align("a fox , a dog", "a fox <lora:x:1>, a dog")[6] == 16  # the comma after the tag


@pytest.mark.slow  # trains the tiny T5 tokenizer (~10 s)
@pytest.mark.parametrize("split", ["text", "fragments"])
@pytest.mark.parametrize(("dialect", "text"), [CASES[0], CASES[4], CASES[6], CASES[8]], ids=["compel", "tags", "schedule", "long"])
def test_t5_spans_cover_the_characters_of_their_pieces(dialect, text, split):
    """The T5 lane maps its spans the same way (its `dropped` text and the page's highlights read them): each
    piece's characters are the source's characters under its span."""
    pytest.importorskip("sentencepiece")
    pytest.importorskip("torch")
    from tiny_pipelines import t5_tokenizer_dir

    from sdclip.syntax import parse
    from sdclip.tokenizer.t5 import T5Tokenizer, tokenize_t5

    tok = T5Tokenizer.from_folder(t5_tokenizer_dir())
    seq = parse(text, dialect).parts[0].sequence
    stream = tokenize_t5(seq, tok, None, source=text, split=split).stream
    checked = 0
    for token_id, (a, b) in zip(stream.ids, stream.spans):
        piece = tok.token_text(token_id).replace("▁", "")
        if not piece or piece.startswith("<"):
            continue  # a lone word start, a byte piece
        assert text[a:b].replace(" ", "") == piece, (text, piece, text[a:b])
        checked += 1
    assert checked >= 3
