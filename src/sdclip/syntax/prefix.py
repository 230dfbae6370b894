"""The first fragments of a Sequence: what a summary (`sdclip inspect`) tokenizes of a huge prompt.

Fragments are tokenized each on its own, so the tokens of a prefix of fragments are a prefix of the
sequence's tokens; a fragment cut inside is cut at a space where one is near, and only the tokens of its
last word can differ — the caller keeps only rows that end well before the cut.
"""

from __future__ import annotations

from dataclasses import replace

from sdclip.syntax.prompt import Sequence


def sequence_prefix(sequence: Sequence, chars: int) -> tuple[Sequence, bool]:
    """(the fragments holding the first ~`chars` characters of text, whether that is the whole sequence)."""
    out = []
    n = 0
    for frag in sequence.fragments:
        if n >= chars:
            return Sequence(tuple(out)), False
        room = chars - n
        if frag.kind == "text" and len(frag.text) > room:
            space = frag.text.rfind(" ", room // 2, room)
            cut = space if space > 0 else room
            out.append(replace(frag, text=frag.text[:cut]))
            return Sequence(tuple(out)), False
        out.append(frag)
        n += max(1, len(frag.text))
    return sequence, True
