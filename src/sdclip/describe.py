"""The JSON view of `prepare`: what `sdclip inspect --json` prints and the web API's /api/inspect answers,
and each slot's readable text, which the terminal view, the page and the attention maps all show.

One place, so the command line, the page and the pictures can never disagree. Torch-free.

Fields of the inspect object (stable: later versions only add):
- ``rows``: every row of every part (first encoder), one entry per slot incl. BOS/EOS/pad: ``ids``, ``weights``;
  past ``ROWS_SHOWN`` rows the rest are left out (``rows_omitted`` says how many) unless ``full``.
- ``tokens``: the prompt's real tokens (all parts; BREAK padding and BOS/EOS/pad not counted);
  ``capacity``: token slots of the rows built (rows × 75, or × 246 for Long-CLIP), so a truncated prompt
  shows e.g. 5000/75 with its ``dropped`` text.
- ``counter``: AUTOMATIC1111's own counter, ``{"count", "capacity"}``: the count of the **largest** AND part
  (its UI takes the max over the parts, `modules/ui.py update_token_counter`; a BREAK or a comma backtrack
  pads a part's count to the row end; capacity 75·ceil(count/75)).
  A family whose first encoder is not drawn as CLIP rows (`Lane.view`: T5-only Chroma / Wan / PixArt-Σ /
  AuraFlow, the LLM families) counts its own sequence instead: ``capacity`` is the sum of its parts'
  limits (max_sequence_length, or the positions encoded where nothing truncates), ``counter`` the largest
  part's count (the n of the T5 line's n/512, ``</s>`` included) over that limit.
- ``parts``: per AND/blend part: ``weight``, ``tokens``, ``capacity``, ``rows``, ``rows_by_encoder``, ``notes``.
- ``stopped`` (only for a prompt past what is shown: ``ROWS_SHOWN`` rows, or ``FULL_ROWS`` with ``full``):
  ``{"after_rows", "parts_omitted", "part_cut", "reason"}``; the rows listed are exact, and ``tokens``,
  ``capacity``, ``counter`` and ``parts`` count only what was laid out (lower bounds): a 10 MB prompt is
  summarised in a second instead of being laid out whole (minutes, gigabytes).
- ``warnings``: what `sdclip encode` would refuse or drop (more rows than its row_limit; extra-network tags).
- ``t5`` (the families with a T5 encoder: `Lane.entry` names the field), per part and at the top: the T5 sequence: ``ids`` (content + ``</s>`` + pad),
  ``weights``, ``pieces`` (the tokens' text up to ``</s>``), ``count`` (tokens the encoder sees, ``</s>``
  included: the n of n/256), ``length`` (positions encoded), ``limit`` (max_sequence_length, or None where
  T5 is never truncated: the comfy preset), ``dropped`` (the source text cut).
"""

from __future__ import annotations

from collections.abc import Mapping

from sdclip.conventions.family import Family
from sdclip.conventions.presets import Options
from sdclip.lanes.base import tokenizers_by_name
from sdclip.layout.rows import Rows
from sdclip.prepare import Prepared, PreparedPart, prepare
from sdclip.tokenizer import Tokenizer
from sdclip.tokenizer.stream import BOS, EOS

#: rows an inspect object lists before summarising the rest (a 1 MB prompt of BREAKs is 100,000s of rows)
ROWS_SHOWN = 64
#: the row limit `sdclip encode` and the Conditioner apply by default
ENCODE_ROW_LIMIT = 64
#: rows `full` lists at most: past them a prompt is summarised as without it (memory stays bounded)
FULL_ROWS = 4096


def capacity(tokens: int, per_row: int) -> int:
    """AUTOMATIC1111's counter denominator: n/75, n/150, …"""
    return per_row * max(1, -(-max(tokens, 1) // per_row))


def counter(prepared: Prepared) -> int:
    """AUTOMATIC1111's token counter: the largest part's count, not the sum (its `update_token_counter`
    takes the max of `get_prompt_lengths` over the AND parts)."""
    return max((part.rows[0].token_count for part in prepared.parts), default=0)


def schedule_counter(prepared: Prepared, scheduled: tuple[str, ...], options: Options, family: Family,
                     tokenizer: Tokenizer, embeddings: Mapping[str, int] | None, **tokenizers: object) -> int:
    """A1111's counter over a schedule: the largest part of any scheduled text (`update_token_counter` flattens
    `get_learned_conditioning_prompt_schedules` over the parts and takes the max), else of the prompt shown.
    `tokenizers`: prepare's keyword tokenizers (t5_tokenizer, tokenizers)."""
    best = counter(prepared)
    for text in dict.fromkeys(scheduled):
        other = prepare(text, options, family, tokenizer, embeddings, stop_after=ROWS_SHOWN, **tokenizers)
        best = max(best, counter(other))
    return best


def stopped_line(shown: int, parts_omitted: int, cut: bool, full: bool) -> str:
    """One line for a summary that stopped: what is shown, what was left out, and how to see more."""
    rest = []
    if cut:
        rest.append("the rest of its part")
    if parts_omitted:
        rest.append(f"{parts_omitted} more AND part(s)")
    more = "" if full else "; --full lists up to " + f"{FULL_ROWS} rows"
    return (f"the prompt goes on past the {shown} row(s) shown: {' and '.join(rest)} not laid out "
            f"(sdclip encode refuses more than {ENCODE_ROW_LIMIT} rows){more}")


def _rows_json(rows: Rows, limit: int | None) -> list[dict]:
    n = len(rows) if limit is None else min(limit, len(rows))
    return [{"ids": rows.ids[r], "weights": [round(w, 6) for w in rows.weights[r]]} for r in range(n)]


def readable_slots(text: str, part: PreparedPart, row: int) -> list[dict]:
    """Row `row`'s slots up to its EOS as the user typed them: ``t`` is the token's own characters of the
    source (never a byte-level BPE symbol: `café`, `森林`, emoji stay whole; a character split into several
    byte tokens shows on its first, the others are ``cont``), ``kind`` bos/eos/pad/token/vector, ``w`` the
    weight, ``keep`` False for a window overlap slot that the merged sequence does not keep."""
    rows, stream = part.rows[0], part.stream
    slots = []
    for s in range(rows.eos[row] + 1):
        i, tid = rows.tokens[row][s], rows.ids[row][s]
        slot: dict = {"id": tid, "w": round(rows.weights[row][s], 6), "keep": rows.keep[row][s]}
        if i < 0:
            slot.update(kind="bos" if s == 0 and tid == BOS else "eos" if tid == EOS else "pad", t="")
        elif tid in stream.vectors:
            name, k = stream.vectors[tid]
            slot.update(kind="vector", t=name if k == 0 else "", name=name, vector=k, cont=k > 0, span=list(stream.spans[i]))
        else:
            a, b = stream.spans[i]
            cont = i > 0 and stream.spans[i - 1] == (a, b) and a < b
            slot.update(kind="token", t="" if cont else text[a:b], span=[a, b], cont=cont)
        slots.append(slot)
    return slots


def lane_warnings(prepared: Prepared, family: Family) -> list[str]:
    """What a lane says must not pass silently (an LLM lane: weights that do nothing), each line once."""
    from sdclip.lanes import lane_of

    out: list[str] = []
    for e, role in enumerate(family.roles):
        says = getattr(lane_of(role), "warnings", None)
        for part in prepared.parts if says is not None else ():
            out.extend(w for w in says(part.rows[e]) if w not in out)
    return out


def _limit(entry: dict) -> int:
    """A lane summary's n/limit denominator: max_sequence_length, or the positions encoded where nothing cuts."""
    return entry["limit"] if entry.get("limit") is not None else entry["length"]


def own_counts(prepared: Prepared, family: Family, options: Options, given: Mapping[str, object],
               count: int) -> tuple[list[int], dict] | None:
    """Per-part capacity and the counter of a family whose first encoder's lane is not drawn as CLIP rows
    (`Lane.view`): its summaries' limits, and `count` (the largest part's) over the limit. None for CLIP rows."""
    from sdclip.lanes import lane_of

    role = family.roles[0]
    lane = lane_of(role)
    tok = given.get(lane.tokenizer_name)
    if lane.view == "rows" or tok is None or not prepared.parts:
        return None
    entries = [lane.summary(part.rows[0], options, role, tok) for part in prepared.parts]
    if any(e is None for e in entries):
        return None
    limits = [_limit(e) for e in entries]  # type: ignore[arg-type]
    return limits, {"count": count, "capacity": max(limits)}


def lane_entries(prepared: Prepared, family: Family, options: Options, tokenizers: Mapping[str, object]) -> dict:
    """Each lane's own entry by role name (an LLM lane: its template, greyed, and n / max_sequence_length), from
    `Lane.summary` / `Lane.total`, for the lanes whose tokenizer is given by name in `tokenizers`."""
    from sdclip.lanes import lane_of

    out: dict = {}
    for e, role in enumerate(family.roles):
        lane = lane_of(role)
        tok = tokenizers.get(lane.tokenizer_name)
        if tok is None:  # the later kinds' tokenizers come by name (`llm_tokenizer`); T5's entry is its own
            continue
        entries = [x for part in prepared.parts if (x := lane.summary(part.rows[e], options, role, tok)) is not None]
        if entries:
            out[role.name] = {"parts": entries, **lane.total(entries)}
    return out


def describe(
    text: str,
    options: Options,
    family: Family,
    tokenizer: Tokenizer,
    embeddings: Mapping[str, int] | None = None,
    *,
    full: bool = False,
    t5_tokenizer=None,  # noqa: ANN001 (sdclip.tokenizer.t5.T5Tokenizer: needed by SD3 / Flux)
    tokenizers: Mapping[str, object] | None = None,
    scheduled: tuple[str, ...] = (),
) -> dict:
    """The stable inspect object (fields above) for one prompt. `scheduled`: every text of its schedule
    (A1111's counter is the largest part of any of them, whichever step is shown)."""
    limit = FULL_ROWS if full else ROWS_SHOWN
    given = tokenizers_by_name(tokenizer, t5_tokenizer, tokenizers)
    prepared = prepare(text, options, family, tokenizer, embeddings, t5_tokenizer=t5_tokenizer, tokenizers=tokenizers,
                       stop_after=limit)
    per_row = family.length - 2
    rows: list[dict] = []
    listed: list[int] = []  # rows listed per part: `limit` over all parts together
    for part in prepared.parts:
        listed.append(max(0, min(len(part.rows[0]), limit - len(rows))))
        rows.extend(_rows_json(part.rows[0], listed[-1]))
    total_rows = sum(len(part.rows[0]) for part in prepared.parts)
    real = sum(len(part.stream) for part in prepared.parts)
    count = schedule_counter(prepared, scheduled, options, family, tokenizer, embeddings,
                             t5_tokenizer=t5_tokenizer, tokenizers=tokenizers)
    warnings = []
    if total_rows > ENCODE_ROW_LIMIT:
        warnings.append(
            f"{total_rows} rows: sdclip encode refuses more than {ENCODE_ROW_LIMIT} (--row-limit); "
            "use --layout truncate or compress"
        )
    warnings.extend(prepared.prompt.warnings)
    warnings.extend(lane_warnings(prepared, family))
    extra = prepared.prompt.extra_networks
    if extra:
        warnings.append(f"{len(extra)} extra-network tag(s) removed from the conditioning (LoRA etc. are not text)")
    out = {
        "rows": rows,
        "tokens": real,
        "capacity": total_rows * per_row,
        "counter": {"count": count, "capacity": capacity(count, per_row)},
        "dropped": prepared.dropped,
        "family": family.name,
        "syntax": options.dialect,
        "layout": options.layout,
        "normalize": options.normalize,
        "combine": prepared.prompt.combine,
        "parts": [
            {
                "weight": part.weight,
                "tokens": len(part.stream),
                "capacity": len(part.rows[0]) * per_row,
                "rows": len(part.rows[0]),
                "rows_by_encoder": {
                    role.name: _rows_json(r, shown) for role, r in zip(family.roles, part.rows)
                },
                "notes": list(part.rows[0].notes),
            }
            for part, shown in zip(prepared.parts, listed)
        ],
        "warnings": warnings,
        "extra_networks": [{"kind": e.kind, "name": e.name, "args": list(e.args), "span": [e.start, e.end]} for e in extra],
    }
    own = own_counts(prepared, family, options, given, count)
    if own is not None:  # T5-only / LLM families: n/512, not CLIP's n/75
        limits, out["counter"] = own
        out["capacity"] = sum(limits)
        for entry, cap in zip(out["parts"], limits):
            entry["capacity"] = cap
    out.update(lane_entries(prepared, family, options, tokenizers or {}))
    if prepared.stopped is not None:
        omitted, cut = prepared.stopped
        out["stopped"] = {"after_rows": len(rows), "parts_omitted": omitted, "part_cut": cut,
                          "reason": stopped_line(len(rows), omitted, cut, full)}
    elif total_rows > len(rows):
        out["rows_omitted"] = total_rows - len(rows)
    out.update(field_entries(prepared, family, options, out["parts"], given))
    return out


def field_entries(prepared: Prepared, family: Family, options: Options, parts: list[dict],
                  given: Mapping[str, object]) -> dict:
    """The entry of each lane that names an inspect field (`Lane.entry`: T5's `t5`), per part and in total,
    from its `Lane.summary` / `Lane.total` with the tokenizer its `tokenizer_name` names; {} for none."""
    from sdclip.lanes import lane_of

    out: dict = {}
    for e, role in enumerate(family.roles):
        lane = lane_of(role)
        if lane.entry is None or lane.entry in out:
            continue
        per_part = [lane.summary(part.rows[e], options, role, given.get(lane.tokenizer_name)) for part in prepared.parts]
        for entry, item in zip(parts, per_part):
            entry[lane.entry] = item
        if per_part:
            out[lane.entry] = lane.total(per_part)
    return out
