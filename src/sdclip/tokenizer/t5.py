"""The T5 tokenizer of SD3 / SD3.5 (`tokenizer_3`) and Flux (`tokenizer_2`): ids, weights, spans. No torch.

Read from the model's own folder: `tokenizer.json` through `tokenizers`, or, where a folder has none, the
SentencePiece `spiece.model` (its pieces, scores and normalisation table are read from the protobuf; the
model is never run). The text pipeline is the one transformers ≥ 5 builds for `T5Tokenizer` /
`T5TokenizerFast` whatever the file itself declares (a Unigram model over the file's pieces, the
file's precompiled SentencePiece normaliser, `WhitespaceSplit` + `Metaspace("▁", always, split)`), so ids
equal what diffusers gets with the installed transformers. transformers 4 ran the file's own pipeline;
`pipeline="file"` keeps that (the two differ only on leading or unusual whitespace).

T5 has no BOS; `</s>` ends every sequence, `<pad>` (id 0) pads it. Weighted prompts: the text of all
fragments is tokenized at once (as diffusers sees the plain prompt) and each token takes the weight of the
fragment that holds its first character; `split="fragments"` tokenizes each fragment on its own instead,
as ComfyUI does. Truncation keeps `max_length − 1` tokens and `</s>` (as transformers) and reports the
source text it dropped.
"""

from __future__ import annotations

import base64
import bisect
import sys
from array import array
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Literal

from sdclip.bounded_files import MAX_TOKENIZER, loads, read_bytes, read_json, read_text
from sdclip.syntax.prompt import Sequence
from sdclip.tokenizer.stream import NO_SPANS, SpansNeeded, TokenStream
from sdclip.tokenizer.source_spans import SourceMap, fragment_spans, shifted

__all__ = ["T5Tokenizer", "T5Tokens", "T5TokenizerError", "tokenize_t5"]

PAD_ID = 0
EOS_TEXT = "</s>"
PAD_TEXT = "<pad>"
UNK_TEXT = "<unk>"
Pipeline = Literal["transformers", "file"]
Split = Literal["text", "fragments"]
#: words whose ids `T5Tokenizer.encode` remembers before it starts afresh (bounds memory on endless input)
_WORD_CACHE = 1 << 16


class T5TokenizerError(ValueError):
    """A T5 tokenizer folder or file that cannot be used as one."""


@dataclass(frozen=True)
class T5Tokens:
    """One prompt's T5 tokens: `stream` holds the content tokens (no `</s>`, after truncation) with their
    weights and source spans; `dropped` is the source text truncation cut ("" if none) and
    `dropped_tokens` how many tokens it held."""

    stream: TokenStream
    eos_id: int
    dropped: str = ""
    dropped_tokens: int = 0

    @property
    def count(self) -> int:
        """Tokens the encoder sees before padding (content + `</s>`): the n of n/256."""
        return len(self.stream) + 1

    def ids(self, length: int | None = None, pad_id: int = PAD_ID) -> list[int]:
        """content + `</s>`, padded with `pad_id` up to `length` (None: no padding)."""
        out = [*self.stream.ids, self.eos_id]
        if length is not None:
            if length < len(out):
                raise ValueError(f"{len(out)} tokens do not fit in {length} positions")
            out.extend([pad_id] * (length - len(out)))
        return out

    def weights(self, length: int | None = None, pad_weight: float = 1.0) -> list[float]:
        """Per-position weights matching `ids(length)`: `</s>` and padding carry `pad_weight`."""
        out = [*self.stream.weights, pad_weight]
        if length is not None:
            out.extend([pad_weight] * (length - len(out)))
        return out


class _WordIds(dict):
    """word → the Unigram model's ids of `▁word`; a miss asks the model (bounded: _WORD_CACHE words)."""

    def __init__(self, backend):  # noqa: ANN001 (tokenizers.Tokenizer)
        super().__init__()
        self._backend = backend

    def __missing__(self, word: str) -> tuple[int, ...]:
        if len(self) >= _WORD_CACHE:
            self.clear()
        ids = self[word] = tuple(t.id for t in self._backend.model.tokenize("▁" + word))
        return ids


class T5Tokenizer:
    """A T5 SentencePiece-Unigram tokenizer over `tokenizers`. Build with `from_folder` / `from_file`."""

    def __init__(self, backend, source: str = "<memory>", word_split: bool = False):
        """word_split: the backend runs `_transformers_pipeline` (a Unigram model, no padding or truncation),
        so `encode` may tokenize a plain text word by word (see `_plain_words`)."""
        self._tok = backend
        self.source = source
        vocab = backend.get_vocab(with_added_tokens=True)
        self.eos_id = _required(vocab, EOS_TEXT, source)
        self.pad_id = vocab.get(PAD_TEXT, PAD_ID)
        self.unk_id = vocab.get(UNK_TEXT)
        self.vocab_size = max(vocab.values()) + 1
        self._id_to_text = {i: t for t, i in vocab.items()}
        self._word_split = word_split
        #: first characters of the added tokens (`</s>`, `<extra_id_0>`…): a text holding none has no added token
        self._added_starts = frozenset(t.content[0] for t in backend.get_added_tokens_decoder().values() if t.content)
        self._word_ids = _WordIds(backend)  #: word → its ids, each word tokenized once (see `encode`)
        #: the normaliser leaves each printable ASCII character as it is, so a printable ASCII text too: it
        #: works grapheme by grapheme (tokenizers' normalizers/precompiled.rs @12c2952), and there each
        #: such character is a grapheme of its own
        normalizer = backend.normalizer
        self._ascii_kept = word_split and (normalizer is None or all(
            normalizer.normalize_str(c) == c for c in map(chr, range(0x20, 0x7F))))

    # construction -----------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | Path, pipeline: Pipeline = "transformers") -> "T5Tokenizer":
        """A transformers / diffusers T5 tokenizer folder: tokenizer.json, else spiece.model."""
        folder = Path(path)
        if not folder.is_dir():
            raise T5TokenizerError(f"{folder}: not a folder")
        if (folder / "tokenizer.json").exists():  # a FIFO / device is read and refused by kind, not skipped
            return cls.from_file(folder / "tokenizer.json", pipeline)
        if (folder / "spiece.model").exists():
            return cls.from_spiece(folder / "spiece.model", _extra_ids(folder))
        raise T5TokenizerError(f"{folder}: no tokenizer.json or spiece.model (not a T5 tokenizer folder)")

    @classmethod
    def from_file(cls, path: str | Path, pipeline: Pipeline = "transformers") -> "T5Tokenizer":
        """A `tokenizer.json` holding a Unigram (SentencePiece) model. The file is read through the bounded
        reader and every normalisation table in it is checked before `tokenizers` sees it (a bad one
        panics or aborts inside Rust)."""
        from tokenizers import Tokenizer

        path = Path(path)
        if pipeline not in ("transformers", "file"):
            raise ValueError(f"pipeline must be 'transformers' or 'file', got {pipeline!r}")
        text = read_text(path, MAX_TOKENIZER, T5TokenizerError, "not a readable tokenizer.json")
        doc = loads(text, path, T5TokenizerError, "not a readable tokenizer.json")
        model = doc.get("model") if isinstance(doc, dict) else None
        if not isinstance(model, dict) or model.get("type") != "Unigram":
            kind = model.get("type") if isinstance(model, dict) else None
            raise T5TokenizerError(f"{path}: a {kind if isinstance(kind, str) else 'unknown'} tokenizer, not T5's "
                                   "SentencePiece Unigram")
        charsmaps = _charsmaps(doc.get("normalizer"), path)
        try:
            backend = Tokenizer.from_str(text)
        except BaseException as e:  # tokenizers raises bare Exceptions (and panics) on malformed documents
            if not _from_rust(e):
                raise
            raise T5TokenizerError(f"{path}: tokenizers cannot read it ({_first_line(e)})") from None
        if pipeline == "transformers":
            _transformers_pipeline(backend, charsmaps[0] if charsmaps else None, path)
        backend.post_processor = None
        backend.no_truncation()
        backend.no_padding()
        return cls(backend, str(path), word_split=pipeline == "transformers")

    @classmethod
    def from_spiece(cls, path: str | Path, extra_ids: int = 100) -> "T5Tokenizer":
        """A SentencePiece `spiece.model` (protobuf, parsed, never executed): pieces and scores into a Unigram
        model, its normalisation table into `Precompiled`, T5's `<extra_id_N>` sentinels appended."""
        from tokenizers import AddedToken, Tokenizer
        from tokenizers.models import Unigram

        path = Path(path)
        try:
            from sentencepiece import sentencepiece_model_pb2 as pb

            proto = pb.ModelProto()
            proto.ParseFromString(read_bytes(path, MAX_TOKENIZER, T5TokenizerError, "not a SentencePiece model"))
        except T5TokenizerError:
            raise
        except ImportError:
            raise T5TokenizerError(f"{path}: reading spiece.model needs the sentencepiece package") from None
        except Exception as e:
            raise T5TokenizerError(f"{path}: not a SentencePiece model ({type(e).__name__}: {_first_line(e)})") from None
        if proto.trainer_spec.model_type != 1 or not proto.pieces:  # 1 = UNIGRAM
            raise T5TokenizerError(f"{path}: not a SentencePiece Unigram model")
        vocab = [(p.piece, float(p.score)) for p in proto.pieces]
        unk = proto.trainer_spec.unk_id
        if not 0 <= unk < len(vocab):
            raise T5TokenizerError(f"{path}: its unknown-piece id {unk} is outside its {len(vocab)} pieces")
        try:
            backend = Tokenizer(Unigram(vocab, unk_id=unk, byte_fallback=False))
        except BaseException as e:
            if not _from_rust(e):
                raise
            raise T5TokenizerError(f"{path}: tokenizers cannot use its pieces ({_first_line(e)})") from None
        sentinels = [f"<extra_id_{i}>" for i in range(extra_ids - 1, -1, -1)]
        specials = [p.piece for p in proto.pieces if p.type in (2, 3)]  # CONTROL, UNKNOWN
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials + sentinels])
        charsmap = proto.normalizer_spec.precompiled_charsmap or None
        if charsmap is not None:
            check_charsmap(charsmap, path)
        _transformers_pipeline(backend, charsmap, path)
        return cls(backend, str(path), word_split=True)

    # encoding ---------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Content ids of `text`: no `</s>`, no truncation (encode_with_spans' ids). A plain text's words are
        tokenized once each and remembered (as CLIP's pieces are): 47 → 5.5 µs a 60-word caption."""
        words = self._plain_words(text)
        if words is None:
            return list(self._encoding(text).ids)
        return list(chain.from_iterable(map(self._word_ids.__getitem__, words)))

    def _plain_words(self, text: str) -> list[str] | None:
        """The words `tokenizers` hands the Unigram model one by one, or None where Python cannot find them
        itself. The pipeline: added tokens are cut out of the text, the rest normalised (the SentencePiece
        table), split at whitespace (`WhitespaceSplit`: Rust's `char::is_whitespace`), and `▁` put before
        each piece (`Metaspace`, prepend "always", split at `▁`). For an ASCII text with no added token's
        first character, whose normal form is printable ASCII, that is `"▁" + w` for w in its `split()`
        (the space is its only whitespace, and no `▁` is left to split at); tested against `encode` itself."""
        if not self._word_split or type(text) is not str or not text.isascii():
            return None
        if not self._added_starts.isdisjoint(text):
            return None
        if self._ascii_kept and text.isprintable():
            return text.split()  # its normal form is itself (see __init__)
        normalizer = self._tok.normalizer
        normal = normalizer.normalize_str(text) if normalizer is not None else text
        if not (normal.isascii() and normal.isprintable() and self._added_starts.isdisjoint(normal)):
            return None
        return normal.split()

    def encode_with_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Content ids and each token's (start, end) character span in `text`."""
        enc = self._encoding(text)
        return list(enc.ids), [tuple(o) for o in enc.offsets]

    def _encoding(self, text: str):  # noqa: ANN202 (tokenizers.Encoding)
        if type(text) is not str:
            raise TypeError(f"T5Tokenizer.encode expects str, got {type(text).__name__}")
        try:
            return self._tok.encode(text, add_special_tokens=False)
        except Exception as e:  # a lone surrogate cannot cross into Rust
            raise ValueError(f"text cannot be tokenized: {e}") from None

    def __call__(self, text: str, max_length: int | None = None, pad: bool = True) -> list[int]:
        """What `T5TokenizerFast(text, padding="max_length", max_length=…, truncation=True)` gives."""
        tokens = tokenize_t5(Sequence(_plain(text)), self, max_length, source=text)
        return tokens.ids(max_length if pad else None, self.pad_id)

    # reading ids back ------------------------------------------------------------------------------

    def token_text(self, token_id: int) -> str:
        """The piece of an id, e.g. "▁fox" (for `sdclip inspect`)."""
        try:
            return self._id_to_text[token_id]
        except (KeyError, TypeError):
            raise ValueError(f"{token_id!r} is not a token id of this vocabulary (0..{self.vocab_size - 1})") from None

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"T5Tokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


def _plain(text: str):
    from sdclip.syntax.prompt import Fragment

    return (Fragment(text, 1.0, 0, len(text)),)


def _required(vocab: dict, text: str, source: str) -> int:
    if text not in vocab:
        raise T5TokenizerError(f"{source}: vocabulary lacks {text!r}: not a T5 tokenizer")
    return vocab[text]


def _charsmaps(normalizer: object, where: Path) -> list[bytes]:
    """Every SentencePiece normalisation table of a tokenizer.json normaliser (alone or in Sequences, in
    order), decoded and checked: `tokenizers` decodes and reads them itself, and panics on bad ones."""
    found: list[bytes] = []
    stack = [normalizer]
    while stack:
        item = stack.pop()
        if not isinstance(item, dict):
            continue
        if item.get("type") == "Sequence" and isinstance(item.get("normalizers"), list):
            stack.extend(reversed(item["normalizers"]))
        elif item.get("type") == "Precompiled":
            raw = item.get("precompiled_charsmap")
            if raw is None or raw == "":
                continue
            if not isinstance(raw, str):
                raise T5TokenizerError(f"{where}: precompiled_charsmap must be a base64 string, found {type(raw).__name__}")
            try:
                blob = base64.b64decode(raw, validate=True)
            except ValueError:
                raise T5TokenizerError(f"{where}: precompiled_charsmap is not base64") from None
            check_charsmap(blob, where)
            found.append(blob)
    return found


#: the largest normalisation table read (nmt_nfkc's, what T5 uses: 240 kB)
MAX_CHARSMAP = 16 << 20


def check_charsmap(blob: bytes, where: object) -> None:
    """Refuse a SentencePiece `precompiled_charsmap` that `tokenizers` could not use safely.

    The format: a little-endian u32 trie size in bytes, the trie (darts-clone double array, u32 units),
    then NUL-separated replacement strings (UTF-8). `tokenizers` allocates the trie by the stated size
    (random bytes: gigabytes, an abort) and walks it without bounds checks of its own making (a panic). So:
    the size must fit the blob; from every node unit (the root and each unit without the value bit 31) the
    block its children sit in, (index ^ offset) | 0xFF, must lie inside the array — that bounds every
    position a walk can reach for any input byte; and every value a leaf yields must start a character of
    the replacement strings. Real tables pass (the rule holds by darts-clone's 256-unit blocks)."""
    size = len(blob)
    if size > MAX_CHARSMAP:
        raise T5TokenizerError(f"{where}: the SentencePiece normalisation table is {size:,} bytes, more than any real one")
    trie_size = int.from_bytes(blob[:4], "little") if size >= 4 else -1
    if trie_size < 4 or trie_size % 4 or 4 + trie_size > size:
        raise T5TokenizerError(f"{where}: corrupt SentencePiece normalisation table (its trie size {trie_size} does "
                               f"not fit its {size:,} bytes)")
    units = array("I")
    units.frombytes(blob[4: 4 + trie_size])
    if sys.byteorder != "little":
        units.byteswap()
    replacements = blob[4 + trie_size:]
    try:
        replacements.decode("utf-8")
    except UnicodeDecodeError:
        raise T5TokenizerError(f"{where}: corrupt SentencePiece normalisation table (replacements not UTF-8)") from None
    n, end = len(units), len(replacements)
    for i, unit in enumerate(units):
        if unit >> 31 and i:
            continue  # a value unit: never walked through (its label carries bit 31)
        base = i ^ ((unit >> 10) << ((unit & (1 << 9)) >> 6))
        if (base | 0xFF) >= n:
            raise T5TokenizerError(f"{where}: corrupt SentencePiece normalisation table (trie unit {i} points "
                                   f"past its {n:,} units)")
        if (unit >> 8) & 1:
            value = units[base] & 0x7FFFFFFF
            if value > end or (value < end and 0x80 <= replacements[value] < 0xC0):
                raise T5TokenizerError(f"{where}: corrupt SentencePiece normalisation table (trie unit {i} names "
                                       f"replacement byte {value}, not the start of one of its {end:,} bytes)")


def _from_rust(e: BaseException) -> bool:
    """An error `tokenizers` raised: an Exception, or pyo3's PanicException (a BaseException)."""
    return isinstance(e, Exception) or type(e).__name__ == "PanicException"


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:200]


def _transformers_pipeline(backend, charsmap: bytes | None, where: object = "") -> None:
    """The normaliser / pre-tokeniser transformers 5's T5Tokenizer.__init__ installs (`charsmap` checked)."""
    from tokenizers import normalizers, pre_tokenizers

    try:
        backend.normalizer = normalizers.Precompiled(charsmap) if charsmap else None
    except BaseException as e:
        if not _from_rust(e):
            raise
        raise T5TokenizerError(f"{where}: unusable SentencePiece normalisation table ({_first_line(e)})") from None
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)]
    )


def _extra_ids(folder: Path) -> int:
    """`extra_ids` of a folder's tokenizer_config.json (T5's default: 100; an unreadable file: refused)."""
    path = folder / "tokenizer_config.json"
    if not path.exists():
        return 100
    cfg = read_json(path, T5TokenizerError, "unreadable tokenizer_config.json")
    n = cfg.get("extra_ids", 100) if isinstance(cfg, dict) else 100
    return n if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 10000 else 100


def tokenize_t5(
    sequence: Sequence | tuple,
    tokenizer: T5Tokenizer,
    max_length: int | None = None,
    *,
    source: str = "",
    split: Split = "text",
    spans: bool = True,
) -> T5Tokens:
    """One Sequence → T5 tokens with weights and source spans, truncated to `max_length` positions
    (content + `</s>`; None: no limit — T5's relative positions have no maximum).

    Text fragments are joined ("break" fragments become a space; "embedding" fragments are left out: T5
    has no textual-inversion vectors) and tokenized at once; a token's weight is that of the fragment
    holding its first character. split="fragments" tokenizes each fragment alone (ComfyUI). spans=False:
    no source spans are worked out (`NO_SPANS`: a caller reading only the rows' sizes); the rest is the same.
    """
    if split not in ("text", "fragments"):
        raise ValueError(f"split must be 'text' or 'fragments', got {split!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
    fragments = sequence.fragments if isinstance(sequence, Sequence) else tuple(sequence)
    pieces = [(" " if f.kind == "break" else f.text, f) for f in fragments if f.kind != "embedding"]
    if not spans:
        ids, weights = _ids_and_weights(pieces, tokenizer, split)
        if max_length is not None and len(ids) > max_length - 1:
            raise SpansNeeded  # the dropped text is read from the spans
        return T5Tokens(TokenStream(ids=ids, weights=weights, spans=NO_SPANS, source=source), tokenizer.eos_id)
    ids: list[int] = []
    weights: list[float] = []
    found: list[tuple[int, int]] = []
    if split == "fragments":
        for text, frag in pieces:
            if frag.kind == "break":
                continue
            t_ids, t_spans = tokenizer.encode_with_spans(text)
            ids.extend(t_ids)
            weights.extend([frag.weight] * len(t_ids))
            found.extend(fragment_spans(text, frag.start, frag.end, t_spans, source))  # the text may be rewritten
    else:
        text = "".join(t for t, _ in pieces)
        bounds = _bounds(pieces)  # plain-text start of each piece
        t_ids, t_spans = tokenizer.encode_with_spans(text)
        where = SourceMap(source)
        # a piece whose text is its source slice maps by a shift (SourceMap's verbatim case, no call per token)
        shift = [None if f.kind == "break" or not where.verbatim(k, f.text, f.start, max(f.start, f.end))
                 else f.start - bounds[k] for k, (_, f) in enumerate(pieces)]
        if len(pieces) == 1 and shift[0] is not None:  # one verbatim piece (most captions): the loop below, batched
            lo, hi, w = shift[0], max(pieces[0][1].start, pieces[0][1].end), pieces[0][1].weight
            ids, weights = list(t_ids), [w] * len(t_ids)
            found = [shifted(a, b, lo, hi) for a, b in t_spans]
            t_ids = ()
        for token_id, (a, b) in zip(t_ids, t_spans):
            k = _piece_at(a, bounds, pieces, len(text))
            frag = pieces[k][1] if pieces else None
            ids.append(token_id)
            weights.append(frag.weight if frag is not None else 1.0)
            lo = shift[k] if pieces else None
            if lo is not None and (k + 1 == len(pieces) or b <= bounds[k + 1]):  # within piece k
                found.append(shifted(a, b, lo, max(frag.start, frag.end)))
            else:
                found.append(_to_source(a, b, k, bounds, pieces, where))
    keep = len(ids) if max_length is None else min(len(ids), max_length - 1)
    dropped = ""
    if keep < len(ids):
        dropped = source[found[keep][0]:] if source else tokenizer.decode(ids[keep:])
    stream = TokenStream(ids=ids[:keep], weights=weights[:keep], spans=found[:keep], source=source)
    return T5Tokens(stream, tokenizer.eos_id, dropped, len(ids) - keep)


def _bounds(pieces: list) -> list[int]:
    """Where each piece's text starts in the pieces' joined text."""
    bounds, at = [], 0
    for t, _ in pieces:
        bounds.append(at)
        at += len(t)
    return bounds


def _piece_at(a: int, bounds: list[int], pieces: list, length: int) -> int:
    """The piece holding character `a` of the joined text (of `length` characters): empty pieces skipped."""
    k = max(0, bisect.bisect_right(bounds, min(a, max(length - 1, 0))) - 1)
    while k + 1 < len(pieces) and not pieces[k][0] and bounds[k + 1] <= a:
        k += 1
    return k


def _ids_and_weights(pieces: list, tokenizer: T5Tokenizer, split: Split) -> tuple[list[int], list[float]]:
    """tokenize_t5's ids and weights without its spans: the same tokenizer calls; a token's weight is that of
    the piece holding its first character (its offset read only where the text has several pieces)."""
    ids: list[int] = []
    weights: list[float] = []
    if split == "fragments":
        for text, frag in pieces:
            if frag.kind != "break":
                t_ids = tokenizer.encode(text)
                ids.extend(t_ids)
                weights.extend([frag.weight] * len(t_ids))
        return ids, weights
    text = "".join(t for t, _ in pieces)
    if len(pieces) <= 1:
        ids = tokenizer.encode(text)
        return ids, [pieces[0][1].weight if pieces else 1.0] * len(ids)
    bounds = _bounds(pieces)
    t_ids, t_spans = tokenizer.encode_with_spans(text)
    return list(t_ids), [pieces[_piece_at(a, bounds, pieces, len(text))][1].weight for a, _ in t_spans]


def _to_source(a: int, b: int, k: int, bounds: list[int], pieces: list, where: SourceMap) -> tuple[int, int]:
    """A span in the joined plain text → source-prompt coordinates through the fragment it starts in (its
    characters found in the source where a dialect rewrote the fragment's text: sdclip.tokenizer.source_spans)."""
    if not pieces:
        return (0, 0)
    frag = pieces[k][1]
    end = max(frag.start, frag.end)
    if frag.kind == "break":
        return (frag.start, end)
    s = where.start(k, frag.text, frag.start, frag.end, a - bounds[k])
    # the token may run into later fragments: find the fragment of its last character
    j = k
    while j + 1 < len(pieces) and bounds[j + 1] < b:
        j += 1
    fj = pieces[j][1]
    ej = max(fj.start, fj.end)
    e = ej if fj.kind == "break" else where.end(j, fj.text, fj.start, fj.end, b - bounds[j])
    return (s, max(s, e))
