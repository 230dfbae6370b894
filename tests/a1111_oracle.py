"""An independent AUTOMATIC1111 oracle, written once from stable-diffusion-webui's documented rules
(behaviour, not code), and shared by the layout, conditioner and a1111 tests. Torch-free: the model side of
the oracle (encoding chunks with transformers) lives in tests/a1111_models.py.

- ``modules/prompt_parser.py`` ``parse_prompt_attention``: a regex tokenizer over ``\\(`` ``\\)`` ``\\[`` ``\\]``
  ``\\\\`` (literals), a lone ``\\`` (dropped), ``(``, ``[``, ``:w)`` (weighted closer), ``)``, ``]``, text, ``:``;
  ``(x)`` ×1.1, ``[x]`` ÷1.1, ``(x:w)`` ×w, each multiplier applied to the run in the order brackets close;
  unclosed brackets apply to the end (round first, then square); a closer with nothing open is text;
  ``\\s*\\bBREAK\\b\\s*`` inside text becomes the marker ("BREAK", -1); adjacent equal weights merge.
- ``modules/sd_hijack_clip.py`` ``tokenize_line``: every parsed segment tokenized on its own (no BOS/EOS);
  75-token chunks; on a token that is not a comma arriving at a full chunk whose last comma is within 20
  (``comma_padding_backtrack``) of the end, the tokens after that comma move to the next chunk; a full chunk is
  closed; BREAK closes the chunk; an embedding (found by its own token ids, ``find_embedding_at_position``)
  fills its vectors' slots and never straddles chunks; a chunk is ``[BOS] + tokens + [EOS]`` padded with EOS
  to 77; a last empty chunk is kept only when there is none. The token count adds 75 per full chunk.
"""

from __future__ import annotations

import functools
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from clip_files import write_tokenizer
from transformers import CLIPTokenizer

BOS, EOS = 49406, 49407
CHUNK = 75

_ATTENTION = re.compile(
    r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention(text: str) -> list[list]:
    """[[text, weight], …] as A1111's parse_prompt_attention; BREAK is ["BREAK", -1]."""
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= factor

    for m in _ATTENTION.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(res))
        elif piece == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif piece == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(_BREAK.split(piece)):
                if i:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for pos in round_open:
        scale(pos, 1.1)
    for pos in square_open:
        scale(pos, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


#: (tokens of a segment, position) → (vector slots, tokens consumed, embedding name) where an embedding starts
FindEmbedding = Callable[[list[int], int], "tuple[int, int, str] | None"]
#: one chunk slot: (token id, weight, embedding name or None); an embedding's slots hold id 0
Slot = tuple[int, float, "str | None"]


def chunk_segments(
    segments: list, *, comma: int, backtrack: int = 20, length: int = CHUNK, find_embedding: FindEmbedding | None = None
) -> tuple[list[list[Slot]], int]:
    """tokenize_line's chunking. segments: (token ids, weight) or ("BREAK", -1). Returns the chunks (without
    BOS/EOS) and A1111's token count."""
    chunks: list[list[Slot]] = []
    chunk: list[Slot] = []
    count, last_comma = 0, -1

    def next_chunk(is_last: bool = False) -> None:
        nonlocal chunk, count, last_comma
        count += len(chunk) if is_last else length
        chunks.append(chunk)
        chunk, last_comma = [], -1

    for tokens, weight in segments:
        if tokens == "BREAK" and weight == -1:
            next_chunk()
            continue
        pos = 0
        while pos < len(tokens):
            token = tokens[pos]
            if token == comma:
                last_comma = len(chunk)
            elif backtrack and len(chunk) == length and last_comma != -1 and len(chunk) - last_comma <= backtrack:
                moved = chunk[last_comma + 1 :]
                chunk = chunk[: last_comma + 1]
                next_chunk()
                chunk = moved
            if len(chunk) == length:
                next_chunk()
            found = find_embedding(tokens, pos) if find_embedding else None
            if found is None:
                chunk.append((token, weight, None))
                pos += 1
                continue
            slots, consumed, name = found
            if len(chunk) + slots > length:
                next_chunk()
            chunk.extend([(0, weight, name)] * slots)
            pos += consumed
    if chunk or not chunks:
        next_chunk(is_last=True)
    return chunks, count


@functools.lru_cache(maxsize=None)
def hf_tokenizer() -> CLIPTokenizer:
    """transformers 5 CLIPTokenizer over the real CLIP BPE files (tests/tiny_models.write_tokenizer)."""
    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(str(write_tokenizer(Path(tmp) / "tok")))


def comma_id() -> int:
    ids = hf_tokenizer()([","], add_special_tokens=False)["input_ids"][0]
    assert len(ids) == 1
    return ids[0]


def tokenize_line(
    text: str, backtrack: int = 20, embeddings: dict | None = None
) -> list[tuple[list[int], list[float], list[tuple[int, str]]]]:
    """Chunks (77 ids with EOS padding, 77 multipliers, [(slot, embedding name)]) as A1111's tokenize_line.

    embeddings: name → [n, D] vectors; a name is found by its own token ids inside a segment (A1111's
    find_embedding_at_position), fills n slots and never straddles chunks."""
    tok = hf_tokenizer()
    parsed = parse_attention(text)
    tokenized = tok([t for t, _ in parsed], add_special_tokens=False)["input_ids"]
    lookup = {}
    for name, vec in (embeddings or {}).items():
        lookup[tuple(tok([name], add_special_tokens=False)["input_ids"][0])] = (name, vec.shape[0])

    def find(tokens: list[int], pos: int) -> tuple[int, int, str] | None:
        for ids, (name, n) in lookup.items():
            if tuple(tokens[pos : pos + len(ids)]) == ids:
                return n, len(ids), name
        return None

    segments = [("BREAK", -1) if (s == "BREAK" and w == -1) else (ids, w) for ids, (s, w) in zip(tokenized, parsed)]
    chunks, _ = chunk_segments(segments, comma=comma_id(), backtrack=backtrack, find_embedding=find)
    out = []
    for chunk in chunks:
        pad = CHUNK - len(chunk)
        fixes = [(k, name) for k, (_, _, name) in enumerate(chunk) if name and (k == 0 or chunk[k - 1][2] != name)]
        out.append(([BOS] + [t for t, _, _ in chunk] + [EOS] * (pad + 1), [1.0] + [w for _, w, _ in chunk] + [1.0] * (pad + 1), fixes))
    return out
