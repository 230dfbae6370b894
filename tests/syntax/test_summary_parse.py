"""What a summary (`sdclip inspect` of a huge prompt) reads of a prompt: the first AND parts (the rest
counted, issue 24.8) and a prefix of a part's fragments whose tokens are a prefix of the whole's."""

from __future__ import annotations

import pytest

from sdclip.syntax import parse
from sdclip.syntax.prefix import sequence_prefix
from sdclip.tokenizer import Tokenizer
from sdclip.tokenizer.clip import tokenize


def test_max_parts_parses_the_first_parts_and_counts_the_rest():
    text = "a (red:1.2) fox AND b:0.5 AND " * 1000 + "last"
    whole = parse(text)
    some = parse(text, max_parts=5)
    assert some.parts == whole.parts[:5] and some.parts_omitted == len(whole.parts) - 5 == 1996
    assert some.combine == whole.combine == "and" and whole.parts_omitted == 0
    assert parse("a AND b", max_parts=1).combine == "and"  # still an AND prompt, one part shown
    with pytest.raises(ValueError, match="max_parts"):
        parse("a", max_parts=0)


@pytest.mark.parametrize("text", [
    "a photo of a (red fox:1.2), [snow], BREAK golden hour, " * 50,
    "one long fragment without any syntax at all " * 100,
    "猫" * 3000,
])
def test_a_prefix_tokenizes_to_a_prefix_of_the_tokens(text):
    tok = Tokenizer.default("hf-slow")
    seq = parse(text).parts[0].sequence
    full = tokenize(seq, tok, source=text)
    for chars in (10, 100, 1000):
        head, whole = sequence_prefix(seq, chars)
        assert not whole
        got = tokenize(head, tok, source=text)
        n = max(0, len(got.ids) - 8)  # a fragment cut inside a word may differ in its last word's tokens only
        assert got.ids[:n] == full.ids[:n] and got.weights[:n] == full.weights[:n] and got.spans[:n] == full.spans[:n]
    assert sequence_prefix(seq, 10 * len(text)) == (seq, True)
