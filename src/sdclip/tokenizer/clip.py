"""The exact CLIP tokenizer: three users' normalisations, one cached BPE, character spans. No torch.

Pipeline (after OpenAI's `simple_tokenizer.py`, with `tokenizers`' stage split): added tokens cut from the
raw text → mode cleaning (`sdclip.tokenizer.normalize`) → CLIP pre-split regex → per-piece BPE. BPE results are cached
per piece (a prompt corpus reuses few words), and a miss runs the Rust BPE model of `tokenizers` (merges
applied lowest rank first, `</w>` on the last symbol: the same result as CLIP's Python loop).

Ids are identical to the reference of each mode (see `sdclip.tokenizer.normalize`); tests compare them on a few
thousand prompts. Bad input raises `TypeError` (not a str) or `ValueError` (unknown mode, broken
vocabulary, unknown id, text that is not valid Unicode); unknown textual-inversion names raise
`UnknownEmbeddingError`.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import chain
from typing import Iterable, Mapping

import regex

from sdclip.tokenizer import normalize as norm
from sdclip.tokenizer.normalize import NORMALIZATIONS
from sdclip.syntax.prompt import Sequence
from sdclip.tokenizer.stream import FIRST_VECTOR_ID, NO_SPANS, TokenStream
from sdclip.tokenizer.source_spans import fragment_spans
from sdclip.tokenizer.vocab import (
    BOS_TEXT,
    END_OF_WORD,
    EOS_TEXT,
    OPENCLIP_BOS_TEXT,
    OPENCLIP_EOS_TEXT,
    byte_decoder,
    bytes_to_unicode,
    packaged,
    read_folder,
)

__all__ = ["EMBEDDING_MATCHES", "NORMALIZATIONS", "Tokenizer", "UnknownEmbeddingError", "tokenize"]

_SURROGATE = regex.compile(r"[\ud800-\udfff]")
_CACHE_LIMIT = 1 << 18  #: cached pieces before the cache starts afresh (bounds memory on endless input)


class UnknownEmbeddingError(KeyError, ValueError):
    """A prompt names a textual-inversion embedding that was not loaded (a KeyError by nature, a ValueError
    like every other bad-input error of sdclip)."""

    def __init__(self, name: str, known: Iterable[str] = ()):
        self.name = name
        self.known = sorted(known)
        listing = ", ".join(self.known) if self.known else "none loaded"
        self.message = f"unknown embedding {name!r} (known: {listing})"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class _PieceCache(dict):
    """piece text → token ids; a miss byte-encodes the piece and runs BPE."""

    def __init__(self, tokenizer: "Tokenizer"):
        super().__init__(tokenizer._seed)
        self._tok = tokenizer

    def __missing__(self, piece: str) -> tuple[int, ...]:
        if len(self) > _CACHE_LIMIT:
            self.clear()
            self.update(self._tok._seed)
        ids = self._tok._bpe(piece)
        self[piece] = ids
        return ids


class Tokenizer:
    """CLIP BPE with a choice of normalisation: "openclip" (the ground truth), "hf-slow", "hf-fast".

    `vocab` maps token text to id (CLIP's 49,408 entries), `merges` are the BPE pairs in rank order
    ("a b" strings or pairs); `added_tokens` (text → id) are matched literally in the raw text before any
    cleaning, as Hugging Face does. Added tokens that merely alias an ordinary vocabulary entry (SDXL's
    `tokenizer_2` declares `pad_token="!"`) are ignored: a typed "!" stays the token "!", not padding.
    In "hf-fast" a folder's extra added tokens match case-insensitively (transformers 5 matches them after
    lower-casing); the two specials always match case-sensitively.
    """

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges,
        normalize: str = "openclip",
        added_tokens: Mapping[str, int] | None = None,
    ):
        from tokenizers.models import BPE

        self.normalize = norm.check_mode(normalize)
        vocab = dict(vocab)
        pairs = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in merges]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("every merge must be a pair of symbols")
        symbols = list(bytes_to_unicode().values())
        missing = [s for s in symbols + [s + END_OF_WORD for s in symbols] if s not in vocab]
        if missing:
            raise ValueError(f"vocabulary lacks {len(missing)} byte symbols (e.g. {missing[0]!r}): not a CLIP BPE vocabulary")
        bos = vocab.get(BOS_TEXT, vocab.get(OPENCLIP_BOS_TEXT))
        eos = vocab.get(EOS_TEXT, vocab.get(OPENCLIP_EOS_TEXT))
        if bos is None or eos is None or "," + END_OF_WORD not in vocab:
            raise ValueError("vocabulary lacks <|startoftext|>, <|endoftext|> or ',</w>': not a CLIP vocabulary")
        self.bos_id: int = bos
        self.eos_id: int = eos
        self.comma_id: int = vocab["," + END_OF_WORD]
        try:
            self._model = BPE(vocab, pairs, end_of_word_suffix=END_OF_WORD, continuing_subword_prefix="")
        except Exception as e:  # tokenizers raises a bare Exception for merges outside the vocab
            raise ValueError(f"inconsistent vocabulary/merges: {e}") from None

        # Added tokens: the two specials in the hf modes, plus genuinely new entries (never aliases of BPE ids).
        specials = (BOS_TEXT, EOS_TEXT, OPENCLIP_BOS_TEXT, OPENCLIP_EOS_TEXT)
        regular = {i for t, i in vocab.items() if t not in specials}
        added = {t: i for t, i in (added_tokens or {}).items() if t and i not in regular and t not in specials}
        if self.normalize != "openclip":
            added.update({BOS_TEXT: bos, EOS_TEXT: eos})
        self._added = added
        # transformers 5 matches a folder's extra (non-special) added tokens after lower-casing: so does hf-fast
        fold = {t for t in added if t not in (BOS_TEXT, EOS_TEXT)} if self.normalize == "hf-fast" else set()
        self._added_folded = {t.lower(): added[t] for t in fold}
        ordered = sorted(added, key=len, reverse=True)  # longest first: leftmost-longest matching
        alternatives = [f"(?i:{regex.escape(t)})" if t in fold else regex.escape(t) for t in ordered]
        self._added_re = regex.compile("|".join(alternatives)) if added else None

        self._id_to_text: dict[int, str] = {i: t for t, i in vocab.items()}
        self._id_to_text.update({i: t for t, i in added.items()})
        self.vocab_size: int = max(self._id_to_text) + 1
        self._ascii_pat = norm.PRESPLIT_ASCII[self.normalize]
        regex_specials = norm.REGEX_SPECIALS[self.normalize]
        self._seed = dict(zip(regex_specials, ((bos,), (eos,))))
        self._cache = _PieceCache(self)
        self._lookups: dict[tuple[str, ...], dict] = {}  #: embedding names → token-id lookup (tokenize)
        self._rust = None
        if self.normalize == "hf-fast":
            from tokenizers import Tokenizer as RustTokenizer

            self._rust = RustTokenizer(self._model)
            self._rust.normalizer, self._rust.pre_tokenizer = norm.hf_fast_pipeline()

    # construction -----------------------------------------------------------------------------------

    @classmethod
    def default(cls, normalize: str = "openclip") -> "Tokenizer":
        """The packaged OpenAI vocabulary (SD1/SD2/SDXL all use it); built once per mode and cached."""
        return _default(norm.check_mode(normalize))

    @classmethod
    def from_folder(cls, path, normalize: str = "hf-fast") -> "Tokenizer":
        """A Hugging Face / diffusers tokenizer folder (vocab.json + merges.txt, added tokens from the configs)."""
        vocab, merges, added = read_folder(path)
        return cls(vocab, merges, normalize, added)

    # encoding ---------------------------------------------------------------------------------------

    def _bpe(self, piece: str) -> tuple[int, ...]:
        enc = bytes_to_unicode()
        # tokenizers' ByteLevel step re-splits each piece with the GPT-2 regex (hf-fast only)
        parts = (norm.GPT2_SPLIT.findall(piece) or [piece]) if self.normalize == "hf-fast" else [piece]
        out: list[int] = []
        for part in parts:
            try:
                data = part.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"text holds a lone surrogate ({part!r}): not valid Unicode, cannot be tokenized") from None
            out.extend(t.id for t in self._model.tokenize("".join(enc[b] for b in data)))
        return tuple(out)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`: no BOS/EOS, no truncation."""
        if type(text) is not str:
            raise TypeError(f"Tokenizer.encode expects str, got {type(text).__name__}")
        if norm.is_plain(text, self.normalize) and not (self._added_re and self._added_re.search(text)):
            return list(chain.from_iterable(map(self._cache.__getitem__, self._ascii_pat.findall(text.lower()))))
        return self._encode(text, spans=False)[0]

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """`encode` of each text (the per-piece cache makes a batch cheaper than its parts)."""
        if isinstance(texts, str):
            raise TypeError("encode_batch expects an iterable of str, not a single str")
        return [self.encode(t) for t in texts]

    def encode_with_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and each token's (start, end) character span in `text`.

        Exact where cleaning leaves the text alone (case and whitespace aside); elsewhere best effort, but
        always within the text and monotonic (starts and ends never decrease).
        """
        if type(text) is not str:
            raise TypeError(f"Tokenizer.encode_with_spans expects str, got {type(text).__name__}")
        ids, spans = self._encode(text, spans=True)
        return ids, _monotonic(spans, 0, len(text))

    def _encode(self, text: str, spans: bool) -> tuple[list[int], list[tuple[int, int]]]:
        ids: list[int] = []
        out_spans: list[tuple[int, int]] = []
        for start, end, is_added in norm.split_added(text, self._added_re):
            segment = text[start:end]
            if is_added:
                ids.append(self._added.get(segment) or self._added_folded[segment.lower()])
                out_spans.append((start, end))
            elif self._rust is not None and not norm.hf_fast_local(segment):
                ids.extend(self._rust_encode(segment, start, end, out_spans if spans else None))
            elif not spans:
                ids.extend(chain.from_iterable(map(self._cache.__getitem__, norm.split(segment, self.normalize))))
            else:
                found, exact = norm.pieces(segment, self.normalize)
                piece_ids = [self._cache[p] for p, _, _ in found]
                ids.extend(chain.from_iterable(piece_ids))
                if spans:
                    located = [(a, b) for _, a, b in found] if exact else norm.align(segment, found)
                    for (p, _, _), t, (a, b) in zip(found, piece_ids, located):
                        out_spans.extend((start + s, start + e) for s, e in self._token_spans(p, t, a, b))
        return ids, out_spans

    def _rust_encode(self, segment: str, start: int, end: int, spans: list | None) -> list[int]:
        """hf-fast outside the fast path: the Rust pipeline itself, so Unicode quirks are the reference's."""
        bad = _SURROGATE.search(segment)
        if bad is not None:  # Rust strings are UTF-8: a lone surrogate cannot cross (openclip/hf-slow: ftfy fixes it)
            raise ValueError(
                f"text holds a lone surrogate U+{ord(bad.group()):04X} at character {start + bad.start()}: not valid "
                "Unicode, so the hf-fast tokenizer cannot read it (decode the text properly; openclip and hf-slow "
                "modes replace it as ftfy does)"
            )
        try:
            enc = self._rust.encode(segment, add_special_tokens=False)
        except Exception as e:  # tokenizers raises bare Exceptions
            raise ValueError(f"text cannot be tokenized by hf-fast: {e}") from None
        if spans is not None:
            spans.extend((start + a, start + b) for a, b in enc.offsets)
        return enc.ids

    def _token_spans(self, piece: str, ids: tuple[int, ...], a: int, b: int) -> list[tuple[int, int]]:
        """Spans of a piece's tokens: by their bytes when the piece sits verbatim at [a, b), else shared out."""
        if len(ids) == 1:
            return [(a, b)]
        sizes = [self._byte_len(i) for i in ids]
        data_len = len(piece.encode("utf-8", "surrogatepass"))
        if b - a == len(piece) and sum(sizes) == data_len:
            owner = []  # byte offset → index of the character holding it
            for k, c in enumerate(piece):
                owner.extend([k] * len(c.encode("utf-8", "surrogatepass")))
            out, pos = [], 0
            for size in sizes:
                out.append((a + owner[pos], a + owner[pos + size - 1] + 1))
                pos += size
            return out
        total, acc, out = sum(sizes) or 1, 0, []
        for size in sizes:
            s = a + (b - a) * acc // total
            acc += size
            out.append((s, a + (b - a) * acc // total))
        return out

    def _byte_len(self, token_id: int) -> int:
        text = self._id_to_text.get(token_id, "")
        return len(text) - len(END_OF_WORD) if text.endswith(END_OF_WORD) else len(text)

    # reading ids back ------------------------------------------------------------------------------

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry of an id, e.g. "fox</w>" (for `sdclip inspect`)."""
        try:
            return self._id_to_text[token_id]
        except (KeyError, TypeError):
            raise ValueError(f"{token_id!r} is not a token id of this vocabulary (0..{self.vocab_size - 1})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` (word ends become spaces; invalid UTF-8 becomes U+FFFD)."""
        dec = byte_decoder()
        out = bytearray()
        for token_id in ids:
            text = self.token_text(token_id)
            word_end = text.endswith(END_OF_WORD)
            if word_end:
                text = text[: -len(END_OF_WORD)]
            if all(c in dec for c in text):
                out.extend(dec[c] for c in text)
            else:
                out.extend(text.encode("utf-8"))
            if word_end:
                out.extend(b" ")
        return out.decode("utf-8", errors="replace").strip()

    def __repr__(self) -> str:
        return f"Tokenizer(normalize={self.normalize!r}, vocab_size={self.vocab_size})"


@lru_cache(maxsize=None)
def _default(normalize: str) -> Tokenizer:
    vocab, merges = packaged()
    return Tokenizer(vocab, merges, normalize)


def _monotonic(spans: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """Clamp spans into [lo, hi] and make starts and ends non-decreasing (end >= start)."""
    out, s0, e0 = [], lo, lo
    for s, e in spans:
        s = min(max(s, s0), hi)
        e = min(max(e, s, e0), hi)
        out.append((s, e))
        s0, e0 = s, e
    return out


EMBEDDING_MATCHES = ("word", "token-ids")


def tokenize(
    sequence: Sequence,
    tokenizer: Tokenizer,
    embeddings: Mapping[str, int] | None = None,
    *,
    source: str = "",
    embedding_match: str = "word",
    spans: bool = True,
) -> TokenStream:
    """One Sequence → one TokenStream.

    Each text fragment is tokenized on its own (as AUTOMATIC1111 does), every token carrying the fragment's
    weight and a span in source-prompt coordinates (fragment.start + offset, clipped to fragment.end).
    A "break" fragment records a break index; an "embedding" fragment becomes `embeddings[name]` vector
    slots (embeddings maps name → vector count) with ids FIRST_VECTOR_ID + k, one k per distinct
    (name, vector index) in this stream (shifted above a folder's added-token ids, if it has any).

    embedding_match "token-ids" is AUTOMATIC1111's rule: inside each text fragment, wherever the token ids
    of a loaded name occur (longest name first among those starting with the same id), they are replaced
    by its vectors, even inside a longer word (`foxeasynegative` → fox + the vectors of `easynegative`)
    but never across fragments. "word" leaves text fragments alone (the syntax stage found whole words).
    `stream.fragments[i]` is the index of the fragment token i came from. spans=False: no spans are worked
    out (`NO_SPANS`, for a caller that reads only the rows' sizes); ids, weights and the rest are the same.
    """
    if embedding_match not in EMBEDDING_MATCHES:
        raise ValueError(f"unknown embedding_match {embedding_match!r}; choose one of {', '.join(EMBEDDING_MATCHES)}")
    known = embeddings or {}
    stream = TokenStream(source=source) if spans else TokenStream(source=source, spans=NO_SPANS)
    origin = getattr(stream, "fragments", None)
    if origin is None:
        origin = []
    slots: dict[tuple[str, int], int] = {}
    base = max(FIRST_VECTOR_ID, tokenizer.vocab_size)
    lookup = _id_lookup(tokenizer, known) if embedding_match == "token-ids" and known else {}

    def add_vectors(name: str, weight: float, span: tuple[int, int], index: int) -> None:
        count = known[name]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"embedding {name!r} must have a positive vector count, got {count!r}")
        stream.runs.append((len(stream.ids), count))
        for k in range(count):
            slot = slots.setdefault((name, k), base + len(slots))
            stream.vectors[slot] = (name, k)
            stream.ids.append(slot)
        stream.weights.extend([weight] * count)
        stream.spans.extend([span] * count)
        origin.extend([index] * count)

    for index, frag in enumerate(sequence.fragments):
        end = max(frag.start, frag.end)
        if frag.kind == "break":
            stream.breaks.append(len(stream.ids))
        elif frag.kind == "embedding":
            if frag.text not in known:
                raise UnknownEmbeddingError(frag.text, known)
            add_vectors(frag.text, frag.weight, (frag.start, end), index)
        else:
            if spans:
                ids, found = tokenizer.encode_with_spans(frag.text)
                found = fragment_spans(frag.text, frag.start, end, found, source)  # the text may be rewritten
            else:
                ids, found = tokenizer.encode(frag.text), NO_SPANS  # encode: encode_with_spans' ids alone
            if lookup and any(i in lookup for i in ids):
                _replace_ids(ids, found, lookup, frag.weight, index, stream, origin, add_vectors)
                continue
            stream.ids.extend(ids)
            stream.weights.extend([frag.weight] * len(ids))
            stream.spans.extend(found)
            origin.extend([index] * len(ids))
    return stream


def _id_lookup(tokenizer: Tokenizer, names: Mapping[str, int]) -> dict[int, list[tuple[tuple[int, ...], str]]]:
    """first token id → [(ids of a name, name)], longest first (A1111 EmbeddingDatabase.ids_lookup)."""
    key = tuple(names)
    cache = tokenizer._lookups
    found = cache.get(key)
    if found is None:
        found = {}
        for name in names:
            ids = tuple(tokenizer.encode(name))
            if ids:
                found.setdefault(ids[0], []).append((ids, name))
        for entries in found.values():
            entries.sort(key=lambda entry: len(entry[0]), reverse=True)  # stable: load order among equals
        if len(cache) > 64:
            cache.clear()
        cache[key] = found
    return found


def _replace_ids(ids, spans, lookup, weight, index, stream, origin, add_vectors) -> None:
    """Copy one fragment's tokens into `stream`, turning every occurrence of a name's ids into its vectors."""
    i, n = 0, len(ids)
    while i < n:
        for cand, name in lookup.get(ids[i], ()):
            m = len(cand)
            if tuple(ids[i : i + m]) == cand:
                add_vectors(name, weight, (spans[i][0], spans[i + m - 1][1]), index)
                i += m
                break
        else:
            stream.ids.append(ids[i])
            stream.weights.append(weight)
            stream.spans.append(spans[i])
            origin.append(index)
            i += 1
