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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sdclip.syntax.prompt import Sequence
from sdclip.tokenizer.stream import TokenStream

__all__ = ["T5Tokenizer", "T5Tokens", "T5TokenizerError", "tokenize_t5"]

PAD_ID = 0
EOS_TEXT = "</s>"
PAD_TEXT = "<pad>"
UNK_TEXT = "<unk>"
Pipeline = Literal["transformers", "file"]
Split = Literal["text", "fragments"]


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


class T5Tokenizer:
    """A T5 SentencePiece-Unigram tokenizer over `tokenizers`. Build with `from_folder` / `from_file`."""

    def __init__(self, backend, source: str = "<memory>"):
        self._tok = backend
        self.source = source
        vocab = backend.get_vocab(with_added_tokens=True)
        self.eos_id = _required(vocab, EOS_TEXT, source)
        self.pad_id = vocab.get(PAD_TEXT, PAD_ID)
        self.unk_id = vocab.get(UNK_TEXT)
        self.vocab_size = max(vocab.values()) + 1
        self._id_to_text = {i: t for t, i in vocab.items()}

    # construction -----------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | Path, pipeline: Pipeline = "transformers") -> "T5Tokenizer":
        """A transformers / diffusers T5 tokenizer folder: tokenizer.json, else spiece.model."""
        folder = Path(path)
        if not folder.is_dir():
            raise T5TokenizerError(f"{folder}: not a folder")
        if (folder / "tokenizer.json").is_file():
            return cls.from_file(folder / "tokenizer.json", pipeline)
        if (folder / "spiece.model").is_file():
            return cls.from_spiece(folder / "spiece.model", _extra_ids(folder))
        raise T5TokenizerError(f"{folder}: no tokenizer.json or spiece.model (not a T5 tokenizer folder)")

    @classmethod
    def from_file(cls, path: str | Path, pipeline: Pipeline = "transformers") -> "T5Tokenizer":
        """A `tokenizer.json` holding a Unigram (SentencePiece) model."""
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise T5TokenizerError(f"{path}: not a readable tokenizer.json ({e})") from None
        model = doc.get("model") if isinstance(doc, dict) else None
        if not isinstance(model, dict) or model.get("type") != "Unigram":
            kind = model.get("type") if isinstance(model, dict) else None
            raise T5TokenizerError(f"{path}: a {kind or 'unknown'} tokenizer, not T5's SentencePiece Unigram")
        try:
            backend = Tokenizer.from_str(json.dumps(doc))
        except Exception as e:  # tokenizers raises bare Exceptions on malformed documents
            raise T5TokenizerError(f"{path}: tokenizers cannot read it ({str(e).splitlines()[0]})") from None
        if pipeline == "transformers":
            _transformers_pipeline(backend, _charsmap(doc.get("normalizer")))
        elif pipeline != "file":
            raise ValueError(f"pipeline must be 'transformers' or 'file', got {pipeline!r}")
        backend.post_processor = None
        backend.no_truncation()
        backend.no_padding()
        return cls(backend, str(path))

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
            proto.ParseFromString(path.read_bytes())
        except ImportError:
            raise T5TokenizerError(f"{path}: reading spiece.model needs the sentencepiece package") from None
        except Exception as e:
            raise T5TokenizerError(f"{path}: not a SentencePiece model ({type(e).__name__}: {e})") from None
        if proto.trainer_spec.model_type != 1 or not proto.pieces:  # 1 = UNIGRAM
            raise T5TokenizerError(f"{path}: not a SentencePiece Unigram model")
        vocab = [(p.piece, float(p.score)) for p in proto.pieces]
        unk = proto.trainer_spec.unk_id
        backend = Tokenizer(Unigram(vocab, unk_id=unk, byte_fallback=False))
        sentinels = [f"<extra_id_{i}>" for i in range(extra_ids - 1, -1, -1)]
        specials = [p.piece for p in proto.pieces if p.type in (2, 3)]  # CONTROL, UNKNOWN
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials + sentinels])
        _transformers_pipeline(backend, proto.normalizer_spec.precompiled_charsmap or None)
        return cls(backend, str(path))

    # encoding ---------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Content ids of `text`: no `</s>`, no truncation."""
        return self.encode_with_spans(text)[0]

    def encode_with_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Content ids and each token's (start, end) character span in `text`."""
        if type(text) is not str:
            raise TypeError(f"T5Tokenizer.encode expects str, got {type(text).__name__}")
        try:
            enc = self._tok.encode(text, add_special_tokens=False)
        except Exception as e:  # a lone surrogate cannot cross into Rust
            raise ValueError(f"text cannot be tokenized: {e}") from None
        return list(enc.ids), [tuple(o) for o in enc.offsets]

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


def _charsmap(normalizer: object) -> bytes | None:
    """The SentencePiece normalisation table of a tokenizer.json normaliser (alone or in a Sequence)."""
    import base64

    items = normalizer.get("normalizers", [normalizer]) if isinstance(normalizer, dict) else []
    for item in items:
        if isinstance(item, dict) and item.get("type") == "Precompiled" and item.get("precompiled_charsmap"):
            try:
                return base64.b64decode(item["precompiled_charsmap"])
            except ValueError:
                raise T5TokenizerError("tokenizer.json: precompiled_charsmap is not base64") from None
    return None


def _transformers_pipeline(backend, charsmap: bytes | None) -> None:
    """The normaliser / pre-tokeniser transformers 5's T5Tokenizer.__init__ installs."""
    from tokenizers import normalizers, pre_tokenizers

    try:
        backend.normalizer = normalizers.Precompiled(charsmap) if charsmap else None
    except Exception as e:
        raise T5TokenizerError(f"unusable SentencePiece normalisation table ({e})") from None
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)]
    )


def _extra_ids(folder: Path) -> int:
    """`extra_ids` of a folder's tokenizer_config.json (T5's default: 100)."""
    try:
        cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        n = cfg.get("extra_ids", 100)
        return n if isinstance(n, int) and 0 <= n <= 10000 else 100
    except (OSError, ValueError, AttributeError):
        return 100


def tokenize_t5(
    sequence: Sequence | tuple,
    tokenizer: T5Tokenizer,
    max_length: int | None = None,
    *,
    source: str = "",
    split: Split = "text",
) -> T5Tokens:
    """One Sequence → T5 tokens with weights and source spans, truncated to `max_length` positions
    (content + `</s>`; None: no limit — T5's relative positions have no maximum).

    Text fragments are joined ("break" fragments become a space; "embedding" fragments are left out: T5
    has no textual-inversion vectors) and tokenized at once; a token's weight is that of the fragment
    holding its first character. split="fragments" tokenizes each fragment alone (ComfyUI).
    """
    if split not in ("text", "fragments"):
        raise ValueError(f"split must be 'text' or 'fragments', got {split!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
    fragments = sequence.fragments if isinstance(sequence, Sequence) else tuple(sequence)
    pieces = [(" " if f.kind == "break" else f.text, f) for f in fragments if f.kind != "embedding"]
    ids: list[int] = []
    weights: list[float] = []
    spans: list[tuple[int, int]] = []
    if split == "fragments":
        for text, frag in pieces:
            if frag.kind == "break":
                continue
            t_ids, t_spans = tokenizer.encode_with_spans(text)
            end = max(frag.start, frag.end)
            ids.extend(t_ids)
            weights.extend([frag.weight] * len(t_ids))
            spans.extend((min(frag.start + a, end), min(frag.start + b, end)) for a, b in t_spans)
    else:
        text = "".join(t for t, _ in pieces)
        bounds, at = [], 0  # plain-text start of each piece
        for t, _ in pieces:
            bounds.append(at)
            at += len(t)
        t_ids, t_spans = tokenizer.encode_with_spans(text)
        import bisect

        for token_id, (a, b) in zip(t_ids, t_spans):
            k = max(0, bisect.bisect_right(bounds, min(a, max(len(text) - 1, 0))) - 1)
            while k + 1 < len(pieces) and not pieces[k][0] and bounds[k + 1] <= a:
                k += 1  # skip empty fragments
            frag = pieces[k][1] if pieces else None
            ids.append(token_id)
            weights.append(frag.weight if frag is not None else 1.0)
            spans.append(_to_source(a, b, k, bounds, pieces))
    keep = len(ids) if max_length is None else min(len(ids), max_length - 1)
    dropped = ""
    if keep < len(ids):
        dropped = source[spans[keep][0]:] if source else tokenizer.decode(ids[keep:])
    stream = TokenStream(ids=ids[:keep], weights=weights[:keep], spans=spans[:keep], source=source)
    return T5Tokens(stream, tokenizer.eos_id, dropped, len(ids) - keep)


def _to_source(a: int, b: int, k: int, bounds: list[int], pieces: list) -> tuple[int, int]:
    """A span in the joined plain text → source-prompt coordinates through the fragment it starts in."""
    if not pieces:
        return (0, 0)
    frag = pieces[k][1]
    end = max(frag.start, frag.end)
    if frag.kind == "break":
        return (frag.start, end)
    s = min(frag.start + (a - bounds[k]), end)
    # the token may run into later fragments: find the fragment of its last character
    j = k
    while j + 1 < len(pieces) and bounds[j + 1] < b:
        j += 1
    fj = pieces[j][1]
    ej = max(fj.start, fj.end)
    e = ej if fj.kind == "break" else min(fj.start + (b - bounds[j]), ej)
    return (s, max(s, e))
