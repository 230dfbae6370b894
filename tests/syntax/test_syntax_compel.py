"""compel dialect: parity with compel's own parser (compel.prompt_parser.PromptParser)."""

import random

import pytest

from sdclip.syntax.prompt import PromptSyntaxError
from sdclip.syntax import parse

compel_parser = pytest.importorskip("compel.prompt_parser")
PP = compel_parser.PromptParser()


def reference(text):
    """compel's fragments: [(text, weight)] per part, '' fragments dropped (they hold no tokens)."""
    conj = PP.parse_conjunction(text)
    assert not conj.lora_weights
    out = []
    for p in conj.prompts:
        if isinstance(p, compel_parser.Blend):
            out.append(("blend", p.normalize_weights, [[(f.text, f.weight) for f in q.children if f.text] for q in p.prompts], list(p.weights)))
        else:
            out.append([(f.text, f.weight) for f in p.children if f.text])
    if len(out) > 1:
        return ("concat", out, list(conj.weights))
    return (out or [[]], conj.weights[0] if conj.weights else 1.0)


def ours(text):
    p = parse(text, "compel")
    seq = lambda s: [(f.text, f.weight) for f in s.fragments]  # noqa: E731
    if p.combine == "blend":
        return ([("blend", p.normalize, [seq(x.sequence) for x in p.parts], [x.weight for x in p.parts])], 1.0)
    if p.combine == "concat":
        return ("concat", [seq(x.sequence) for x in p.parts], [x.weight for x in p.parts])
    return ([seq(p.parts[0].sequence)], p.parts[0].weight)


CASES = [
    "a cat", "a  cat,dog", "word+ word++ word- word--", "(a b)1.3", "(a b)+", "(a b) 1.3", '"a b"0.5',
    "a+b", "(a)-0.5", "word+++-", "(a) .attend(2)", "cat.attend( 0.5 ) dog", "(e (f)1.5)0.5",
    "((a b)1.1 c)0.9 d", '"a \\"b\\" c"', "\\(a\\) \\, \\+ b\\-", "a\\\"b", "", "  ", "()", "a (", "a )",
    "a.b", "cat. dog", "1+", "-a", "+a", "a-+", '("a", "b").blend(1, 0.8)',
    '("a", "b").blend(1, 0.8, no_normalize)', '("a b", "c").and()', '("a", "b").and(1, 0.5)',
    "(a, b).blend( 1 , 2 )", '("a (b)1.2", c+).blend(0.3,0.7)', "(a).blend(1)", '""+ x',
    "masterpiece, (best quality)1.2, 1girl, (red eyes)++, \"blue sky\"0.8, <easy-neg>",
]


@pytest.mark.parametrize("text", CASES)
def test_parity_with_compel(text):
    assert ours(text) == reference(text)


def _random_prompt(rng):
    words = ["cat", "dog", "a", "red", "1", "x-y", "b+c", "<tok>", "\\(", '\\"', "0.5", ",", "."]

    def frag(d=0):
        r = rng.random()
        if d > 1 or r < 0.35:
            return rng.choice(words)
        if r < 0.5:
            return rng.choice(words) + rng.choice(["+", "++", "-", "--", "+-"])
        if r < 0.65:
            inner = " ".join(frag(d + 1) for _ in range(rng.randint(0, 3)))
            return "(" + inner + ")" + rng.choice(["", "+", "-", "1.3", "0.5", "2", "-1", " 1.2", ".5"])
        if r < 0.75:
            return '"' + " ".join(frag(d + 1) for _ in range(rng.randint(0, 3))) + '"' + rng.choice(["", "+", "0.8"])
        if r < 0.85:
            return "(" + frag(d + 1) + ").attend(" + rng.choice(["1.5", "+", "--", " 2 "]) + ")"
        return frag(d + 1) + " " + frag(d + 1)

    body = " ".join(frag() for _ in range(rng.randint(0, 5)))
    if rng.random() < 0.7:
        return body
    parts = ['"' + frag() + '"' for _ in range(rng.randint(1, 3))]
    ws = [rng.choice(["1", "0.5", "2", ".3"]) for _ in parts] if rng.random() < 0.7 else []
    op = rng.choice([".blend", ".and"])
    return "(" + ", ".join(parts) + ")" + op + "(" + ",".join(ws) + ")"


def _agrees_with_compel(text: str) -> bool:
    """Where compel's parser refuses a text we raise PromptSyntaxError; elsewhere we parse it as compel does.
    True when compel parsed it."""
    try:
        expected = reference(text)
    except Exception:
        with pytest.raises(PromptSyntaxError):
            parse(text, "compel")
        return False
    assert ours(text) == expected, repr(text)
    return True


def test_parity_with_compel_random_prompts():
    rng = random.Random(1234)
    checked = 0
    for _ in range(150):
        checked += _agrees_with_compel(_random_prompt(rng))
    assert checked > 100


def test_parity_with_compel_random_strings():
    rng = random.Random(99)
    alphabet = 'ab ()"+-.,1 0\\=\t'
    for _ in range(600):
        _agrees_with_compel("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))))


def test_structures():
    p = parse('("a cat", "a dog").blend(0.7, 0.3, no_normalize)', "compel")
    assert p.combine == "blend" and p.normalize is False
    assert [(x.sequence.text, x.weight) for x in p.parts] == [("a cat", 0.7), ("a dog", 0.3)]
    p = parse('("a cat", "a dog").and()', "compel")
    assert p.combine == "concat" and [x.sequence.text for x in p.parts] == ["a cat", "a dog"]


def test_embeddings():
    seq = parse("a photo of <my-cat>++ sitting", "compel", embeddings=["<my-cat>"]).parts[0].sequence
    emb = [f for f in seq.fragments if f.kind == "embedding"]
    assert [(f.text, f.weight) for f in emb] == [("<my-cat>", pytest.approx(1.21))]


@pytest.mark.parametrize(
    "text",
    ["a\x0bb", '("a", "b").blend(1)', '("a", "b").blend(x, y)', '("a", "b").and() tail',
     "a.swap(b)", "withLora(x, 0.5) a", "(a)1000", '("a", "b").blend(1, nan)', "(" * 80 + "a" + ")" * 80],
)
def test_refused(text):
    with pytest.raises(PromptSyntaxError):
        parse(text, "compel")


def test_embedding_trigger_token_in_angle_brackets():
    """compel/diffusers users write a loaded embedding as `<name>`: the brackets belong to the reference."""
    prompt = parse("a (photo of <myemb>)1.3 cat", "compel", embeddings=["myemb"])
    frags = prompt.parts[0].sequence.fragments
    emb = [f for f in frags if f.kind == "embedding"]
    assert [(f.text, round(f.weight, 6)) for f in emb] == [("myemb", 1.3)]
    assert "<" not in "".join(f.text for f in frags) and ">" not in "".join(f.text for f in frags)
    assert prompt.source[emb[0].start : emb[0].end] == "<myemb>"
