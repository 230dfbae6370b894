"""CLIP's BPE vocabulary: the packaged OpenAI file, or a Hugging Face tokenizer folder.

Facts relied on (OpenAI CLIP `simple_tokenizer.py`, open_clip, transformers):
- `bpe_simple_vocab_16e6.txt.gz`: line 0 is a header; merges are lines [1 : 49152-256-2+1] (48,894).
- vocab = the 256 byte symbols of GPT-2's `bytes_to_unicode` map, the same 256 with `</w>`, one entry per
  merge (the pair concatenated), then `<|startoftext|>` = 49406 and `<|endoftext|>` = 49407 (49,408 ids).
- HF folders hold `vocab.json` (token → id) and `merges.txt` (`#version` header, then "a b" lines), plus
  added tokens in `tokenizer_config.json` / `special_tokens_map.json` / `tokenizer.json` / `added_tokens.json`.
  A folder saved by transformers 5 holds only `tokenizer.json` (+ `tokenizer_config.json`): its `model`
  has `vocab` and `merges` (pairs as ["a", "b"] lists, or "a b" strings in older `tokenizers`), and
  `added_tokens` lists the specials with their ids.
Every problem with a folder's files is a `TokenizerFilesError` (a ValueError) naming the file; a missing
file is also a FileNotFoundError.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources
from pathlib import Path

from sdclip.bounded_files import MAX_TOKENIZER, loads, read_text

class TokenizerFilesError(ValueError):
    """A tokenizer folder's files are missing, unreadable or not a CLIP BPE vocabulary."""


class MissingTokenizerFileError(TokenizerFilesError, FileNotFoundError):
    """A tokenizer folder (or a file it needs) does not exist."""


N_MERGES = 49152 - 256 - 2  #: merges CLIP uses from the packaged file
BOS_TEXT = "<|startoftext|>"
EOS_TEXT = "<|endoftext|>"
#: open_clip's own spelling of the two specials (what a typed special looks like in its mode)
OPENCLIP_BOS_TEXT = "<start_of_text>"
OPENCLIP_EOS_TEXT = "<end_of_text>"
END_OF_WORD = "</w>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (whitespace/control bytes moved above U+0100)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The inverse of `bytes_to_unicode`."""
    return {c: b for b, c in bytes_to_unicode().items()}


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """The CLIP vocabulary implied by a merge list (byte symbols, byte symbols + `</w>`, merges, specials)."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + [a + b for a, b in merges] + [BOS_TEXT, EOS_TEXT]
    return {t: i for i, t in enumerate(tokens)}


@lru_cache(maxsize=1)
def packaged() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """(vocab, merges) of the vocabulary file shipped with sdclip; read once."""
    raw = resources.files("sdclip").joinpath("data/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")[1 : N_MERGES + 1]
    merges = tuple(tuple(line.split()) for line in lines)
    return build_vocab(list(merges)), merges  # type: ignore[arg-type]


def read_merges(path: Path) -> list[tuple[str, str]]:
    """`merges.txt`: an optional `#version` header, then one "left right" pair per line."""
    merges = []
    for n, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip() or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokenizerFilesError(f"{path}:{n}: a merge line must be two symbols separated by a space, got {line[:80]!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _read_text(path: Path) -> str:
    """A text file of the folder as UTF-8 through sdclip's bounded reader (regular files only, a size cap),
    every failure a TokenizerFilesError naming it."""
    return read_text(path, MAX_TOKENIZER, TokenizerFilesError, missing=MissingTokenizerFileError)


def _read_json(path: Path):
    return loads(_read_text(path), path, TokenizerFilesError)


def _content(value) -> str | None:
    """A special-token entry is either the text itself or an AddedToken dict with `content`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def read_added_tokens(folder: Path, vocab: dict[str, int]) -> dict[str, int]:
    """Every added token the folder declares, text → id (id from the entry, else from vocab.json).

    Entries without a known id are skipped: sdclip never invents ids.
    """
    found: dict[str, int] = {}

    def load(name: str):
        p = folder / name
        if not p.is_file():
            return None
        return _read_json(p)

    def add(text, token_id=None):
        if text is None:
            return
        token_id = token_id if isinstance(token_id, int) else vocab.get(text)
        if token_id is not None:
            found[text] = token_id

    tok_json = load("tokenizer.json")
    if isinstance(tok_json, dict):
        entries = tok_json.get("added_tokens")
        for entry in entries if isinstance(entries, list) else []:
            add(_content(entry), entry.get("id") if isinstance(entry, dict) else None)
    added_json = load("added_tokens.json")
    if isinstance(added_json, dict):
        for text, token_id in added_json.items():
            add(text, token_id)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = load(name)
        if not isinstance(cfg, dict):
            continue
        decoder = cfg.get("added_tokens_decoder")
        for key, entry in (decoder.items() if isinstance(decoder, dict) else ()):
            add(_content(entry), int(key) if str(key).isascii() and str(key).isdigit() else None)
        for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
            add(_content(cfg.get(key)))
        extra = cfg.get("additional_special_tokens")
        for entry in extra if isinstance(extra, list) else []:
            add(_content(entry))
    return found


def read_folder(path) -> tuple[dict[str, int], list[tuple[str, str]], dict[str, int]]:
    """(vocab, merges, added tokens) of a Hugging Face / diffusers tokenizer folder.

    `vocab.json` + `merges.txt` when the folder has them (transformers 4 writes both), else the `model`
    of `tokenizer.json` (transformers 5 writes only that).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise MissingTokenizerFileError(f"tokenizer folder {folder} does not exist")
    vocab_path, merges_path, json_path = folder / "vocab.json", folder / "merges.txt", folder / "tokenizer.json"
    if vocab_path.is_file() or merges_path.is_file() or not json_path.is_file():
        for p in (vocab_path, merges_path):
            if not p.is_file():
                raise MissingTokenizerFileError(
                    f"{p} is missing: a CLIP tokenizer folder needs vocab.json and merges.txt, or a tokenizer.json"
                )
        vocab = _check_vocab(_read_json(vocab_path), vocab_path)
        merges = read_merges(merges_path)
    else:
        vocab, merges = _read_tokenizer_json(json_path)
    return vocab, merges, read_added_tokens(folder, vocab)


def _check_vocab(vocab, where: Path) -> dict[str, int]:
    if not isinstance(vocab, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in vocab.values()):
        raise TokenizerFilesError(f"{where}: expected an object mapping token text to integer id")
    return vocab


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab and merges of a `tokenizers` BPE model saved in tokenizer.json."""
    data = _read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else None
        raise TokenizerFilesError(f"{path}: expected a BPE model (CLIP's), found {kind or 'none'}")
    vocab = _check_vocab(model.get("vocab"), path)
    raw = model.get("merges")
    if not isinstance(raw, list):
        raise TokenizerFilesError(f"{path}: model.merges must be a list")
    merges: list[tuple[str, str]] = []
    for n, m in enumerate(raw):
        pair = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) and x for x in pair)):
            raise TokenizerFilesError(f"{path}: model.merges[{n}] is not a pair of symbols: {str(m)[:80]}")
        merges.append((pair[0], pair[1]))
    return vocab, merges
