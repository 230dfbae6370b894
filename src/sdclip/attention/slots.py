"""The slot table: for every slot of an assembled conditioning sequence, which token of the prompt it holds.

Cross-attention reads the sequence slot by slot, so a map is only meaningful with this table beside it.
It is rebuilt here from `cond.prepare(text)` (rows → kept slots → padding with the empty prompt) in one
function, `slot_table`, so an official table from the conditioner can replace it in one place.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from sdclip.prepare import Prepared
from sdclip.tokenizer.stream import BOS, EOS

KINDS = ("BOS", "EOS", "pad", "token", "embedding", "</s>")
_WORD_CHAR = re.compile(r"[\w'’-]")


@dataclass(frozen=True)
class Slot:
    """One slot of the sequence.

    - text: the prompt's characters for the token (its span), or the special token's name.
    - piece: the vocabulary entry (e.g. "fox</w>"), or `<name:k>` for a textual-inversion vector.
    - word / word_span: the whole word around the token (`word("fox")` sums its slots); "" for BOS/EOS/pad.
    - row: the row of the prompt's layout the slot came from (None for padding past the prompt's rows).
    - kind: BOS, EOS, pad, token or embedding (T5 blocks: token, `</s>`, pad).
    - encoder: the block the slot belongs to where a sequence has several (SD3: "clip" then "t5"), else "".
    """

    index: int
    text: str
    piece: str
    word: str
    word_span: tuple[int, int] | None
    row: int | None
    weight: float
    kind: str
    encoder: str = ""

    def to_json(self) -> dict:
        out = asdict(self)
        out["word_span"] = list(self.word_span) if self.word_span is not None else None
        return out


def slot_table(prepared: Prepared, tokenizer: object, length: int) -> tuple[Slot, ...]:
    """The slots of `prepared`'s positive sequence, padded to `length` as the conditioner pads it.

    Kept slots of every row in order (window overlaps dropped), parts concatenated for compel `.and()`
    (other multi-part prompts are blends or AND entries of the first part's layout: its table is used),
    then the empty prompt's slots (whole empty rows, then its last slots), marked pad.
    """
    prompt = prepared.prompt
    parts = prepared.parts if getattr(prompt, "combine", None) == "concat" else prepared.parts[:1]
    slots: list[Slot] = []
    row_base = 0
    L = 77
    for part in parts:
        rows, stream = part.rows[0], part.stream
        L = rows.length
        source = stream.source
        for r in range(len(rows)):
            for s in range(len(rows.ids[r])):
                if not rows.keep[r][s]:
                    continue
                slots.append(_slot(len(slots), rows, r, s, row_base + r, stream, source, tokenizer))
        row_base += len(rows)
    if len(slots) > length:
        raise ValueError(f"the prompt has {len(slots)} slots, more than the sequence's {length}")
    missing = length - len(slots)
    whole, rest = divmod(missing, L)
    empty = [BOS, EOS] + [_pad_id(parts)] * (L - 2)
    filler = empty * whole + (empty[L - rest :] if rest else [])
    for token_id in filler:
        text, piece = _special_text(token_id, tokenizer)
        slots.append(Slot(len(slots), text, piece, "", None, None, 1.0, "pad"))
    return tuple(slots)


def _slot(index: int, rows, r: int, s: int, row: int, stream, source: str, tokenizer) -> Slot:  # noqa: ANN001
    t = rows.tokens[r][s]
    token_id = rows.ids[r][s]
    weight = float(rows.weights[r][s])
    if t < 0:
        if s == 0 and token_id == BOS:
            kind = "BOS"
        elif s == rows.eos[r]:
            kind = "EOS"
        else:
            kind = "pad"
        text, piece = _special_text(token_id, tokenizer)
        return Slot(index, text, piece, "", None, row, weight, kind)
    a, b = stream.spans[t]
    text = source[a:b]
    vector = stream.vectors.get(stream.ids[t])
    if vector is not None:
        name, k = vector
        return Slot(index, text, f"<{name}:{k}>", text or name, (a, b), row, weight, "embedding")
    word, span = _word_around(source, a, b)
    return Slot(index, text, _piece(tokenizer, stream.ids[t]), word, span, row, weight, "token")


def _word_around(source: str, a: int, b: int) -> tuple[str, tuple[int, int]]:
    """The maximal run of word characters containing [a, b); punctuation stands for itself."""
    if not any(_WORD_CHAR.match(c) for c in source[a:b]):
        return source[a:b], (a, b)
    while a > 0 and _WORD_CHAR.match(source[a - 1]):
        a -= 1
    while b < len(source) and _WORD_CHAR.match(source[b]):
        b += 1
    return source[a:b], (a, b)


def _piece(tokenizer: object, token_id: int) -> str:
    try:
        return tokenizer.token_text(token_id)  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return str(token_id)


def _special_text(token_id: int, tokenizer: object) -> tuple[str, str]:
    piece = _piece(tokenizer, token_id)
    return piece, piece


def _pad_id(parts) -> int:  # noqa: ANN001
    """The first encoder's pad id, read back from a row's last slot (EOS for CLIP-L)."""
    rows = parts[0].rows[0] if parts else None
    if rows is not None and len(rows) and rows.tokens[0][-1] < 0 and rows.ids[0][-1] != EOS:
        return rows.ids[0][-1]
    return EOS
