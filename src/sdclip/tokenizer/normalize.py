"""The three text normalisations users' CLIP tokenizers apply before BPE, reproduced exactly.

Every mode ends in the same CLIP pre-split regex (module `regex`, IGNORECASE; digits one by one):
`SPECIALS|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`. What differs is the cleaning:

- "openclip" (OpenAI / open_clip `SimpleTokenizer`, the ground truth): `ftfy.fix_text` → `html.unescape`
  twice → strip → `" ".join(text.split())` → lower. Its specials are spelled `<start_of_text>` /
  `<end_of_text>`, so a typed `<|endoftext|>` is ordinary text there.
- "hf-slow" (transformers 4.x Python `CLIPTokenizer` with ftfy): the raw text is first cut at the added
  tokens (`<|startoftext|>`, `<|endoftext|>`, case-sensitive); each piece gets `ftfy.fix_text` →
  `regex.sub(r"\\s+", " ")` → strip → lower (no `html.unescape`; ftfy unescapes entities itself unless the
  line holds a "<"). A typed `<|ENDOFTEXT|>` still becomes id 49407 through the regex.
- "hf-fast" (Rust `tokenizers`, transformers 5 `CLIPTokenizer`): cut at added tokens, then NFC,
  `\\s+` → " ", Rust lower-casing (no final sigma), the regex without IGNORECASE, then the GPT-2 byte-level
  split (which only re-splits a lower-cased `<|endoftext|>` typed in other case). No ftfy.

Fast path: for text made of printable ASCII, tab and newline, with no "&", ftfy and `html.unescape` provably
change nothing (ftfy's fixers touch only entities, non-ASCII, `\\r`, ESC and other control characters;
`tests/tokenizer/test_tokenizer.py` checks every pair of such characters against ftfy), NFC is the identity, and
since no regex match ever contains whitespace, pre-splitting `text.lower()` gives the pieces, with exact
character offsets, without any cleaning at all (and with stdlib `re`, twice as fast as `regex`).
Other text skips ftfy (~100 µs a prompt) when `ftfy_inert` proves ftfy would return it unchanged, and
hf-fast text stays in Python when `hf_fast_local` proves the Rust pipeline would split it the same way.
"""

from __future__ import annotations

import html
import re as stdlib_re
import unicodedata
from typing import Iterator

import ftfy
import regex

from sdclip.tokenizer.vocab import BOS_TEXT, EOS_TEXT, OPENCLIP_BOS_TEXT, OPENCLIP_EOS_TEXT

from sdclip.conventions.choices import NORMALIZATIONS  # the names, as data, live with the options

_BODY = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
#: the pre-split regex of each mode (specials first, as in the reference code)
PRESPLIT = {
    "openclip": regex.compile(r"<start_of_text>|<end_of_text>|" + _BODY, regex.IGNORECASE),
    "hf-slow": regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|" + _BODY, regex.IGNORECASE),
    "hf-fast": regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|" + _BODY),
}
#: the same splits on fast-path text (lower-cased printable ASCII, tab, newline), where \p{L} is [a-z] and
#: \p{N} is [0-9]: stdlib `re` runs them twice as fast (tests compare both on every printable ASCII triple)
_ASCII_BODY = r"""'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+"""
PRESPLIT_ASCII = {
    "openclip": stdlib_re.compile(r"<start_of_text>|<end_of_text>|" + _ASCII_BODY),
    "hf-slow": stdlib_re.compile(r"<\|startoftext\|>|<\|endoftext\|>|" + _ASCII_BODY),
    "hf-fast": stdlib_re.compile(r"<\|startoftext\|>|<\|endoftext\|>|" + _ASCII_BODY),
}
#: text the regex itself turns into BOS / EOS (after cleaning), per mode
REGEX_SPECIALS = {
    "openclip": (OPENCLIP_BOS_TEXT, OPENCLIP_EOS_TEXT),
    "hf-slow": (BOS_TEXT, EOS_TEXT),
    "hf-fast": (),
}
#: GPT-2's byte-level split that `tokenizers` applies after the CLIP split (hf-fast only)
GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

#: characters outside the fast path (see module docstring); hf-fast has no html step, so "&" is fine there
_UNSAFE = {
    "openclip": stdlib_re.compile(r"[^\t\n\x20-\x25\x27-\x7e]"),
    "hf-slow": stdlib_re.compile(r"[^\t\n\x20-\x25\x27-\x7e]"),
    "hf-fast": stdlib_re.compile(r"[^\t\n\x20-\x7e]"),
}


def check_mode(normalize: str) -> str:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {normalize!r}: choose one of {', '.join(NORMALIZATIONS)}")
    return normalize


def is_plain(text: str, normalize: str) -> bool:
    """True when cleaning `text` in this mode can only collapse whitespace and lower-case ASCII."""
    return text.isascii() and _UNSAFE[normalize].search(text) is None


_touchy = None
_NON_ASCII = stdlib_re.compile(r"[^\x00-\x7f]+")
#: longest match of ftfy's BADNESS_RE (7 characters: "ГўВЂВ.[A-Za-z ]"), with a margin
_BAD_REACH = 8


def _touchy_chars():
    """Characters some ftfy fixer maps, from ftfy's own tables (built on first use)."""
    global _touchy
    if _touchy is None:
        from ftfy import chardata

        table = set(chardata.LIGATURES) | set(chardata.WIDTH_MAP) | set(chardata.CONTROL_CHARS)
        extra = "&\r\x1b\u2028\u2029\u02bc" + "".join(map(chr, range(0x80, 0xA0))) + "".join(map(chr, range(0x2018, 0x2020)))
        chars = sorted(table | {ord(c) for c in extra})
        _touchy = stdlib_re.compile("[" + "".join(stdlib_re.escape(chr(c)) for c in chars) + "\ud800-\udfff]")
    return _touchy


def _looks_bad(text: str) -> bool:
    """`ftfy.badness.is_bad` of any of ftfy's segments, checked only around non-ASCII runs.

    Every BADNESS_RE alternative needs a non-ASCII character and spans at most 7, so a match lies within
    `_BAD_REACH` of a non-ASCII run. Windows stay inside a line (ftfy's segments end at "\n", which
    they keep); a window not at a line start may let `^` match spuriously: that only costs an ftfy call.
    """
    from ftfy.badness import is_bad

    lines = text.split("\n")
    for k, line in enumerate(lines):
        if k < len(lines) - 1:
            line += "\n"
        for m in _NON_ASCII.finditer(line):
            if is_bad(line[max(0, m.start() - _BAD_REACH) : m.end() + _BAD_REACH]):
                return True
    return False


def ftfy_inert(text: str) -> bool:
    """True when `ftfy.fix_text` (default config) and `html.unescape` provably return `text` unchanged.

    ftfy 6 runs, per "\n"-ended segment: html unescaping (needs "&"), mojibake repair (only when
    `ftfy.badness.is_bad(segment)`), then character-level fixers (C1 controls, Latin ligatures, width,
    curly quotes, line breaks, surrogates, ESC sequences, control characters) and NFC. So text without "&"
    or any character those fixers map, already NFC, with no bad segment, is returned as is. The character
    set comes from ftfy's own tables; tests check the claim on every BMP character in several contexts,
    on random mojibake-prone strings and on the corpus.
    """
    return (
        len(text) <= 100_000
        and _touchy_chars().search(text) is None
        and unicodedata.is_normalized("NFC", text)
        and not _looks_bad(text)
    )


def clean_openclip(text: str) -> str:
    """open_clip's `_clean_lower`: ftfy, html.unescape ×2, whitespace collapse, lower-case."""
    if not ftfy_inert(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.strip().split()).strip().lower()


_WS = regex.compile(r"\s+")


def clean_hf_slow(text: str) -> str:
    """transformers 4.x `CLIPTokenizer._tokenize` cleaning (with ftfy installed)."""
    if not ftfy_inert(text):
        text = ftfy.fix_text(text)
    return _WS.sub(" ", text).strip().lower()


_hf_fast_pipeline = None


def hf_fast_pipeline():
    """The Rust normaliser and pre-tokenizer of transformers 5 `CLIPTokenizer` (built once)."""
    global _hf_fast_pipeline
    if _hf_fast_pipeline is None:
        from tokenizers import Regex, normalizers, pre_tokenizers

        norm = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        pre = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRESPLIT["hf-fast"].pattern), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        _hf_fast_pipeline = (norm, pre)
    return _hf_fast_pipeline


Piece = tuple[str, int, int]  #: (piece text, start, end) in the text it was found in


#: hf-fast text Python may split itself: printable ASCII, tab, newline, and Latin-1 Supplement to Latin
#: Extended-B (U+00A0-U+024F) except İ (U+0130, which lower-cases to two characters). There NFC is the
#: identity, Python and Rust lower-case alike, and `regex` agrees with Oniguruma on \s, \p{L}, \p{N}:
#: tests check every such character in several contexts against transformers 5. Other text takes the
#: Rust pipeline itself (exact by construction, but ~10× slower).
_HF_FAST_LOCAL = stdlib_re.compile(r"[^\t\n\x20-\x7e\xa0-\u012f\u0131-\u024f]")


def hf_fast_local(text: str) -> bool:
    """True when hf-fast text can be split in Python (see `_HF_FAST_LOCAL`)."""
    return _HF_FAST_LOCAL.search(text) is None


def clean(text: str, normalize: str) -> str:
    """The cleaned text the pre-split regex runs on (hf-fast: only for `hf_fast_local` text)."""
    if normalize == "openclip":
        return clean_openclip(text)
    if normalize == "hf-slow":
        return clean_hf_slow(text)
    return text.lower()  # no whitespace collapse needed: no regex match contains whitespace


def split(text: str, normalize: str) -> list[str]:
    """The pieces of `text` (openclip / hf-slow, or hf-fast on `hf_fast_local` text)."""
    if is_plain(text, normalize):
        return PRESPLIT_ASCII[normalize].findall(text.lower())
    return PRESPLIT[normalize].findall(clean(text, normalize))


def pieces(text: str, normalize: str) -> tuple[list[Piece], bool]:
    """(pieces with offsets, exact): offsets index `text` itself when `exact`, else its cleaned form."""
    if is_plain(text, normalize):
        found = PRESPLIT_ASCII[normalize].finditer(text.lower())
        return [(m.group(), m.start(), m.end()) for m in found], True
    exact = normalize == "hf-fast"  # hf_fast_local text lower-cases character for character
    found = PRESPLIT[normalize].finditer(clean(text, normalize))
    return [(m.group(), m.start(), m.end()) for m in found], exact


def _fold(text: str) -> str:
    """Lower-case `text` keeping its length (so indices stay those of `text`)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def align(source: str, found: list[Piece]) -> list[tuple[int, int]]:
    """Best-effort spans in `source` of pieces found in a cleaned version of it.

    Each piece is looked for in the lower-cased source just after the previous one (a small window allows
    for collapsed whitespace and decoded entities); pieces not found (changed by ftfy, e.g. a ligature)
    share the gap between their found neighbours in proportion to their length. The result is always
    within the source and monotonic.
    """
    low = _fold(source)
    n = len(source)
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    prev_end_clean = 0
    for text, a, b in found:
        start = cursor
        while start < n and low[start].isspace():
            start += 1
        window = start + (a - prev_end_clean) + 8 + len(text)
        at = low.find(text, start, min(n, window + len(text)))
        if at >= 0:
            spans.append((at, at + len(text)))
            cursor = at + len(text)
        else:
            spans.append(None)
        prev_end_clean = b
    return _fill(spans, [b - a for _, a, b in found], n)


def _fill(spans: list[tuple[int, int] | None], weights: list[int], n: int) -> list[tuple[int, int]]:
    """Give unresolved spans a proportional share of the gap between resolved neighbours."""
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(spans):
        if spans[i] is not None:
            out.append(spans[i])  # type: ignore[arg-type]
            i += 1
            continue
        j = i
        while j < len(spans) and spans[j] is None:
            j += 1
        lo = out[-1][1] if out else 0
        hi = spans[j][0] if j < len(spans) else n  # type: ignore[index]
        total = sum(weights[i:j]) or 1
        acc = 0
        for k in range(i, j):
            s = lo + (hi - lo) * acc // total
            acc += weights[k]
            out.append((s, lo + (hi - lo) * acc // total))
        i = j
    return out


def split_added(text: str, added: regex.Pattern | None) -> Iterator[tuple[int, int, bool]]:
    """(start, end, is_added_token) runs of `text`, added tokens matched literally, leftmost-longest."""
    pos = 0
    if added is not None:
        for m in added.finditer(text):
            if m.start() > pos:
                yield pos, m.start(), False
            yield m.start(), m.end(), True
            pos = m.end()
    if pos < len(text):
        yield pos, len(text), False
