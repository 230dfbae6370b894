"""Human-readable `sdclip inspect`: tokens with weights, row borders, the n/75 counter, what was dropped."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from sdclip.conventions.family import Family
from sdclip.prepare import Prepared
from sdclip.conventions.presets import Options
from sdclip.tokenizer.clip import Tokenizer
from sdclip.tokenizer.stream import BOS, EOS


def _style(weight: float) -> str:
    if weight > 1.0:
        return "bold green"
    if weight < 1.0:
        return "yellow" if weight > 0 else "red"
    return ""


def _token_label(tok: Tokenizer, token_id: int, vectors: dict[int, tuple[str, int]]) -> str:
    if token_id in vectors:
        name, k = vectors[token_id]
        return f"<{name}:{k}>"
    return tok.token_text(token_id).replace("</w>", "·")


def render_inspect(
    text: str, prepared: Prepared, tok: Tokenizer, family: Family, options: Options, cap: int, console: Console | None = None
) -> None:
    console = console or Console(highlight=False)
    console.print(
        f"[bold]sdclip inspect[/]  family={family.name} syntax={options.dialect} layout={options.layout} "
        f"normalize={options.normalize}"
    )
    console.print(Text(text, style="dim"))
    multi = len(prepared.parts) > 1
    for p, part in enumerate(prepared.parts):
        if multi:
            console.rule(f"part {p + 1} ({prepared.prompt.combine}, weight {part.weight:g})")
        rows = part.rows[0]
        for r, (ids, weights, keep) in enumerate(zip(rows.ids, rows.weights, rows.keep)):
            line = Text(f"row {r + 1} │ ", style="bold cyan")
            pad_id = family.roles[0].pad_id
            used = rows.eos[r] + 1
            for s, (tid, w) in enumerate(zip(ids[:used], weights[:used])):
                if tid in (BOS, EOS) and s in (0, rows.eos[r]):
                    line.append("[BOS] " if s == 0 else "[EOS]", style="dim")
                    continue
                label = _token_label(tok, tid, part.stream.vectors)
                if abs(w - 1.0) > 1e-9:
                    label = f"{label}({w:.3g})"
                line.append(label + " ", style=_style(w) + ("" if keep[s] else " strike"))
            pads = len(ids) - used
            if pads:
                line.append(f" +{pads}×pad({pad_id})", style="dim")
            console.print(line)
        for note in rows.notes:
            console.print(f"[dim]note:[/] {note}")
    count = prepared.token_count
    colour = "red" if prepared.dropped else "green"
    console.print(f"tokens: [{colour}]{count}/{cap}[/]")
    if prepared.dropped:
        console.print(f"[red]dropped:[/] {prepared.dropped}")
