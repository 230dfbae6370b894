"""The syntax stage: prompt text in one of four dialects → Prompt (no torch, no model).

- "a1111": AUTOMATIC1111 — `(x)`, `[x]`, `(x:w)`, BREAK, AND, scheduling via schedule();
- "comfy": ComfyUI — absolute `(x:w)`, literal `[x]`, `embedding:name`;
- "compel": compel — `word+`, `(a b)1.3`, `.attend()`, `.blend()`, `.and()`;
- "plain": the text as is, weight 1.

Every parser raises only PromptSyntaxError (with position and caret line) for bad input.
"""

from __future__ import annotations

import gc
from collections.abc import Collection

from sdclip.syntax.prompt import Prompt, PromptSyntaxError, Schedule, Scheduled
from sdclip.syntax import a1111, comfy, compel, plain

DIALECTS = ("a1111", "comfy", "compel", "plain")

_PARSERS = {"a1111": a1111.parse, "comfy": comfy.parse, "compel": compel.parse, "plain": plain.parse}


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise PromptSyntaxError(f"a prompt must be a str, got {type(text).__name__}")
    return text


def parse(text: str, dialect: str = "a1111", embeddings: Collection[str] = ()) -> Prompt:
    """Parse `text` in `dialect`; names in `embeddings` become textual-inversion references.

    a1111: a prompt that still contains scheduling (`[a:b:when]`, `[a|b]`) is read as at its first
    step; use schedule() for the per-step texts and parse each (see sdclip.syntax.a1111).
    """
    if dialect not in _PARSERS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
    if isinstance(embeddings, str):
        raise TypeError("embeddings must be a collection of names, not one str")
    text = _check_text(text)
    paused = gc.isenabled() and len(text) > 10_000
    if paused:  # parsing allocates many small acyclic objects: cyclic GC passes only cost time
        gc.disable()
    try:
        return _PARSERS[dialect](text, embeddings)
    finally:
        if paused:
            gc.enable()


def schedule(text: str, steps: int, dialect: str = "a1111", *, old_scheduling: bool = False) -> Schedule:
    """The text in force at each step, as AUTOMATIC1111's get_learned_conditioning_prompt_schedules.

    Only a1111 schedules; other dialects give one entry (the text, to the last step).
    `old_scheduling` selects A1111's pre-1.6 rule (`when` < 1 is a fraction of the steps).
    """
    if dialect not in _PARSERS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
    text = _check_text(text)
    if dialect == "a1111":
        return a1111.schedule(text, steps, old_scheduling)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return Schedule(steps, (Scheduled(steps, text),))


__all__ = ["DIALECTS", "parse", "schedule", "PromptSyntaxError"]
