"""The text clean-up some T5-only pipelines apply before their tokenizer, as a tokenizer adapter, so that spans
still point into the text the user typed (inspect's greying, dropped text). Torch-free.

- "wan": diffusers' `prompt_clean` (pipelines/wan/pipeline_wan.py:78-93): `ftfy.fix_text` where ftfy is
  installed (diffusers checks the same), `html.unescape` twice, whitespace runs to one space, stripped.
- "lower": PixArt-Σ's `_text_preprocessing` with clean_caption=False (pipelines/pixart_alpha/
  pipeline_pixart_sigma.py:488): `text.lower().strip()`. `__call__` defaults to clean_caption=True, which
  diffusers turns off (with a warning) where bs4 or ftfy is missing; sdclip reproduces encode_prompt's
  default, clean_caption=False (the BeautifulSoup / regex caption cleaner is not reproduced).
"""

from __future__ import annotations

import html
import re
from difflib import SequenceMatcher
from typing import Any


def wan_clean(text: str) -> str:
    """diffusers' Wan `prompt_clean`."""
    if text.isascii() and text.isprintable() and "&" not in text:
        # what the steps below make of it: ftfy.fix_text and html.unescape return it unchanged (no entity), and
        # its only whitespace is " "
        return " ".join(text.split())
    try:
        import ftfy
    except ImportError:
        ftfy = None
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def lower_clean(text: str) -> str:
    """PixArt-Σ's clean_caption=False preprocessing."""
    return text.lower().strip()


CLEANERS = {"wan": wan_clean, "lower": lower_clean}


def _positions(text: str, cleaned: str) -> list[int]:
    """For each index of `cleaned` (and one past its end), an index into `text`: character alignment."""
    if len(cleaned) == len(text) and cleaned.casefold() == text.casefold():
        return list(range(len(text) + 1))
    out = [0] * (len(cleaned) + 1)
    for op, a0, a1, b0, b1 in SequenceMatcher(None, text, cleaned, autojunk=False).get_opcodes():
        for j in range(b0, b1):
            out[j] = a0 + (j - b0 if op == "equal" else min(j - b0, max(a1 - a0 - 1, 0)))
    out[len(cleaned)] = len(text)
    return out


class CleaningTokenizer:
    """A T5 tokenizer that cleans each text as the pipeline does before encoding; spans map back to the text."""

    def __init__(self, tokenizer: Any, clean: str):
        self._inner = tokenizer
        self._clean = CLEANERS[clean]
        self.clean = clean

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 (eos_id, pad_id, token_text, decode, …)
        return getattr(self._inner, name)

    def encode(self, text: str) -> list[int]:
        """encode_with_spans' ids, without mapping spans back."""
        return self._inner.encode(self._clean(text))

    def encode_with_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        cleaned = self._clean(text)
        ids, spans = self._inner.encode_with_spans(cleaned)
        if cleaned == text:
            return ids, spans
        at = _positions(text, cleaned)
        n = len(cleaned)
        return ids, [(at[min(a, n)], max(at[min(a, n)], at[min(b, n)] if b < n else len(text))) for a, b in spans]


def cleaning(tokenizer: Any, clean: str) -> Any:  # noqa: ANN401
    """`tokenizer` cleaning its texts as `clean` says ("" leaves it as it is)."""
    if not clean or isinstance(tokenizer, CleaningTokenizer):
        return tokenizer
    return CleaningTokenizer(tokenizer, clean)
