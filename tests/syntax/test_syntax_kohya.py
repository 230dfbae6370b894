"""The `kohya` preset against a transliteration of kohya-ss/sd-scripts' `--weighted_captions` code
(tests/kohya_oracle.py, commit 48d368f): parsed runs, rows of token ids and weights for `--max_token_length`
75 / 150 / 225, and the final hidden states and pooled vector on tiny random SD1 / SD2 / SDXL models.

Captions are printable ASCII without `&` or `<|`, where the slow tokenizer sd-scripts uses (transformers 4,
ftfy; sdclip's "hf-slow") and the transformers-5 tokenizer the oracle runs split text the same way.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kohya_oracle as ko
from a1111_models import family_models, long_prompt
from a1111_oracle import EOS, hf_tokenizer
from tiny_conditioners import make

from sdclip.conventions.presets import Options
from sdclip.syntax import parse
from sdclip.syntax.prompt import MAX_WEIGHT, PromptSyntaxError

CAPTIONS = [
    "",
    "a photo of a cat",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "(x: 1.2), (y:1.2 ), (z:.5) [[w]] (unclosed [also",
    "a cat AND a dog BREAK forest [a:b:5] [a|b] <lora:x:0.8>",
    "\\(literal\\] \\\\ lone\\backslash (x)(\\:2)(y) a)b]c",
    "masterpiece, " * 30 + "(red fox:1.4), [snow]",  # 120+ tokens
    ", ".join(["(tag%d:1.%d)" % (i, i % 9) for i in range(90)]),  # past 225 tokens: cut
    "word " * 75,  # exactly 75 tokens
    "word " * 150,
    "word " * 225,
    "(word) " * 75 + '!"#' + " after",  # row 2 of a pad-0 encoder starts with token id 0 ("!")
    "(word) " * 74 + '!"#' + " after",  # row 1 of a pad-0 encoder ends in token id 0 (see the last test)
    '!"# ' + "x " * 70,
    long_prompt(40, seed=3),
    long_prompt(12, seed=5),
]
FAMILIES = {"sd1": (EOS,), "sd2": (0,), "sdxl": (EOS, 0)}  #: family → sd-scripts' pad id per tokenizer
MAX_TOKEN_LENGTHS = (None, 150, 225)


def rows_of(n: int | None) -> int | None:
    return None if n is None else n // 75


def frags(text):
    return [(f.text, f.weight) for f in parse(text, "kohya").parts[0].sequence.fragments]


def oracle_runs(text):
    return [(t, w) for t, w in ko.parse_prompt_attention(text) if t]


# ------------------------------------------------------------------------------------------------ syntax


def test_doctests_of_sd_scripts():
    assert frags("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).") == [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]
    assert frags("\\(literal\\]") == [("(literal]", 1.0)]
    assert frags("(unnecessary)(parens)") == [("unnecessaryparens", 1.1)]
    assert frags("(unbalanced") == [("unbalanced", 1.1)]


def test_what_sd_scripts_reads_as_text():
    assert frags("(x: 1.2)") == [("x: 1.2", 1.1)]  # no space allowed around the weight
    assert frags("a AND b BREAK c") == [("a AND b BREAK c", 1.0)]
    assert frags("[a:b:5]") == [("a:b:5", 1 / 1.1)]
    assert frags("<lora:x:1>") == [("<lora:x:1>", 1.0)]
    p = parse("a cat AND a dog", "kohya")
    assert p.combine == "single" and len(p.parts) == 1


def test_an_empty_run_of_another_weight_keeps_its_neighbours_apart():
    """sd-scripts merges runs before dropping the empty one a lone backslash leaves: "x" and "y" are
    tokenized apart (a1111's merge would join them)."""
    assert frags("(x)(\\:2)(y)") == [("x", 1.1), ("y", 1.1)] == oracle_runs("(x)(\\:2)(y)")


@pytest.mark.parametrize("text", ["(x:1.2.3)", "(x:.)", "(x:200)", "((x:50):50)", "(x:" + "9" * 400 + ")"])
def test_weights_sd_scripts_crashes_on_or_no_model_can_use_are_refused(text):
    with pytest.raises(PromptSyntaxError):
        parse(text, "kohya")


def _explicit_weights(text: str) -> list[float]:
    out = []
    for w in re.findall(r":([+-]?[.\d]+)\)", text):
        try:
            out.append(float(w))
        except ValueError:
            pass
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="ab c()[]:\\.,+-0123456789", max_size=40))
def test_runs_equal_the_transliteration(text):
    try:
        expected = oracle_runs(text)
    except ValueError:
        with pytest.raises(PromptSyntaxError):
            parse(text, "kohya")
        return
    try:
        got = frags(text)
    except PromptSyntaxError:
        weights = [w for _, w in ko.parse_prompt_attention(text)] + _explicit_weights(text)
        assert any(not abs(w) <= MAX_WEIGHT for w in weights)
        return
    assert got == expected  # bit-equal weights


# ------------------------------------------------------------------------------------------------ rows


def oracle_rows(family: str, caption: str, max_token_length: int | None):
    toks = [ko.Tok(hf_tokenizer(), pad) for pad in FAMILIES[family]]
    tokens, weights = ko.tokenize_with_weights(toks, [caption], max_token_length)
    return toks, tokens, weights


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("max_token_length", MAX_TOKEN_LENGTHS)
def test_rows_equal_sd_scripts(family, max_token_length):
    cond = make(family, "kohya", max_rows=rows_of(max_token_length))
    for caption in CAPTIONS:
        _, tokens, weights = oracle_rows(family, caption, max_token_length)
        part = cond.prepare(caption).parts[0]
        for e in range(len(FAMILIES[family])):
            rows = part.rows[e]
            expected = tokens[e][0].tolist()
            for r, row in enumerate(expected):
                if EOS not in row:  # sd-scripts' full row ending in token 0: sdclip keeps its EOS (last test)
                    assert row[-2] == 0 and rows.ids[r][-1] == EOS
                    row[-1] = EOS
            assert rows.ids == expected, (caption, e)
            assert torch.equal(torch.tensor(rows.weights, dtype=torch.float32), weights[e][0]), (caption, e)
            first_eos = [ids.index(EOS) for ids in rows.ids]
            assert rows.eos == first_eos


_PIECES = st.sampled_from(["word ", "red fox, ", "(", ")", "[", "]", ":1.3)", ": 2)", '!"#', "!", "\\", "\\(",
                           "AND ", "BREAK ", "a" * 30, "12.5 ", ",", "."])
_CAPTIONS = st.lists(st.tuples(_PIECES, st.integers(1, 40)), max_size=12).map(lambda xs: "".join(p * k for p, k in xs))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_CAPTIONS, st.sampled_from(list(FAMILIES)), st.sampled_from(MAX_TOKEN_LENGTHS))
def test_rows_equal_sd_scripts_on_generated_captions(caption, family, max_token_length):
    try:
        _, tokens, weights = oracle_rows(family, caption, max_token_length)
    except ValueError:  # a weight sd-scripts cannot read: refused here
        with pytest.raises(PromptSyntaxError):
            parse(caption, "kohya")
        return
    try:
        part = _conditioner(family, max_token_length).prepare(caption).parts[0]
    except PromptSyntaxError:
        runs = [w for _, w in ko.parse_prompt_attention(caption)]
        assert any(not abs(w) <= MAX_WEIGHT for w in runs + _explicit_weights(caption))
        return
    for e in range(len(FAMILIES[family])):
        expected = tokens[e][0].tolist()
        for row in expected:
            if EOS not in row:
                row[-1] = EOS
        assert part.rows[e].ids == expected
        assert torch.equal(torch.tensor(part.rows[e].weights, dtype=torch.float32), weights[e][0])


@functools.lru_cache(maxsize=None)
def _conditioner(family, max_token_length):
    return make(family, "kohya", max_rows=rows_of(max_token_length))


def test_a_pad_zero_row_starting_with_token_0_gets_eos_there():
    caption = CAPTIONS[11]
    _, tokens, _ = oracle_rows("sdxl", caption, 225)
    ids_l, ids_g = make("sdxl", "kohya", max_rows=3).prepare(caption).parts[0].rows
    assert tokens[1][0, 1, 1] == EOS and ids_g.ids[1][1] == EOS and ids_g.eos[1] == 1  # bigG, pad 0
    assert ids_l.ids[1][1] == 0  # ViT-L pads with EOS: sd-scripts' v1 branch has no fix-up


# --------------------------------------------------------------------------------------------- tensors


def oracle_encode(family: str, caption: str, max_token_length: int | None, clip_skip: int | None = None):
    toks, tokens, weights = oracle_rows(family, caption, max_token_length)
    models = family_models(family)
    if family == "sdxl":
        h1, h2, pool = ko.sdxl_encode_tokens_with_weights(toks, models, tokens, weights)
        return torch.cat([h1, h2], dim=-1)[0], pool[0]
    encoder = ko.sd2_stored(models[0]) if family == "sd2" else models[0]
    return ko.sd_encode_tokens_with_weights(toks[0], encoder, tokens, weights, clip_skip)[0][0], None


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("max_token_length", MAX_TOKEN_LENGTHS)
def test_hidden_states_and_pooled_equal_sd_scripts(family, max_token_length):
    cond = make(family, "kohya", max_rows=rows_of(max_token_length))
    out = cond(CAPTIONS).positive
    n = 77 if max_token_length is None else max_token_length + 2
    assert out.embeds.shape[1] == n
    for b, caption in enumerate(CAPTIONS):
        hidden, pooled = oracle_encode(family, caption, max_token_length)
        close(out.embeds[b], hidden)
        if pooled is not None and EOS in oracle_rows(family, caption, max_token_length)[1][1][0, 0].tolist():
            close(out.pooled[b], pooled)


def test_sd1_clip_skip_2_is_sd_scripts_clip_skip_2():
    cond = make("sd1", "kohya", max_rows=2, clip_skip=2)
    caption = CAPTIONS[6]
    hidden, _ = oracle_encode("sd1", caption, 150, clip_skip=2)
    close(cond([caption]).positive.embeds[0], hidden)


def test_weighting_is_a_plain_product_not_a1111s_mean_restoration():
    caption = "a (red:1.5) fox in [snow]"
    kohya = make("sd1", "kohya")([caption]).positive.embeds[0]
    plain = make("sd1", "kohya")(["a red fox in snow"]).positive.embeds[0]
    hidden, _ = oracle_encode("sd1", caption, None)
    close(kohya, hidden)
    slot = 1 + len(hf_tokenizer()("a ").input_ids[1:-1])  # "red"
    close(kohya[slot], plain[slot] * 1.5)


def test_a_full_row_ending_in_token_0_differs_only_in_what_sd_scripts_pools():
    """sd-scripts leaves such a row (not the last) without an EOS and pools its BOS slot; sdclip keeps the
    EOS. The slot is dropped from the sequence and attention is causal: the hidden states are equal."""
    caption = "x " * 74 + '!"# ' + "tail"
    _, tokens, _ = oracle_rows("sdxl", caption, 150)
    assert tokens[1][0, 0, 75] == 0 and EOS not in tokens[1][0, 0].tolist()
    hidden, _ = oracle_encode("sdxl", caption, 150)
    close(make("sdxl", "kohya", max_rows=2)([caption]).positive.embeds[0], hidden)


def test_preset_options():
    o = Options.preset("kohya")
    got = (o.dialect, o.chunk_style, o.weighting, o.normalize, o.comma_backtrack)
    assert got == ("kohya", "kohya", "no-norm", "hf-slow", 0)
    from sdclip.layout.spec import spec_for

    assert spec_for(Options.preset("kohya", max_rows=3), 77, 0).max_rows == 3


# ----------------------------------------------------------------------------- sdclip embed and AND


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory):
    from tiny_models import tiny_family, write_layout

    return write_layout("single.safetensors", tiny_family("sd1"), tmp_path_factory.mktemp("sd1"))


def _embed(*args) -> int:
    from sdclip.cli.main import main

    return main(["embed", *map(str, args)])


def test_a1111_and_captions_are_all_listed_and_kohya_reads_them(tmp_path, sd1_file, capsys):
    """Under a1111, every caption whose AND makes several conditionings is named (past the 10 listed in
    full), and the refusal names --preset kohya, under which the same file embeds (AND is caption text)."""
    lines = [f"a cat {i} AND a dog" if i % 2 else f"a fox {i}" for i in range(30)]
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    assert _embed("--model", sd1_file, "--captions", caps, "--out", tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert "--preset kohya" in err
    assert "lines 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30" in err  # all 15, not the first 10
    assert not (tmp_path / "a" / "manifest.json").exists()
    assert _embed("--model", sd1_file, "--captions", caps, "--out", tmp_path / "k", "--preset", "kohya") == 0
    from safetensors.torch import load_file

    shard = load_file(tmp_path / "k" / "shard-00000.safetensors")
    assert shard["prompt_embeds"].shape[:2] == (30, 77)


def test_embed_kohya_long_rows_hold_sd_scripts_slots_first(tmp_path, sd1_file):
    """`sdclip embed` keeps 77·K slots a row: under kohya the first K·75+2 are sd-scripts' (the rest the empty
    caption's encoding, as any shorter caption is padded)."""
    from safetensors.torch import load_file

    from sdclip.conditioner import Conditioner

    captions = [CAPTIONS[2], CAPTIONS[7]]
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(c + "\n" for c in captions), encoding="utf-8")
    out = tmp_path / "k"
    assert _embed("--model", sd1_file, "--captions", caps, "--out", out, "--preset", "kohya", "--max-rows", 3) == 0
    got = load_file(out / "shard-00000.safetensors")["prompt_embeds"]
    assert got.shape[1] == 231
    cond = Conditioner.from_pretrained(str(sd1_file), options=Options.preset("kohya", max_rows=3))
    close(got[:, :227], cond(captions).positive.embeds)


def test_sd_scripts_sd2_clip_skip_n_is_clip_skip_n_plus_1_here():
    """sd-scripts' SD2 text encoder stores 23 of 24 blocks, so its --clip_skip counts from the penultimate."""
    caption = CAPTIONS[2]
    hidden, _ = oracle_encode("sd2", caption, 150, clip_skip=2)
    close(make("sd2", "kohya", max_rows=2, clip_skip=3)([caption]).positive.embeds[0], hidden)
