"""T5's layout registry: one sequence per part, as long as the options say. Torch-free.

- "max" (diffusers): exactly max_sequence_length positions (SD3 256, Flux 512 by default), truncated to it
  keeping `</s>` (as transformers truncates); diffusers refuses more than 512.
- "min" (ComfyUI): at least the family's minimum (77 SD3 / 256 Flux, or max_sequence_length), never
  truncated: T5's relative positions have no limit.
- "clip" (AUTOMATIC1111's SD3): as long as the part's CLIP block (77·k), cut there with no `</s>` kept.

Rows of one request share one length (`pad_t5_rows`): ComfyUI-style rows grow with their prompt.
"""

from __future__ import annotations

from dataclasses import replace

from sdclip.conventions.family import DIFFUSERS_T5_MAX, EncoderRole
from sdclip.conventions.presets import Options
from sdclip.layout.rows import Rows
from sdclip.tokenizer.stream import TokenStream

#: T5 length mode → how a part's sequence length is chosen (sdclip.lanes.t5_lane applies them)
T5_LENGTHS: tuple[str, ...] = ("max", "min", "clip")


def t5_row_length(options: Options, role: EncoderRole, count: int) -> tuple[int, int | None]:
    """(positions of the T5 row, truncation limit or None) for a prompt of `count` T5 tokens (with `</s>`).

    "max" (diffusers): exactly max_sequence_length, truncated to it; diffusers refuses more than 512.
    "min" (ComfyUI): at least the minimum (77 SD3 / 256 Flux, or max_sequence_length), never truncated."""
    n = options.max_sequence_length
    if options.t5_length != "min":
        n = n or role.length or DIFFUSERS_T5_MAX
        if n > DIFFUSERS_T5_MAX:
            raise ValueError(
                f"max_sequence_length {n}: diffusers' SD3 / Flux pipelines accept at most {DIFFUSERS_T5_MAX} T5 "
                "positions; for longer T5 sequences use t5_length='min' (T5's relative positions have no limit)"
            )
        return n, n
    return max(n or role.min_length or 1, count), None


def t5_rows(stream: TokenStream, eos_id: int, length: int, pad_id: int, limit: int | None) -> Rows:
    """One T5 row: content (at most `limit` − 1 tokens, as transformers truncates) + `</s>` + pad to
    `length`; `tokens` index the stream (-1 = `</s>`/pad)."""
    n = len(stream) if limit is None else min(len(stream), limit - 1)
    dropped = stream.source[stream.spans[n][0]:] if n < len(stream) and stream.source else ""
    notes: tuple[str, ...] = ()
    if n < len(stream):
        notes = (f"T5: {len(stream) - n} token(s) past max_sequence_length {limit} dropped: {dropped!r}",)
    if length < n + 1:
        raise ValueError(f"{n + 1} tokens do not fit in {length} positions")
    return Rows(
        ids=[[*stream.ids[:n], eos_id] + [pad_id] * (length - n - 1)],
        weights=[[*stream.weights[:n]] + [1.0] * (length - n)],
        tokens=[list(range(n)) + [-1] * (length - n)],
        keep=[[True] * length],
        eos=[n],
        length=length,
        token_count=n + 1,
        dropped=dropped,
        notes=notes,
    )


def t5_rows_cut(stream: TokenStream, eos_id: int, length: int, pad_id: int) -> Rows:
    """AUTOMATIC1111's SD3 T5 row: content + `</s>`, padded to `length` or cut at it (no `</s>` kept)."""
    count = len(stream) + 1
    full = t5_rows(stream, eos_id, max(length, count), pad_id, None)
    if count <= length:
        return full
    kept = stream.spans[length][0] if length < len(stream) else len(stream.source)
    dropped = stream.source[kept:] if stream.source else ""
    note = f"T5: cut at the CLIP block's {length} positions (no </s> kept), dropped: {dropped!r}"
    return replace(full, ids=[full.ids[0][:length]], weights=[full.weights[0][:length]], tokens=[full.tokens[0][:length]],
                   keep=[full.keep[0][:length]], eos=[min(full.eos[0], length - 1)], length=length,
                   token_count=length, dropped=dropped, notes=(note,))


def pad_t5_rows(rows: Rows, length: int, pad_id: int) -> Rows:
    """A T5 row extended with pad tokens to `length` (ComfyUI-style rows of one request share a length)."""
    extra = length - rows.length
    if extra <= 0:
        return rows
    return replace(
        rows,
        ids=[r + [pad_id] * extra for r in rows.ids],
        weights=[w + [1.0] * extra for w in rows.weights],
        tokens=[t + [-1] * extra for t in rows.tokens],
        keep=[k + [True] * extra for k in rows.keep],
        length=length,
    )
