"""Slot tables of MM-DiT conditioning: every text slot labelled from the tokenizer of the encoder that made it.

- SD3 / SD3.5 (sdclip conditioning): the CLIP-L ‖ G block (77·k slots, labelled by CLIP's BPE through
  `slot_table`), then the T5 block (SentencePiece pieces, `</s>`, pad).
- Flux (sdclip conditioning): the T5 block alone (CLIP-L gives only the pooled vector).
- Chroma, or any pipeline run on its own prompt encoding: the pipeline's T5 tokenizer (transformers, with
  offsets), padded to max_length as the pipeline pads.

Words are the runs of word characters around a token's characters in the prompt, so `word("fox")` sums the
CLIP slot and the T5 pieces of "fox" (use `encoder=` on AttentionMaps to keep one block).
"""

from __future__ import annotations

from dataclasses import replace

from sdclip.attention.slots import Slot, _piece, _word_around, slot_table
from sdclip.conventions.special_tokens import T5_EOS
from sdclip.lanes import lane_of


def conditioning_slots(cond: object, prompt: str, negative: str | None, total: int) -> tuple[Slot, ...]:
    """The slots of sdclip's SD3 / Flux conditioning of `prompt` (with `negative`, which sets the block
    lengths), `total` slots in all: one table per token block of the family, in the sequence's order."""
    family = cond.family  # type: ignore[attr-defined]
    prepared = cond.prepare(prompt)  # type: ignore[attr-defined]
    other = cond.prepare(negative or "")  # type: ignore[attr-defined]
    sizes = [max(a, b) for a, b in zip(prepared.block_slots(), other.block_slots())]
    sizes[0] += total - sum(sizes)  # the first block takes any extra slots (the conditioner's rule)
    out: list[Slot] = []
    for block, size in zip(family.sequence_blocks, sizes):
        e = block[0]
        name = lane_of(family.roles[e]).kind  # the block's lane: its tokenizer labels the slots
        if lane_of(family.roles[e]).view == "pieces":  # a T5 lane: labelled by its SentencePiece pieces
            table = t5_block_slots(prepared, e, cond.t5_tokenizer, size)  # type: ignore[attr-defined]
        else:
            table = list(slot_table(prepared, cond.tokenizer, size))  # type: ignore[attr-defined]
        base = len(out)
        out.extend([replace(s, index=base + i, encoder=name) for i, s in enumerate(table)])
    if len(out) != total:
        raise ValueError(f"the conditioning has {total} slots but its prompt's table {len(out)}")
    return tuple(out)


def t5_block_slots(prepared: object, e: int, tokenizer: object, length: int) -> list[Slot]:
    """The T5 block of encoder `e`, from today's prepared rows (one place to adapt when rows change):
    each part's kept slots (compel `.and()` parts side by side, else the first part's), then pad."""
    parts = prepared.parts if prepared.prompt.combine == "concat" else prepared.parts[:1]  # type: ignore[attr-defined]
    out: list[Slot] = []
    for part in parts:
        rows, stream = part.rows[e], part.stream_for(e)
        for r in range(len(rows)):
            for s in range(len(rows.ids[r])):
                if not rows.keep[r][s]:
                    continue
                t, token_id = rows.tokens[r][s], rows.ids[r][s]
                weight = float(rows.weights[r][s])
                piece = _piece(tokenizer, token_id)
                if t < 0:
                    kind = "</s>" if token_id == T5_EOS else "pad"
                    out.append(Slot(len(out), piece, piece, "", None, r, weight, kind))
                    continue
                a, b = stream.spans[t]
                word, span = _word_around(stream.source, a, b)
                out.append(Slot(len(out), _text(stream.source, a, b, piece), piece, word, span, r, weight, "token"))
    if len(out) > length:
        raise ValueError(f"the prompt has {len(out)} T5 slots, more than the block's {length}")
    pad = _piece(tokenizer, 0)
    base = len(out)
    out.extend([Slot(base + i, pad, pad, "", None, None, 1.0, "pad") for i in range(length - base)])
    return out


def tokenizer_slots(tokenizer: object, text: str, length: int, encoder: str = "t5") -> tuple[Slot, ...]:
    """A transformers T5 tokenizer's slots for `text` padded to `length` (the pipelines' own encoding:
    padding="max_length", truncation), labelled by its offsets."""
    enc = tokenizer(text, padding="max_length", max_length=length, truncation=True,  # type: ignore[operator]
                    return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    eos, pad = getattr(tokenizer, "eos_token_id", T5_EOS), getattr(tokenizer, "pad_token_id", 0)
    pieces = tokenizer.convert_ids_to_tokens(ids)  # type: ignore[attr-defined]
    out = []
    for i, (token_id, (a, b), piece) in enumerate(zip(ids, offsets, pieces)):
        if token_id in (eos, pad):
            kind = "</s>" if token_id == eos else "pad"
            out.append(Slot(i, piece, piece, "", None, None, 1.0, kind, encoder))
            continue
        word, span = _word_around(text, a, b) if b > a else ("", None)
        out.append(Slot(i, _text(text, a, b, piece), piece, word, span, 0, 1.0, "token", encoder))
    return tuple(out)


def clip_tokenizer_slots(tokenizer: object, text: str, length: int = 77) -> tuple[Slot, ...]:
    """SD3's CLIP block as its pipeline encodes a plain prompt (one row of `length`, truncated): ids and
    pieces from the pipeline's tokenizer; characters from sdclip's own CLIP BPE, which splits a plain
    prompt the same way (where it does not, the slots keep their pieces and no characters)."""
    from sdclip.tokenizer import Tokenizer

    enc = tokenizer(text, padding="max_length", max_length=length, truncation=True)  # type: ignore[operator]
    ids = list(enc["input_ids"])
    pieces = tokenizer.convert_ids_to_tokens(ids)  # type: ignore[attr-defined]
    eos = getattr(tokenizer, "eos_token_id", None)
    end = ids.index(eos, 1) if eos in ids[1:] else len(ids) - 1
    own, spans = Tokenizer.default().encode_with_spans(text)
    match = own[: end - 1] == ids[1:end]
    out = []
    for i, (token_id, piece) in enumerate(zip(ids, pieces)):
        if i == 0 or i >= end:
            kind = "BOS" if i == 0 else "EOS" if i == end else "pad"
            out.append(Slot(i, piece, piece, "", None, 0, 1.0, kind, "clip"))
        elif match:
            a, b = spans[i - 1]
            word, span = _word_around(text, a, b)
            out.append(Slot(i, text[a:b], piece, word, span, 0, 1.0, "token", "clip"))
        else:
            out.append(Slot(i, piece, piece, "", None, 0, 1.0, "token", "clip"))
    return tuple(out)


def _text(source: str, a: int, b: int, piece: str) -> str:
    """The token's characters; SentencePiece's lone word-start piece "▁" (its offsets name the next letter,
    which the following piece holds too) shows as itself. It stays in the word, as it starts it."""
    return piece if piece == "▁" else source[a:b]
