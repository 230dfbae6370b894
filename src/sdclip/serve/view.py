"""What the page draws for one text: `describe`'s object plus the readable layout `sdclip inspect` shows.

`inspect_object` is `sdclip inspect --json`'s object for the same flags (the text in force at the chosen
step, the prompt as typed when nothing is scheduled, and its `schedule` entry), which /api/inspect answers
and the page's `inspect` key holds, so the page's counter can never disagree with the CLI. The
`view` key adds what the page needs and the stable object leaves out: each slot's text *as typed* (the
token's character span in the source, never a byte-level BPE symbol), BREAK boundaries, window overlaps,
embedding references, AND parts and the source text with dropped spans marked. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping

from sdclip.conventions.family import Family
from sdclip.conventions.presets import Options
from sdclip.describe import capacity, describe, readable_slots
from sdclip.prepare import PreparedPart, prepare
from sdclip.syntax import schedule
from sdclip.syntax.prompt import Schedule
from sdclip.tokenizer import Tokenizer

#: steps the page's slider spans when a request does not say (A1111's default sampler steps)
DEFAULT_STEPS = 20
MAX_STEPS = 1000


def shown_text(text: str, options: Options, steps: int, step: int) -> tuple[str, Schedule]:
    """The text `sdclip inspect --steps N --step K` shows: the schedule's text at the step when the prompt is
    scheduled, else the prompt as typed (a schedule's texts have extra-network tags already removed)."""
    if not 1 <= step <= steps <= MAX_STEPS:
        raise ValueError(f"step must be within 1..steps and steps within 1..{MAX_STEPS}; got step {step} of {steps}")
    sched = schedule(text, steps, options.dialect)
    return (sched.at(step) if len(sched.entries) > 1 else text), sched


def inspect_object(
    text: str,
    options: Options,
    family: Family,
    tokenizer: Tokenizer,
    embeddings: Mapping[str, int] | None = None,
    *,
    steps: int = DEFAULT_STEPS,
    step: int = 1,
    t5_tokenizer=None,  # noqa: ANN001 (sdclip.tokenizer.t5.T5Tokenizer: SD3 / Flux)
) -> dict:
    """`sdclip inspect --json --steps N --step K`'s object, `schedule` entry included."""
    shown, sched = shown_text(text, options, steps, step)
    out = describe(shown, options, family, tokenizer, embeddings, t5_tokenizer=t5_tokenizer)
    if len(sched.entries) > 1:
        out["schedule"] = {"step": step, "steps": steps, "text": shown,
                           "entries": [{"end_step": e.end_step, "text": e.text} for e in sched.entries]}
    return out


def build_view(
    text: str,
    options: Options,
    family: Family,
    tokenizer: Tokenizer,
    embeddings: Mapping[str, int] | None = None,
    *,
    steps: int = DEFAULT_STEPS,
    step: int = 1,
    t5_tokenizer=None,  # noqa: ANN001 (sdclip.tokenizer.t5.T5Tokenizer: SD3 / Flux)
) -> dict:
    """{"inspect": inspect_object(...), "view": {...}} for the text in force at 1-based `step` of `steps`."""
    shown, sched = shown_text(text, options, steps, step)
    prepared = prepare(shown, options, family, tokenizer, embeddings, t5_tokenizer=t5_tokenizer)
    per_row = family.length - 2
    parts = [_part_view(shown, part, family, per_row) for part in prepared.parts]
    dropped_chars = set()
    for part in prepared.parts:
        dropped_chars |= _dropped_chars(part)
    view = {
        "text": shown,
        "step": step,
        "steps": steps,
        "schedule": [{"end_step": e.end_step, "text": e.text} for e in sched.entries],
        "scheduled": len(sched.entries) > 1,
        "per_row": per_row,
        "combine": prepared.prompt.combine,
        "parts": parts,
        "source": _segments(shown, dropped_chars),
        "embeddings": _embedding_refs(shown, prepared.parts),
    }
    inspect = inspect_object(text, options, family, tokenizer, embeddings, steps=steps, step=step,
                             t5_tokenizer=t5_tokenizer)
    for part, entry in zip(parts, inspect["parts"]):
        if "t5" in entry:
            part["t5"] = _t5_view(entry["t5"])
    return {"inspect": inspect, "view": view}


def _t5_view(t5: dict) -> dict:
    """SD3 / Flux: a part's T5 sequence as the page draws it, one chip per SentencePiece piece up to `</s>`.
    `t` is the piece without its word-start mark `▁` (`word` says it had one); a lone `▁` (the tokenizer's
    own piece before a character it has no word-initial piece for) is shown as itself, so it is never drawn
    as the next piece's letter."""
    pieces = []
    for i, piece in enumerate(t5["pieces"]):
        word = piece.startswith("▁") and len(piece) > 1
        pieces.append({"piece": piece, "t": piece[1:] if word else piece, "word": word,
                       "id": t5["ids"][i], "w": t5["weights"][i], "special": piece == "</s>"})
    limit = t5["limit"]
    return {"pieces": pieces, "count": t5["count"], "length": t5["length"], "limit": limit,
            "capacity": limit if limit is not None else t5["length"], "dropped": t5["dropped"]}


def _part_view(text: str, part: PreparedPart, family: Family, per_row: int) -> dict:
    rows = part.rows[0]
    breaks = set(part.stream.breaks)
    out_rows = []
    for r in range(len(rows)):
        first_token = next((i for i in rows.tokens[r] if i >= 0), None)
        slots = readable_slots(text, part, r)
        out_rows.append(
            {
                "slots": slots,
                "count": sum(1 for s in slots if s["kind"] in ("token", "vector")),
                "pad": len(rows.ids[r]) - rows.eos[r] - 1,
                "pad_id": family.roles[0].pad_id,
                "break_before": r > 0 and first_token is not None and first_token in breaks,
                "overlap": sum(1 for i, k in zip(rows.tokens[r], rows.keep[r]) if i >= 0 and not k),
            }
        )
    return {
        "weight": part.weight,
        "tokens": rows.token_count,
        "capacity": capacity(rows.token_count, per_row),
        "dropped": rows.dropped,
        "notes": list(rows.notes),
        "rows": out_rows,
    }


def _dropped_chars(part: PreparedPart) -> set[int]:
    """Character positions of the source whose tokens reached no row (truncated or compressed away):
    each run of consecutive dropped tokens marks its whole extent, syntax and spaces between included."""
    placed = {i for row in part.rows[0].tokens for i in row if i >= 0}
    chars: set[int] = set()
    run_start = None
    spans = part.stream.spans
    for i in range(len(spans) + 1):
        dropped = i < len(spans) and i not in placed
        if dropped and run_start is None:
            run_start = i
        elif not dropped and run_start is not None:
            chars.update(range(spans[run_start][0], spans[i - 1][1]))
            run_start = None
    return chars


def _segments(text: str, dropped: set[int]) -> list[dict]:
    """The source as runs of kept / dropped characters, for marking truncated text in place."""
    out: list[dict] = []
    for k, c in enumerate(text):
        flag = k in dropped
        if out and out[-1]["dropped"] == flag:
            out[-1]["t"] += c
        else:
            out.append({"t": c, "dropped": flag})
    return out


def _embedding_refs(text: str, parts: tuple[PreparedPart, ...]) -> list[dict]:
    refs = []
    for p, part in enumerate(parts):
        s = part.stream
        for start, length in s.runs:
            name, _ = s.vectors[s.ids[start]]
            a, b = s.spans[start]
            refs.append({"part": p, "name": name, "vectors": length, "span": [a, b], "text": text[a:b]})
    return refs
