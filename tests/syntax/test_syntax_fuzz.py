"""Every dialect, any string: a Prompt with finite in-range weights and in-bounds ordered spans,
or PromptSyntaxError — never another exception. Plus linear parse time and the dispatcher."""

import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdclip.syntax.prompt import MAX_WEIGHT, Prompt, PromptSyntaxError
from sdclip.syntax import DIALECTS, parse, schedule

SYNTAX_HEAVY = st.text(alphabet='()[]{}:|\\"+-.,=<> abAND BREAK 0123456789e\n\t\x0b', max_size=60)
ANY = st.text(max_size=40)
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(text, dialect, embeddings=()):
    try:
        p = parse(text, dialect, embeddings)
    except PromptSyntaxError as e:
        assert 0 <= e.position <= len(text)
        return
    assert isinstance(p, Prompt) and p.parts and p.source == text
    for part in p.parts:
        assert math.isfinite(part.weight) and abs(part.weight) <= MAX_WEIGHT
        last = 0
        for f in part.sequence.fragments:
            assert math.isfinite(f.weight) and abs(f.weight) <= MAX_WEIGHT
            assert 0 <= f.start <= f.end <= len(text)
            assert f.start >= last
            last = f.start
            assert f.kind in ("text", "break", "embedding")
            if f.kind == "text":
                assert f.text


@pytest.mark.parametrize("dialect", DIALECTS)
@FUZZ
@given(text=st.one_of(SYNTAX_HEAVY, ANY))
def test_any_string_parses_or_raises_prompt_syntax_error(dialect, text):
    check(text, dialect, embeddings=["ab", "<e>"])


@FUZZ
@given(text=SYNTAX_HEAVY, steps=st.integers(1, 30))
def test_schedule_any_string(text, steps):
    s = schedule(text, steps)
    ends = [e.end_step for e in s.entries]
    assert ends == sorted(set(ends)) and ends[-1] == steps and ends[0] >= 1
    for e in s.entries:
        check(e.text, "a1111")


def test_plain():
    p = parse("a (b:2) [c] BREAK d AND e", "plain")
    assert [(f.text, f.weight) for f in p.parts[0].sequence.fragments] == [("a (b:2) [c] BREAK d AND e", 1.0)]
    seq = parse("x <e> y", "plain", embeddings=["<e>"]).parts[0].sequence
    assert [(f.kind, f.text) for f in seq.fragments] == [("text", "x "), ("embedding", "<e>"), ("text", " y")]


def test_dispatcher_errors():
    with pytest.raises(ValueError):
        parse("a", "nope")
    with pytest.raises(PromptSyntaxError):
        parse(None, "a1111")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse("a", "a1111", embeddings="abc")
    with pytest.raises(ValueError):
        schedule("a", 0)
    assert [e.text for e in schedule("[a:b:2]", 4, "comfy").entries] == ["[a:b:2]"]


def _seconds(text, dialect):
    t0 = time.perf_counter()
    try:
        parse(text, dialect)
    except PromptSyntaxError:
        pass
    return time.perf_counter() - t0


@pytest.mark.parametrize("dialect", DIALECTS)
def test_megabyte_prompt_parses_in_linear_time(dialect):
    unit = "(a:1.1) [b] "
    small, big = unit * (100_000 // len(unit)), unit * (1_000_000 // len(unit))
    t_small = min(_seconds(small, dialect) for _ in range(2))
    t_big = _seconds(big, dialect)
    assert t_big < 20  # a megabyte, even on a loaded CI machine
    assert t_big < 25 * max(t_small, 0.01)  # ~10x the text: linear, with a generous factor


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("shape", ["deep", "unclosed", "alternating"])
def test_deep_nesting_is_fast_and_clean(dialect, shape):
    n = 200_000
    text = {
        "deep": "(" * n + "a" + ")" * n,
        "unclosed": "([" * n + "a",
        "alternating": "(a [a " * n,
    }[shape]
    t0 = time.perf_counter()
    check(text, dialect)
    assert time.perf_counter() - t0 < 10
