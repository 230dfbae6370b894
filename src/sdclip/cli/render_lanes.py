"""`sdclip inspect` for a lane that draws its own rows (sdclip.lanes.llm_lane: one templated sequence per part):
the template's tokens greyed, the tokens the pipeline drops struck through, the prompt's pieces as typed in
the tokenizer's own spelling, then n / max_sequence_length, what was cut, and the lane's warnings."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.text import Text

from sdclip.conventions.family import Family
from sdclip.conventions.presets import Options
from sdclip.prepare import Prepared


def _piece(tokenizer: object, token_id: int) -> str:
    text = tokenizer.token_text(token_id)  # type: ignore[attr-defined]
    return text.replace("Ġ", "·").replace("▁", "·").replace("Ċ", "⏎").replace("\n", "⏎")


def render_lanes(prepared: Prepared, family: Family, options: Options, tokenizers: Mapping[str, object],
                 console: Console) -> bool:
    """Draw every role whose lane has a `summary` and whose tokenizer is given by name; True if one did."""
    from sdclip.lanes import lane_of

    drawn = False
    for e, role in enumerate(family.roles):
        lane = lane_of(role)
        tok = tokenizers.get(lane.tokenizer_name)
        if tok is None or not hasattr(lane, "warnings"):
            continue
        entries = []
        for p, part in enumerate(prepared.parts):
            entry = lane.summary(part.rows[e], options, role, tok)
            entries.append(entry)
            line = Text(f"{role.name}" + (f" part {p + 1}" if len(prepared.parts) > 1 else "") + " │ ", style="bold cyan")
            for token_id, template, kept in zip(entry["ids"], entry["template"], entry["kept"]):
                style = ("dim" if template else "") + ("" if kept else " strike")
                line.append(_piece(tok, token_id) + " ", style=style.strip() or None)
            console.print(line)
        total = lane.total(entries)
        colour = "red" if total["dropped"] else "green"
        console.print(f"tokens: [{colour}]{total['count']}/{total['limit']}[/] (max_sequence_length; "
                      "[dim]greyed: the template[/], struck: dropped by the pipeline)")
        if total["dropped"]:
            console.print(f"[red]dropped:[/] {total['dropped'][:500]}")
        said: list[str] = []
        for part in prepared.parts:
            said.extend(w for w in lane.warnings(part.rows[e]) if w not in said)
        for w in said:
            console.print(f"[yellow]warning:[/] {w}")
        drawn = True
    return drawn
