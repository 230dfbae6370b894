"""ComfyUI_ADV_CLIP_emb's token weight normalisations (sdclip.tokenizer.weight_norm), torch-free.

Oracle: adv_encode.py's `divide_length` / `shift_mean_weight` transliterated below (numpy calls spelled with
the math module, the id-0 = BOS/EOS/pad handling kept), run on ComfyUI-shaped rows of (weight, word id), and
hand-worked numbers for the same weights.
"""

from __future__ import annotations

import argparse
import math

import pytest

from sdclip.cli.options import add_text_options, text_options
from sdclip.conventions.family import get_family
from sdclip.conventions.presets import Options
from sdclip.prepare import prepare
from sdclip.syntax import parse
from sdclip.tokenizer.clip import Tokenizer, tokenize
from sdclip.tokenizer.stream import TokenStream
from sdclip.tokenizer.weight_norm import TOKEN_NORMALIZATIONS, divide_length, normalize_token_weights, shift_mean


# -- the oracle: ADV_CLIP_emb's code on rows of weights and word ids (0 = BOS/EOS/pad) ----------------------

def _sign(x: float) -> float:
    return (x > 0) - (x < 0)


def adv_divide_length(word_ids: list[list[int]], weights: list[list[float]]) -> list[list[float]]:
    flat = [i for row in word_ids for i in row]
    sums = {i: flat.count(i) for i in set(flat)}
    sums[0] = 1

    def norm_mag(w: float, n: int) -> float:
        d = w - 1
        return 1 + _sign(d) * math.sqrt(abs(d) ** 2 / n)

    return [[norm_mag(w, sums[i]) if i != 0 else 1.0 for w, i in zip(x, y)] for x, y in zip(weights, word_ids)]


def adv_shift_mean(word_ids: list[list[int]], weights: list[list[float]]) -> list[list[float]]:
    words = [w for x, y in zip(weights, word_ids) for w, i in zip(x, y) if i != 0]
    delta = 1 - sum(words) / len(words)
    return [[w if i == 0 else w + delta for w, i in zip(x, y)] for x, y in zip(weights, word_ids)]


def adv_normalize(name: str, word_ids: list[list[int]], weights: list[list[float]]) -> list[list[float]]:
    """adv_encode.advanced_encode_from_tokens' dispatch."""
    if name.startswith("length"):
        weights = adv_divide_length(word_ids, weights)
    if name.endswith("mean"):
        weights = adv_shift_mean(word_ids, weights)
    return weights


def comfy_rows(weights: list[float], words: list[int], length: int = 8) -> tuple[list[list[int]], list[list[float]]]:
    """ComfyUI-style rows (BOS, tokens, EOS, pad; word id = fragment + 1, 0 for specials), `length` slots."""
    ids, ws = [[0]], [[1.0]]
    for w, f in zip(weights, words):
        if len(ids[-1]) == length - 1:
            ids[-1] += [0]
            ws[-1] += [1.0]
            ids.append([0])
            ws.append([1.0])
        ids[-1].append(f + 1)
        ws[-1].append(w)
    pad = length - len(ids[-1])
    ids[-1] += [0] * pad
    ws[-1] += [1.0] * pad
    return ids, ws


def word_weights(ids: list[list[int]], ws: list[list[float]]) -> list[float]:
    return [w for x, y in zip(ws, ids) for w, i in zip(x, y) if i != 0]


# -- hand-worked -------------------------------------------------------------------------------------

WEIGHTS = [1.2, 1.2, 0.7, 0.7, 0.7, 1.0]
WORDS = [0, 0, 1, 1, 1, 2]
HAND = {
    "none": WEIGHTS,
    # word 0: 1 + 0.2/√2, word 1: 1 − 0.3/√3
    "length": [1.1414213562373094] * 2 + [0.8267949192431123] * 3 + [1.0],
    # mean 5.5/6 → shift by 1/12
    "mean": [1.2833333333333333] * 2 + [0.7833333333333333] * 3 + [1.0833333333333333],
    # mean of "length" = (2·1.14142… + 3·0.82679… + 1)/6 = 0.96053791170… → shift by 0.03946208829…
    "length+mean": [1.1808834445366503] * 2 + [0.8662570075424527] * 3 + [1.0394620882993407],
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_worked(name):
    got = TOKEN_NORMALIZATIONS[name](WEIGHTS, WORDS)
    assert got == pytest.approx(HAND[name], abs=1e-12)


CASES = [
    (WEIGHTS, WORDS),
    ([1.5], [0]),
    ([0.5, 0.5, 0.5, 0.5, 0.5, 2.0, 1.0, 1.0, 1.0], [0, 0, 0, 0, 0, 1, 2, 2, 2]),
    ([1.1] * 12 + [0.0, 0.0] + [1.3] * 3, [0] * 12 + [1, 1] + [2] * 3),  # a word cut across rows, w = 0
    ([-0.5, -0.5, 1.21, 1.21, 1.21, 1.21], [3, 3, 5, 5, 5, 5]),  # negative weights; fragment numbers with gaps
]


@pytest.mark.parametrize("name", sorted(TOKEN_NORMALIZATIONS))
@pytest.mark.parametrize("weights,words", CASES)
def test_matches_adv_clip_emb_on_comfy_rows(name, weights, words):
    """Across rows: the word lengths and the mean are over every row, BOS/EOS/pad untouched."""
    ids, ws = comfy_rows(weights, words)
    theirs = word_weights(ids, adv_normalize(name, ids, ws))
    ours = TOKEN_NORMALIZATIONS[name](weights, words)
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_mean_makes_the_mean_one_and_length_keeps_the_sign():
    w = shift_mean([0.3, 1.9, 1.2], [0, 1, 2])
    assert math.fsum(w) / 3 == pytest.approx(1.0, abs=1e-15)
    assert divide_length([0.2, 0.2, 0.2, 0.2], [7] * 4) == pytest.approx([0.6] * 4)  # 1 − 0.8/2
    assert divide_length([1.0, 1.0], [0, 0]) == [1.0, 1.0]
    assert shift_mean([], []) == []  # ADV_CLIP_emb: mean of nothing (NaN, warning); here nothing to shift


# -- on a TokenStream, through prepare, Options and the CLI flags ---------------------------------------

def _stream(text: str, dialect: str = "comfy") -> TokenStream:
    return tokenize(parse(text, dialect).parts[0].sequence, Tokenizer.default("hf-slow"))


def test_stream_groups_by_fragment():
    stream = _stream("a photo of (a cat in a tiny hat:1.3), (blue:0.5) sky")
    out = normalize_token_weights(stream, "length")
    assert out.ids == stream.ids and out.spans == stream.spans and out.fragments == stream.fragments
    assert out.weights == pytest.approx(divide_length(stream.weights, stream.fragments))
    counts = {f: stream.fragments.count(f) for f in stream.fragments}
    for w0, w, f in zip(stream.weights, out.weights, stream.fragments):
        assert w == pytest.approx(1 + (w0 - 1) / math.sqrt(counts[f]))
    assert any(w not in (1.0, 1.3, 0.5) for w in out.weights)
    assert normalize_token_weights(stream, "none") is stream
    with pytest.raises(ValueError, match="unknown token_normalization 'max'"):
        normalize_token_weights(stream, "max")


@pytest.mark.parametrize("name", sorted(TOKEN_NORMALIZATIONS))
def test_prepare_applies_it(name):
    text = "a photo of (a cat in a tiny hat:1.3), (blue:0.5) sky"
    family = get_family("sd1")
    plain = prepare(text, Options.preset("comfy"), family, Tokenizer.default("hf-slow"))
    normed = prepare(text, Options.preset("comfy", token_normalization=name), family, Tokenizer.default("hf-slow"))
    stream = plain.parts[0].stream
    expected = TOKEN_NORMALIZATIONS[name](stream.weights, stream.fragments)
    assert normed.parts[0].stream.weights == pytest.approx(expected)
    rows = normed.parts[0].rows[0]
    got = [w for wr, tr in zip(rows.weights, rows.tokens) for w, t in zip(wr, tr) if t >= 0]
    assert got == pytest.approx(expected)  # the rows carry the normalised weights; BOS/EOS/pad stay 1
    assert all(w == 1.0 for wr, tr in zip(rows.weights, rows.tokens) for w, t in zip(wr, tr) if t < 0)


def test_options_and_cli_flag():
    assert Options().token_normalization == "none"
    assert all(Options.preset(p).token_normalization == "none" for p in ("a1111", "comfy", "compel", "diffusers"))
    with pytest.raises(ValueError, match="unknown token_normalization 'mea'; choose one of none, mean, length, length\\+mean"):
        Options(token_normalization="mea")
    p = argparse.ArgumentParser()
    add_text_options(p)
    assert text_options(p.parse_args(["--token-normalization", "length+mean"])).token_normalization == "length+mean"
    assert text_options(p.parse_args([])).token_normalization == "none"
    with pytest.raises(SystemExit):
        p.parse_args(["--token-normalization", "bogus"])
