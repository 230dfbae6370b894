"""What the page draws for one text: `describe`'s object plus the readable layout `sdclip inspect` shows.

`inspect_object` is `sdclip inspect --json`'s object for the same flags (the text in force at the chosen
step, the prompt as typed when nothing is scheduled, and its `schedule` entry), which /api/inspect answers
and the page's `inspect` key holds, so the page's counter can never disagree with the CLI. The
`view` key adds what the page needs and the stable object leaves out: each slot's text *as typed* (the
token's character span in the source, never a byte-level BPE symbol), BREAK boundaries, window overlaps,
embedding references, AND parts and the source text with dropped spans marked; for an LLM family (`lane`) its
template + prompt sequence, the template greyed, n / max_sequence_length. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdclip.conventions.family import Family
from sdclip.conventions.presets import Options
from sdclip.describe import capacity, describe, readable_slots
from sdclip.lanes import lane_of
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


@dataclass(frozen=True)
class ViewRequest:
    """One text and what shapes it, as `sdclip inspect`'s flags give them: the one signature of `inspect_object`
    and `build_view`. `t5_tokenizer`: SD3 / Flux / the T5-only families; `tokenizers`: later kinds' tokenizers by
    name (`llm_tokenizer`: Qwen-Image, Z-Image, Lumina 2)."""

    text: str
    options: Options
    family: Family
    tokenizer: Tokenizer
    embeddings: Mapping[str, int] | None = None
    steps: int = DEFAULT_STEPS
    step: int = 1
    t5_tokenizer: Any = None
    tokenizers: Mapping[str, Any] = field(default_factory=dict)


def inspect_object(req: ViewRequest) -> dict:
    """`sdclip inspect --json --steps N --step K`'s object, `schedule` entry included; the counter over every
    scheduled text, as the CLI's (A1111 counts the largest part of any of them, whichever step is shown)."""
    shown, sched = shown_text(req.text, req.options, req.steps, req.step)
    texts = tuple(e.text for e in sched.entries) if len(sched.entries) > 1 else ()
    out = describe(shown, req.options, req.family, req.tokenizer, req.embeddings, t5_tokenizer=req.t5_tokenizer,
                   tokenizers=req.tokenizers, scheduled=texts)
    if len(sched.entries) > 1:
        out["schedule"] = {"step": req.step, "steps": req.steps, "text": shown,
                           "entries": [{"end_step": e.end_step, "text": e.text} for e in sched.entries]}
    return out


def build_view(req: ViewRequest) -> dict:
    """{"inspect": inspect_object(req), "view": {...}} for the text in force at 1-based `step` of `steps`. A family
    whose first lane draws its own sequence (an LLM's template + prompt) has `lane` per part and in total instead
    of CLIP rows (`rows` empty)."""
    shown, sched = shown_text(req.text, req.options, req.steps, req.step)
    family = req.family
    prepared = prepare(shown, req.options, family, req.tokenizer, req.embeddings, t5_tokenizer=req.t5_tokenizer,
                       tokenizers=req.tokenizers)
    inspect = inspect_object(req)
    per_row = family.length - 2
    own = _own_sequence(family, req.tokenizers)
    # CLIP rows only for a lane drawn as rows (`Lane.view`), as `sdclip inspect` draws them: a T5-only family's one
    # sequence is its T5 line (n/512), an LLM's its template + prompt; CLIP's BOS/EOS and n/75 mean nothing there
    clip_rows = lane_of(family.roles[0]).view == "rows"
    parts = [_part_view(shown, part, family, per_row, clip_rows=clip_rows) for part in prepared.parts]
    dropped_chars = set()
    for part in prepared.parts:
        dropped_chars |= _dropped_chars(part, 0 if own is None else own)
    view = {
        "text": shown,
        "step": req.step,
        "steps": req.steps,
        "schedule": [{"end_step": e.end_step, "text": e.text} for e in sched.entries],
        "scheduled": len(sched.entries) > 1,
        "per_row": per_row,
        "combine": prepared.prompt.combine,
        "parts": parts,
        "source": _segments(shown, dropped_chars),
        "embeddings": _embedding_refs(shown, prepared.parts),
    }
    for part, entry in zip(parts, inspect["parts"]):
        if "t5" in entry:
            part["t5"] = _t5_view(entry["t5"])
        if not clip_rows:  # T5-only: the inspect part's own n / max_sequence_length (its `own_counts`), not CLIP's n/75
            part["tokens"], part["capacity"] = entry["tokens"], entry["capacity"]
    if own is not None:
        role = family.roles[own]
        total = inspect[role.name]
        tok = req.tokenizers[lane_of(role).tokenizer_name]
        for view_part, part, entry in zip(parts, prepared.parts, total["parts"]):
            view_part["lane"] = _lane_view(shown, part, own, entry, tok)
            # the part's header counts as the whole prompt's does (`view.lane`): prompt tokens / max_sequence_length
            view_part["tokens"], view_part["capacity"] = entry["count"], entry["limit"]
        view["lane"] = {"role": role.name, "count": total["count"], "limit": total["limit"],
                        "length": total["length"], "dropped": total["dropped"]}
    return {"inspect": inspect, "view": view}


def _own_sequence(family: Family, tokenizers: Mapping[str, Any]) -> int | None:
    """The role whose lane draws its own templated sequence (`Lane.view == "template"`, its entry from
    `Lane.summary` read with a tokenizer given by name, as sdclip.describe's `lane_entries`): the first role's
    where it does, else None (CLIP rows, T5 lines beside them)."""
    lane = lane_of(family.roles[0])
    return 0 if lane.view == "template" and tokenizers.get(lane.tokenizer_name) is not None else None


def _lane_view(text: str, part: PreparedPart, e: int, entry: dict, tokenizer: Any) -> dict:
    """An LLM part as the page draws it, one chip per token up to the row's end: a prompt token is shown as typed
    (its characters of the source; the later tokens of one character are `cont`), a template token by its
    decoded text (`template`: greyed); `kept` False for one the pipeline drops (Qwen-Image's first 34)."""
    rows, stream = part.rows[e], part.stream_for(e)
    chips = []
    for s, token_id in enumerate(entry["ids"]):
        i = rows.tokens[0][s]
        chip = {"id": token_id, "w": round(rows.weights[0][s], 6), "template": entry["template"][s],
                "kept": entry["kept"][s], "piece": entry["pieces"][s]}
        if i < 0:
            chip.update(t=tokenizer.decode([token_id]), cont=False)
        else:
            a, b = stream.spans[i]
            cont = i > 0 and stream.spans[i - 1] == (a, b) and a < b
            chip.update(t="" if cont else text[a:b], span=[a, b], cont=cont)
        chips.append(chip)
    return {"tokens": chips, "count": entry["count"], "limit": entry["limit"], "length": entry["length"],
            "dropped": entry["dropped"]}


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


def _part_view(text: str, part: PreparedPart, family: Family, per_row: int, *, clip_rows: bool = True) -> dict:
    rows = part.rows[0]
    breaks = set(part.stream.breaks)
    out_rows = []
    for r in range(len(rows) if clip_rows else 0):
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


def _dropped_chars(part: PreparedPart, e: int = 0) -> set[int]:
    """Character positions of the source whose tokens reached no row of role `e` (truncated or compressed away):
    each run of consecutive dropped tokens marks its whole extent, syntax and spaces between included."""
    placed = {i for row in part.rows[e].tokens for i in row if i >= 0}
    chars: set[int] = set()
    run_start = None
    spans = part.stream_for(e).spans
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
