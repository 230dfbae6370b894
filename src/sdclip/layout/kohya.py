"""`chunk` style ``kohya``: kohya-ss/sd-scripts' `--max_token_length` rows, slot for slot.

From sd-scripts at commit 48d368fa557731ad0488c07304dfeba8c07910eb (2026-02-16), `library/strategy_base.py`
`TokenizeStrategy._get_input_ids` / `_get_weighted_input_ids` and the joins in `strategy_sd.py`
(`SdTextEncodingStrategy.encode_tokens`) and `strategy_sdxl.py` (`_get_hidden_states_sdxl`):

- the caption's tokens are cut to n·75 (`--max_token_length` 75 / 150 / 225 → n = 1 / 2 / 3, here
  `max_rows`; sd-scripts' default, no flag, is n = 1) and laid out in exactly n rows of 75 — always n, a short
  caption's later rows being empty rows `[BOS, EOS, pad…]`; no comma backtrack, no BREAK (a BREAK mark from
  another dialect is ignored, with a note); an embedding's vector run moves whole to the next row;
- each row is `[BOS] + 75 slots + [EOS]` padded with the encoder's pad id, as sd-scripts' rows come out of
  its flat `[BOS] + tokens + [EOS] + pad…` of n·75+2 ids;
- for encoders whose pad is not EOS (SD2; SDXL's bigG, pad 0) sd-scripts' row fix-up "a row starting
  `<BOS> <PAD>` becomes `<BOS> <EOS>`" compares ids with the pad id 0, which is also the token `!`: a row
  whose first token is id 0 gets EOS in that slot. Reproduced (it changes every later slot of that row); as
  there, only for n > 1 (with n = 1 sd-scripts does not re-chunk, so no fix-up runs).
  Its twin, "a row not ending in EOS/pad gets EOS last", leaves a full row whose 75th token is id 0 without
  an EOS; not reproduced: that slot is dropped from the sequence and attention is causal, so only SDXL's
  pooled vector could differ (sd-scripts then pools the BOS slot; sdclip pools that row's EOS);
- the rows are encoded apart and joined as sd-scripts joins them: the first row's BOS, slots 1..75 of every
  row, the last row's final slot → n·75 + 2 slots (`keep` marks them; 77 for n = 1).
"""

from __future__ import annotations

from sdclip.layout.builder import RowBuilder, dropped_text, run_lengths
from sdclip.layout.rows import Rows
from sdclip.layout.spec import LayoutSpec
from sdclip.tokenizer.stream import EOS, TokenStream


def _fill(stream: TokenStream, n: int, cap: int) -> tuple[list[list[int]], int]:
    """Token indices of each of the n rows, and the index of the first token that did not fit."""
    runs = run_lengths(stream)
    rows: list[list[int]] = []
    row: list[int] = []
    i = 0
    while i < len(stream) and len(rows) < n:
        k = runs.get(i, 1)
        if k > cap:
            raise ValueError(f"an embedding of {k} vectors cannot fit in a row of {cap} tokens")
        if len(row) + k > cap:
            rows.append(row)
            row = []
            continue
        row.extend(range(i, i + k))
        i += k
    if len(rows) < n:
        rows.append(row)
    rows += [[] for _ in range(n - len(rows))]
    return rows, i


def _keep(r: int, n: int, length: int) -> list[bool]:
    """Slots of row r that sd-scripts' join keeps: BOS of the first row, the last slot of the last row."""
    keep = [True] * length
    if r > 0:
        keep[0] = False
    if r < n - 1:
        keep[-1] = False
    return keep


def chunk_kohya(stream: TokenStream, spec: LayoutSpec) -> Rows:
    """sd-scripts' weighted-caption rows (`max_rows` = n, default 1) with its n·75+2 join (module doc)."""
    n = spec.max_rows or 1
    cap = spec.capacity
    b = RowBuilder(stream, spec)
    members, stop = _fill(stream, n, cap)
    for r, row in enumerate(members):
        b.emit(row, _keep(r, n, spec.length))
        if n > 1 and spec.pad_id != EOS and row and b.ids[r][1] == spec.pad_id:
            b.ids[r][1] = EOS  # sd-scripts' `<BOS> <PAD>` fix-up meeting a token whose id is the pad id
            b.eos[r] = 1
    dropped = list(range(stop, len(stream)))
    notes = []
    if dropped:
        notes.append(f"truncated: {len(dropped)} of {len(stream)} tokens dropped (sd-scripts keeps {n * cap})")
    if stream.breaks:
        notes.append("kohya style ignores BREAK (sd-scripts has none)")
    return b.finish(len(stream), dropped_text(stream, dropped), tuple(notes))
