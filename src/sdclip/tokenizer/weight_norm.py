"""Token weight normalisations of ComfyUI_ADV_CLIP_emb (`token_normalization`), torch-free.

They rewrite the per-token weights of a TokenStream before layout, so every weighting formula downstream
sees the normalised weights (as ADV_CLIP_emb normalises before it interprets them). A "word" is what
ADV_CLIP_emb's word ids number: ComfyUI's token groups, which in current ComfyUI are whole weighted
segments (split where `embedding:` starts) — here the syntax fragment each token came from
(`TokenStream.fragments`). Formulas (adv_encode.py `divide_length`, `shift_mean_weight`):

- "none":        w unchanged.
- "mean":        w + (1 − mean(w)) for every token, the mean over all tokens of the prompt.
- "length":      1 + sign(d)·sqrt(d²/n), d = w − 1, n = the number of tokens of the token's word
                 (= 1 + d/√n: a long word's emphasis is spread over its tokens).
- "length+mean": "length", then "mean".

ADV_CLIP_emb takes the mean and the word lengths over all rows ComfyUI built (it never truncates); here
over the whole stream of one part, before any truncation. Where it differs on purpose: an empty prompt is
left alone (ADV_CLIP_emb takes the mean of nothing: NaN and a numpy warning, harmlessly).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

from sdclip.tokenizer.stream import TokenStream

#: (weights, word of each token) → normalised weights
Normalization = Callable[[Sequence[float], Sequence[int]], list[float]]


def divide_length(weights: Sequence[float], words: Sequence[int]) -> list[float]:
    """1 + sign(d)·sqrt(|d|²/n), d = w − 1, n = tokens in the token's word (ADV_CLIP_emb `_norm_mag`)."""
    counts = Counter(words)
    out = []
    for w, word in zip(weights, words):
        d = w - 1.0
        out.append(1.0 + math.copysign(math.sqrt(abs(d) ** 2 / counts[word]), d) if d else 1.0)
    return out


def shift_mean(weights: Sequence[float], words: Sequence[int]) -> list[float]:
    """Every weight shifted by 1 − mean(weights), so the mean becomes 1 (ADV_CLIP_emb `shift_mean_weight`)."""
    if not weights:
        return []
    delta = 1.0 - math.fsum(weights) / len(weights)
    return [w + delta for w in weights]


def _none(weights: Sequence[float], words: Sequence[int]) -> list[float]:
    return list(weights)


def _length_mean(weights: Sequence[float], words: Sequence[int]) -> list[float]:
    return shift_mean(divide_length(weights, words), words)


#: the normalisations by name (ADV_CLIP_emb's `token_normalization` choices)
TOKEN_NORMALIZATIONS: dict[str, Normalization] = {
    "none": _none,
    "mean": shift_mean,
    "length": divide_length,
    "length+mean": _length_mean,
}


def normalize_token_weights(stream: TokenStream, name: str) -> TokenStream:
    """The stream with its weights normalised by `name` ("none": the stream itself)."""
    try:
        fn = TOKEN_NORMALIZATIONS[name]
    except KeyError:
        raise ValueError(f"unknown token_normalization {name!r}; choose one of {', '.join(TOKEN_NORMALIZATIONS)}") from None
    if name == "none" or not stream.ids:
        return stream
    words = stream.fragments if len(stream.fragments) == len(stream.ids) else [0] * len(stream.ids)
    return replace(stream, weights=fn(stream.weights, words))
