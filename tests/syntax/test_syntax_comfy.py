"""ComfyUI dialect: expected values are ComfyUI's own (token_weights docstring examples in
comfy/sd1_clip.py) or follow from its documented rules."""

import pytest

from sdclip.syntax.prompt import PromptSyntaxError
from sdclip.syntax import parse


def frags(text, **kw):
    p = parse(text, "comfy", **kw)
    assert p.combine == "single" and len(p.parts) == 1
    return [(f.text, f.weight) for f in p.parts[0].sequence.fragments]


def same(got, expected):
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


@pytest.mark.parametrize(
    "text, expected",
    [  # ComfyUI token_weights docstring
        ("(foo)", [("foo", 1.1)]),
        ("(foo)(bar)", [("foo", 1.1), ("bar", 1.1)]),  # segments are not merged
        ("(foo:2.0)", [("foo", 2.0)]),
        ("((foo))", [("foo", 1.21)]),
        ("((foo):1.1)", [("foo", 1.21)]),
        ("((foo:1.1))", [("foo", 1.1)]),  # absolute: outer weights do not multiply
        ("(foo:0.0)", [("foo", 0.0)]),
        ("((foo:1.0):0.0)", [("foo", 1.0)]),
        ("foo ((((lol (cat:66) attack:100)))) baz",
         [("foo ", 1.0), ("lol ", 100.0), ("cat", 66.0), (" attack", 100.0), (" baz", 1.0)]),
    ],
)
def test_comfy_docstring_examples(text, expected):
    same(frags(text), expected)


@pytest.mark.parametrize(
    "text", ["foo ((((lol (cat:666) attack:100)))) baz", "foo ((((lol (cat:66) attack):100))) baz",
             "(a:nan)", "(a:inf)", "(a:-1e9)", "(" * 60 + "a" + ")" * 60]
)
def test_absurd_weights_refused(text):
    # ComfyUI accepts these (the second gives 110); we refuse beyond ±100, NaN and inf
    with pytest.raises(PromptSyntaxError):
        parse(text, "comfy")


def test_comfy_rules():
    same(frags("[x]"), [("[x]", 1.0)])
    same(frags("\\(x\\)"), [("(x)", 1.0)])
    same(frags("\\[x\\]"), [("\\[x\\]", 1.0)])  # only \( \) escape
    same(frags("(a:b:1.2)"), [("a:b", 1.2)])
    same(frags("(a:b)"), [("a:b", 1.1)])
    same(frags("(:1.2)"), [(":1.2", 1.1)])  # a colon at the start never weights
    same(frags("(a: 1_0 )"), [("a", 10.0)])  # Python float() syntax, as ComfyUI
    same(frags("(abc"), [("(abc", 1.0)])  # unclosed: literal
    same(frags("((a)"), [("(a", 1.1)])  # ...unless it ends in ")"
    same(frags(")(a)"), [(")(a)", 1.0)])  # a stray ")" shifts ComfyUI's level count
    same(frags(")((a))"), [(")(", 1.0), ("a", 1.1), (")", 1.0)])
    same(frags("a BREAK b AND c"), [("a BREAK b AND c", 1.0)])


def test_embedding_references():
    seq = parse("embedding:EasyNeg, (worst:1.2) embedding:bad_hands", "comfy").parts[0].sequence
    got = [(f.kind, f.text) for f in seq.fragments]
    assert got == [("embedding", "EasyNeg"), ("text", ", "), ("text", "worst"), ("text", " "),
                   ("embedding", "bad_hands")]
    assert frags("x,embedding:foo") == [("x,embedding:foo", 1.0)]  # needs whitespace before
    w = parse("(embedding:foo:1.3)", "comfy").parts[0].sequence.fragments[0]
    assert (w.kind, w.text, w.weight) == ("embedding", "foo", 1.3)
    # a name ending in commas: the commas are text unless the name with them is known
    assert [f.text for f in parse("embedding:a,, b", "comfy").parts[0].sequence.fragments] == ["a", ",, b"]
    assert [f.text for f in parse("embedding:a,, b", "comfy", embeddings=["a,,"]).parts[0].sequence.fragments] == ["a,,", " b"]


def test_spans():
    text = "a (red:1.2) \\(b\\) embedding:x"
    seq = parse(text, "comfy").parts[0].sequence
    red = seq.fragments[1]
    assert text[red.start : red.end] == "red"
    for f in seq.fragments:
        assert 0 <= f.start <= f.end <= len(text)


def test_embedding_followed_by_junk_names_the_junk():
    """ComfyUI takes the next whitespace-free word as the name: `embedding:[x cat` names "[x" (unknown)."""
    p = parse("embedding:[x cat", "comfy", unknown_embedding="drop")
    assert [(f.kind, f.text) for f in p.parts[0].sequence.fragments] == [("text", " cat")]
    assert p.warnings == ("embedding:[x does not exist, ignoring (at character 0)",)
    seq = parse("embedding:[x cat", "comfy").parts[0].sequence  # "error": kept for the tokenizer to refuse
    assert [(f.kind, f.text) for f in seq.fragments] == [("embedding", "[x"), ("text", " cat")]


def test_unknown_embedding_drop_or_error():
    text = "a embedding:foo, b embedding:bar\nembedding:baz"
    p = parse(text, "comfy", embeddings=["bar"], unknown_embedding="drop")
    assert [(f.kind, f.text) for f in p.parts[0].sequence.fragments] == [
        ("text", "a "), ("text", ", b "), ("embedding", "bar"), ("text", "\n")
    ]
    assert [w.split(" does")[0] for w in p.warnings] == ["embedding:foo", "embedding:baz"]
    p = parse(text, "comfy", embeddings=["bar"])
    assert [f.text for f in p.parts[0].sequence.fragments if f.kind == "embedding"] == ["foo", "bar", "baz"]
    assert p.warnings == ()
    assert parse("a\tembedding:foo", "comfy", unknown_embedding="drop").warnings == ()  # ComfyUI splits at " " / "\n"
    with pytest.raises(ValueError, match="unknown_embedding"):
        parse("x", "comfy", unknown_embedding="ignore")


def test_nested_groups_are_linear_issue_16_2():
    """`"("*n + "a:1.1)"*n` was quadratic (each group joined its text for an error message it rarely
    needed: 112 KB took 13 s); the weight check now joins text only for a refused weight."""
    import time

    text = "(" * 16_000 + "a:1.1)" * 16_000  # 112 KB
    t = time.perf_counter()
    p = parse(text, "comfy")
    assert time.perf_counter() - t < 5  # ~0.2 s when linear
    assert [(f.text, f.weight) for f in p.parts[0].sequence.fragments[:2]] == [("a", 1.1), ("a", 1.1)]
    with pytest.raises(PromptSyntaxError, match="not usable"):
        parse("(" * 1000 + "a:1e9)" + "b)" * 999, "comfy")
