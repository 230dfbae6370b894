"""AUTOMATIC1111 dialect: expected values are A1111's own (its prompt_parser.py doctests and
REFERENCE.md §4) or follow directly from its documented rules; none were produced by our code."""

import pytest

from sdclip.syntax.prompt import PromptSyntaxError
from sdclip.syntax import parse, schedule


def frags(text, **kw):
    p = parse(text, "a1111", **kw)
    assert len(p.parts) == 1
    return [(f.text, f.weight) for f in p.parts[0].sequence.fragments]


def assert_frags(got, expected):
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_reference_example_exactly():
    got = frags("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert_frags(
        got,
        [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
         (", sun, ", 1.1), ("sky", 1.4641), (".", 1.1)],
    )
    # A1111's doctest shows the bits too: multipliers apply in closing order
    assert got[1][1] == 1.5730000000000004 and got[7][1] == 1.4641000000000006


@pytest.mark.parametrize(
    "text, expected",
    [  # parse_prompt_attention doctests
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ],
)
def test_a1111_doctests(text, expected):
    assert_frags(frags(text), expected)


def test_brackets_and_weights():
    assert_frags(frags("[x]"), [("x", 1 / 1.1)])
    assert_frags(frags("((x))"), [("x", 1.21)])
    assert_frags(frags("[[x]]"), [("x", 1 / 1.21)])
    assert_frags(frags("(x:1.5)"), [("x", 1.5)])
    assert_frags(frags("(x: 0.25 )"), [("x", 0.25)])
    assert_frags(frags("((x:2))"), [("x", 2.2)])  # nesting multiplies
    assert_frags(frags("[(x:2)]"), [("x", 2 / 1.1)])
    assert_frags(frags("a [b"), [("a ", 1.0), ("b", 1 / 1.1)])  # unclosed applies to the end


def test_escapes_and_literals():
    assert_frags(frags("a \\\\ b"), [("a \\ b", 1.0)])
    assert_frags(frags("\\(x\\)"), [("(x)", 1.0)])
    # a closer with nothing open is literal text in A1111 (kept, merged with its neighbours)
    assert_frags(frags("a)b]c"), [("a)b]c", 1.0)])
    assert_frags(frags("a:b"), [("a:b", 1.0)])
    assert_frags(frags("x:1.2)"), [("x:1.2)", 1.0)])


def test_equal_weight_runs_merge():
    assert_frags(frags("(a)(b:1.1)c"), [("ab", 1.1), ("c", 1.0)])


def test_break():
    seq = parse("a, BREAK b (c BREAK d)", "a1111").parts[0].sequence
    kinds = [f.kind for f in seq.fragments]
    assert kinds == ["text", "break", "text", "text", "break", "text"]
    texts = [f.text for f in seq.fragments if f.kind == "text"]
    assert texts == ["a,", "b ", "c", "d"]  # the whitespace around BREAK goes with it
    assert frags("BREAKING break") == [("BREAKING break", 1.0)]  # whole word, upper-case only
    starts = parse("BREAK a", "a1111").parts[0].sequence.fragments
    assert starts[0].kind == "break"


def test_and_parts_and_weights():
    p = parse("a cat :1.5 AND a dog AND (red:1.2) fox:0.5", "a1111")
    assert p.combine == "and"
    assert [part.weight for part in p.parts] == [1.5, 1.0, 0.5]
    assert [part.sequence.text for part in p.parts] == ["a cat", " a dog", " red fox"]
    assert p.parts[2].sequence.fragments[1].weight == pytest.approx(1.2)
    assert parse("ANDROID", "a1111").combine == "single"
    single = parse("a cat:2", "a1111")  # A1111 scales that one cond's guidance
    assert single.combine == "and" and single.parts[0].weight == 2.0


def test_embeddings_are_whole_words_with_context_weight():
    seq = parse("(easyneg:1.2), badhands", "a1111", embeddings=["EasyNeg", "bad"]).parts[0].sequence
    kinds = [(f.kind, f.text) for f in seq.fragments]
    assert kinds == [("embedding", "EasyNeg"), ("text", ", badhands")]
    assert seq.fragments[0].weight == pytest.approx(1.2)
    src = "(easyneg:1.2), badhands"
    f = seq.fragments[0]
    assert src[f.start : f.end].lower() == "easyneg"


@pytest.mark.parametrize(
    "text, expected",
    [  # get_learned_conditioning_prompt_schedules doctests (steps=10)
        ("test", [[10, "test"]]),
        ("a [b:3]", [[3, "a "], [10, "a b"]]),
        ("a [b: 3]", [[3, "a "], [10, "a b"]]),
        ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
        ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
        ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
        ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
        ("a [unbalanced", [[10, "a [unbalanced"]]),
        ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
        ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
        ("[a|(b:1.1)]", [[i, "a" if i % 2 else "(b:1.1)"] for i in range(1, 11)]),
        ("[fe|]male", [[i, "female" if i % 2 else "male"] for i in range(1, 11)]),
        ("[fe|||]male", [[i, "female" if i % 4 == 1 else "male"] for i in range(1, 11)]),
    ],
)
def test_schedule_a1111_doctests(text, expected):
    assert [[e.end_step, e.text] for e in schedule(text, 10).entries] == expected


def test_schedule_fraction_and_steps():
    s = schedule("[a:b:0.5]", 20)
    assert [(e.end_step, e.text) for e in s.entries] == [(10, "a"), (20, "b")]
    assert [s.at(i) for i in (1, 10, 11, 20)] == ["a", "a", "b", "b"]
    assert [(e.end_step, e.text) for e in schedule("[a::5] x", 20).entries] == [(5, "a x"), (20, " x")]
    # A1111 >= 1.6: a "." makes it a fraction; the old rule: < 1 is a fraction
    assert [e.end_step for e in schedule("[a:b:1.0]", 20).entries] == [20]
    assert [e.end_step for e in schedule("[a:b:1.0]", 20, old_scheduling=True).entries] == [1, 20]
    # a "|" outside [..|..] makes A1111's grammar fail: nothing is scheduled
    assert [e.text for e in schedule("a | [b:c:5]", 10).entries] == ["a | [b:c:5]"]


def test_parse_reads_scheduled_text_at_first_step():
    assert frags("[cat:dog:0.5] x [a|b]") == [("cat x a", 1.0)]
    assert frags("[cat:dog:0]") == [("dog", 1.0)]
    f = parse("[(cat:1.3):dog:5]", "a1111").parts[0].sequence.fragments
    assert (f[0].text, f[0].start, f[0].end) == ("cat", 2, 5)
    assert f[0].weight == pytest.approx(1.3)


@pytest.mark.parametrize(
    "text",
    ["(x:1000)", "(x:1.2.3)", "(x:.)", "(" * 100 + "x" + ")" * 100, "a:1000", "a AND b:200",
     "(" * 300 + "x", "(a:" + "9" * 400 + ")"],
)
def test_bad_input_raises_prompt_syntax_error(text):
    with pytest.raises(PromptSyntaxError) as e:
        parse(text, "a1111")
    assert 0 <= e.value.position <= len(text)
    assert "^" in str(e.value)


def test_spans():
    text = "a (red:1.2) \\(fox\\)"
    for f in parse(text, "a1111").parts[0].sequence.fragments:
        assert 0 <= f.start <= f.end <= len(text)
    red = parse(text, "a1111").parts[0].sequence.fragments[1]
    assert text[red.start : red.end] == "red"


def test_exponents_are_not_weights_in_a1111():
    # A1111's weight patterns take digits and dots only: "1e400" stays text
    assert frags("(a:1e400)") == [("a:1e400", pytest.approx(1.1))]
    assert parse("a:1e9", "a1111").parts[0].weight == 1.0


# issue 11.3 / 11.14 / 11.11 -----------------------------------------------------------------------


def test_schedule_splits_at_and_first_then_schedules_each_part():
    """A1111 splits on AND first: a part its grammar cannot parse stays as written, the others schedule."""
    s = schedule("a | b AND [c:d:5]", 20)
    assert [(e.end_step, e.parts) for e in s.entries] == [(5, ("a | b ", " c")), (20, ("a | b ", " d"))]
    assert [e.text for e in s.entries] == ["a | b AND c", "a | b AND d"]
    # each entry's text parses back to the same parts, AND weights kept
    s = schedule("[x:y:3] :1.5 AND z [p|q]", 4)
    assert [e.text for e in s.entries] == ["x :1.5 AND z p", "x :1.5 AND z q", "x :1.5 AND z p", "y :1.5 AND z q"]
    p = parse(s.entries[-1].text)
    assert [(pt.weight, pt.sequence.text) for pt in p.parts] == [(1.5, "y"), (1.0, " z q")]


@pytest.mark.parametrize(
    "text, steps, hires, expected",
    [  # A1111 prompt_parser doctests (base 10, hires 10) and the rule they follow
        ("a [b:.5] c", 10, 10, [(10, "a b c")]),
        ("a [b:1.5] c", 10, 10, [(5, "a  c"), (10, "a b c")]),
        ("a [b:15] c", 10, 10, [(5, "a  c"), (10, "a b c")]),  # integers count on from the first pass
        ("a [b:5] c", 10, 10, [(10, "a b c")]),  # already past in the second pass
        ("a [b:1.5] c", 10, None, [(10, "a  c")]),  # min(steps, int(15)) = 10: b never shows
    ],
)
def test_schedule_hires_steps(text, steps, hires, expected):
    s = schedule(text, steps, hires_steps=hires)
    assert [(e.end_step, e.text) for e in s.entries] == expected
    assert s.steps == (hires or steps)


def test_old_scheduling_ignores_hires_steps():
    s = schedule("a [b:0.5] c", 10, old_scheduling=True, hires_steps=4)
    assert s.steps == 10 and [(e.end_step, e.text) for e in s.entries] == [(5, "a  c"), (10, "a b c")]


def test_switch_step_is_exact_for_a_step_count():
    """`[a:b:0.04]`: int(0.04·20) = 0, so A1111 gives b from step 1; at 30 steps int(1.2) = 1: a, then b."""
    assert [e.text for e in schedule("[a:b:0.04]", 20).entries] == ["b"]
    assert [(e.end_step, e.text) for e in schedule("[a:b:0.04]", 30).entries] == [(1, "a"), (30, "b")]
    assert frags("[a:b:0.04]", steps=20) == [("b", 1.0)]
    assert frags("[a:b:0.04]", steps=30) == [("a", 1.0)]
    assert frags("[a:b:0.04]", steps=30, step=2) == [("b", 1.0)]
    assert frags("[a:b:0.04]") == [("a", 1.0)]  # no step count: the sign of `when` decides
    for step in range(1, 21):  # parse(step=k) agrees with schedule() at every step
        want = schedule("x [a:b:0.3] [c|d|e] y AND [p::7]", 20).at(step)
        got = parse("x [a:b:0.3] [c|d|e] y AND [p::7]", steps=20, step=step)
        # (whitespace aside: A1111 strips a part before scheduling, then tokenizes " " as nothing)
        assert [pt.sequence.text.strip() for pt in got.parts] == [pt.sequence.text.strip() for pt in parse(want).parts]
    with pytest.raises(ValueError, match="step must be"):
        parse("[a:b:3]", steps=10, step=11)
    with pytest.raises(ValueError, match="hires_steps"):
        schedule("x", 10, hires_steps=0)


def test_extra_network_tags_are_removed_and_recorded():
    text = "a, <lora:film grain:0.8>, (b:1.2) <hypernet:h:1:te=2> AND c <lyco:q:1>"
    p = parse(text)
    assert [(n.kind, n.name, n.args) for n in p.extra_networks] == [
        ("lora", "film grain", ("0.8",)), ("hypernet", "h", ("1", "te=2")), ("lyco", "q", ("1",))
    ]
    assert [text[n.start : n.end] for n in p.extra_networks] == ["<lora:film grain:0.8>", "<hypernet:h:1:te=2>",
                                                                  "<lyco:q:1>"]
    # replaced by nothing, as A1111 does: the commas around stay
    assert [[(f.text, f.weight) for f in pt.sequence.fragments] for pt in p.parts] == [
        [("a, , ", 1.0), ("b", 1.2)], [(" c", 1.0)]  # an AND part's trailing whitespace goes, as in A1111
    ]
    b = p.parts[0].sequence.fragments[1]
    assert text[b.start : b.end] == "b"
    # not tags: no colon, empty args, a non-word kind
    assert parse("<lora> <lora:> <:x> <a-b:c>").extra_networks == ()
    assert frags("<lora> <lora:> <:x>") == [("<lora> <lora:> <:x>", 1.0)]
    # removed before scheduling (a tag's colons never make a schedule) and listed on the schedule
    s = schedule("[cat:<lora:x:0.5>dog:5]", 10)
    assert [e.text for e in s.entries] == ["cat", "dog"] and s.extra_networks[0].name == "x"
    # other dialects leave them as text
    assert parse("<lora:x:1> a", "comfy").extra_networks == ()


def test_embedding_names_whose_lowercase_differs_do_not_raise():
    """16.7: `ſ` and `µ-style` (lower-casing / case-folding quirks) once raised KeyError."""
    seq = parse("x ſ y µ-style Z", embeddings=["ſ", "µ-style", "z"]).parts[0].sequence
    assert [(f.kind, f.text) for f in seq.fragments if f.kind == "embedding"] == [
        ("embedding", "ſ"), ("embedding", "µ-style"), ("embedding", "z")
    ]
    # re.IGNORECASE would equate ſ with s and micro µ with Greek μ: a name must not eat ordinary words
    assert frags("s S μ-style", embeddings=["ſ", "µ-style"]) == [("s S μ-style", 1.0)]
    assert frags("İstanbul", embeddings=["i̇stanbul"]) == [("İstanbul", 1.0)]


def test_token_ids_matching_leaves_bare_names_to_the_tokenizer():
    assert frags("easyneg x", embeddings=["easyneg"], embedding_match="token-ids") == [("easyneg x", 1.0)]
    with pytest.raises(ValueError, match="embedding_match"):
        parse("x", embedding_match="sometimes")
