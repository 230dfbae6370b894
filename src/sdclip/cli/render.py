"""Human-readable `sdclip inspect`: tokens as typed with their weights, row borders, counters, what was dropped."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from sdclip.conventions.family import Family
from sdclip.conventions.presets import Options
from sdclip.lanes import lane_of
from sdclip.lanes.base import tokenizers_by_name
from sdclip.describe import FULL_ROWS, ROWS_SHOWN, capacity, counter, readable_slots, stopped_line
from sdclip.prepare import Prepared


def _style(weight: float) -> str:
    if weight > 1.0:
        return "bold green"
    if weight < 1.0:
        return "yellow" if weight > 0 else "red"
    return ""


def _label(slot: dict) -> str:
    if slot["kind"] == "vector":
        return f"<{slot['name']}:{slot['vector']}>"
    return slot["t"].strip() or repr(slot["t"])


def t5_label(piece: str | None, typed: str) -> str:
    """A T5 piece as typed: its word-start `▁` dropped (pieces are drawn space-separated), a lone `▁` (a word
    start the tokenizer kept as its own piece) as a visible `·`, a byte piece (`<0x..>`) or an unknown one as
    the source characters it came from. Drawing the source span instead showed a lone `▁` as the next
    letter (`a r(1.3) red(1.3)`)."""
    if piece is None or piece.startswith("<0x"):
        return typed.strip() or "·"
    return piece.lstrip("▁") or "·"


def _pieces_line(part, e: int, tokenizer=None) -> Text:  # noqa: ANN001
    """A lane drawn as pieces (`Lane.view`, T5: SD3 / Flux / the T5-only families): a part's pieces as typed,
    weights, n/limit, and what was dropped."""
    rows, stream = part.rows[e], part.stream_for(e)
    src = stream.source
    line = Text("T5    │ ", style="bold magenta")
    for i, (a, b) in enumerate(stream.spans[: rows.eos[0]]):
        piece = tokenizer.token_text(rows.ids[0][i]) if tokenizer is not None else None
        byte_piece = piece is None or piece.startswith("<0x")
        if byte_piece and i and stream.spans[i - 1] == (a, b):
            continue  # the rest of a character shown by its first byte piece
        w = stream.weights[i]
        label = t5_label(piece, src[a:b])
        line.append(label + (f"({w:.3g})" if abs(w - 1.0) > 1e-9 else "") + " ", style=_style(w))
    line.append("</s>", style="dim")
    colour = "red" if rows.dropped else "green"
    line.append(f"  {rows.token_count}/{rows.length}", style=colour)
    if rows.dropped:
        line.append(f"  dropped: {rows.dropped[:300]}", style="red")
    return line


def real_tokens(prepared: Prepared) -> int:
    return sum(len(part.stream) for part in prepared.parts)


def render_inspect(
    text: str, prepared: Prepared, family: Family, options: Options, *, full: bool = False,
    note: str = "", console: Console | None = None, t5_tokenizer=None, tokenizers=None,  # noqa: ANN001
    count: int | None = None,
) -> None:
    """`count`: A1111's counter where the caller knows more than `prepared` (a schedule's other texts)."""
    console = console or Console(highlight=False, emoji=False)  # `<lora:x:1>` is text, not the :x: emoji
    console.print(
        f"[bold]sdclip inspect[/]  family={family.name} syntax={options.dialect} layout={options.layout} "
        f"normalize={options.normalize}"
    )
    console.print(Text(text if len(text) <= 2000 else text[:2000] + " …", style="dim"))
    if note:
        console.print(f"[dim]note:[/] {note}")
    from sdclip.cli.render_lanes import render_lanes

    if render_lanes(prepared, family, options, tokenizers or {}, console):
        return  # a lane that draws its own rows (an LLM's template + prompt)
    multi = len(prepared.parts) > 1
    shown = 0
    per_row = family.length - 2
    # a T5-only family (Chroma, Wan, PixArt-Σ, AuraFlow): its one sequence is the T5 line, counted there (n/512);
    # CLIP's rows, BOS/EOS and A1111's n/75 counter mean nothing for it
    clip_rows = lane_of(family.roles[0]).view == "rows"
    tokenizer_of = tokenizers_by_name(t5_tokenizer=t5_tokenizer, tokenizers=tokenizers)
    limit = FULL_ROWS if full else ROWS_SHOWN
    for p, part in enumerate(prepared.parts):
        if shown >= limit:
            break
        rows = part.rows[0]
        if multi:  # counted as the part's own sequence is: CLIP's rows, or a T5-only family's one T5 line (n/512)
            n, cap = (len(part.stream), len(rows) * per_row) if clip_rows else (rows.token_count, rows.length)
            console.rule(f"part {p + 1} ({prepared.prompt.combine}, weight {part.weight:g}): {n}/{cap} tokens")
        for r in range(len(rows) if clip_rows else 0):
            if shown >= limit:
                break
            shown += 1
            line = Text(f"row {r + 1} │ ", style="bold cyan")
            for slot in readable_slots(text, part, r):
                if slot["kind"] in ("bos", "eos"):
                    line.append("[BOS] " if slot["kind"] == "bos" else "[EOS]", style="dim")
                    continue
                if slot.get("cont"):  # the rest of a character or an embedding shown by its first slot
                    continue
                label = _label(slot)
                if abs(slot["w"] - 1.0) > 1e-9:
                    label = f"{label}({slot['w']:.3g})"
                line.append(label + " ", style=_style(slot["w"]) + ("" if slot["keep"] else " strike"))
            pads = len(rows.ids[r]) - rows.eos[r] - 1
            if pads:
                main = [role for role in family.roles if lane_of(role) is lane_of(family.roles[0])]  # these rows' lane
                pad_ids = "/".join(f"{role.name} {role.pad_id}" for role in main) if len(main) > 1 else str(main[0].pad_id)
                line.append(f" +{pads}×pad({pad_ids})", style="dim")
            console.print(line)
        for note_line in rows.notes:
            console.print(f"[dim]note:[/] {note_line}")
        for e, role in enumerate(family.roles):
            lane = lane_of(role)
            if lane.view == "pieces":  # one line per part (T5, read with --t5-tokenizer)
                console.print(_pieces_line(part, e, tokenizer_of.get(lane.tokenizer_name)))
    total_rows = sum(len(part.rows[0]) for part in prepared.parts)
    if prepared.stopped is not None:
        console.print(f"[dim]… {stopped_line(shown, *prepared.stopped, full)}[/]")
        console.print(f"laid out: {real_tokens(prepared)} tokens in {total_rows} row(s) before stopping")
        return
    if clip_rows:
        _summary(prepared, shown, total_rows, per_row, count, console)
    if prepared.dropped:
        shown_drop = prepared.dropped if len(prepared.dropped) <= 500 else prepared.dropped[:500] + " …"
        console.print(f"[red]dropped:[/] {shown_drop}")
    for e in prepared.prompt.extra_networks:
        console.print(f"[dim]removed extra network:[/] <{e.kind}:{e.name}{''.join(':' + a for a in e.args)}>")


def _summary(prepared: Prepared, shown: int, total_rows: int, per_row: int, count: int | None, console: Console) -> None:
    """The CLIP rows' totals: tokens n/75·rows and AUTOMATIC1111's counter where it differs."""
    if shown < total_rows:
        console.print(f"[dim]… {total_rows - shown} more row(s) not shown (--full shows every row)[/]")
    real = real_tokens(prepared)
    colour = "red" if prepared.dropped else "green"
    console.print(f"tokens: [{colour}]{real}/{total_rows * per_row}[/] in {total_rows} row(s)", end="")
    count = counter(prepared) if count is None else count
    if count != real:
        why = "the largest AND part's" if len(prepared.parts) > 1 else "BREAK and comma backtracks pad to the row end"
        if count > counter(prepared):
            why = "the largest of the schedule's texts, whichever step is shown"
        console.print(f"  (AUTOMATIC1111's counter: {count}/{capacity(count, per_row)}: {why})")
    else:
        console.print()
