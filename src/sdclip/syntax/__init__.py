"""The syntax stage: prompt text in one of five dialects → Prompt (no torch, no model).

- "a1111": AUTOMATIC1111 — `(x)`, `[x]`, `(x:w)`, BREAK, AND, scheduling via schedule();
- "comfy": ComfyUI — absolute `(x:w)`, literal `[x]`, `embedding:name`;
- "compel": compel — `word+`, `(a b)1.3`, `.attend()`, `.blend()`, `.and()`;
- "plain": the text as is, weight 1;
- "kohya": kohya-ss/sd-scripts `--weighted_captions` — `(x)`, `[x]`, `(x:w)` only; AND / BREAK are text.

Every parser raises only PromptSyntaxError (with position and caret line) for bad input.
"""

from __future__ import annotations

import gc
from collections.abc import Collection

from sdclip.syntax.prompt import ExtraNetwork, ParseOptions, Prompt, PromptSyntaxError, Schedule, Scheduled
from sdclip.syntax import a1111, comfy, compel, kohya, plain

from sdclip.conventions.choices import DIALECTS  # the names, as data, live with the options

#: dialect → parser(text, embeddings, ParseOptions)
_PARSERS = {"a1111": a1111.parse, "comfy": comfy.parse, "compel": compel.parse, "plain": plain.parse, "kohya": kohya.parse}


def _unscheduled(text: str, steps: int, old_scheduling: bool, hires_steps: int | None) -> Schedule:
    """A dialect without scheduling: the text, to the last step."""
    n = a1111.Timeline.of(steps, hires_steps, old_scheduling).n
    return Schedule(n, (Scheduled(n, text, (text,)),))


#: dialect → scheduler(text, steps, old_scheduling, hires_steps); only AUTOMATIC1111 schedules
_SCHEDULERS = {
    "a1111": a1111.schedule, "comfy": _unscheduled, "compel": _unscheduled, "plain": _unscheduled, "kohya": _unscheduled,
}


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise PromptSyntaxError(f"a prompt must be a str, got {type(text).__name__}")
    return text


EMBEDDING_MATCHES = ("word", "token-ids")
UNKNOWN_EMBEDDINGS = ("error", "drop")


def parse(
    text: str,
    dialect: str = "a1111",
    embeddings: Collection[str] = (),
    *,
    step: int = 1,
    steps: int | None = None,
    hires_steps: int | None = None,
    old_scheduling: bool = False,
    embedding_match: str = "word",
    unknown_embedding: str = "error",
    max_parts: int | None = None,
) -> Prompt:
    """Parse `text` in `dialect`; names in `embeddings` become textual-inversion references.

    a1111: a prompt that still contains scheduling (`[a:b:when]`, `[a|b]`) is read at `step` of `steps`
    (and `hires_steps`) exactly as A1111 schedules it; without `steps`, as at its first step from the
    sign of `when` alone (see sdclip.syntax.a1111). Extra-network tags land on `Prompt.extra_networks`.
    embedding_match: "word" finds loaded names as whole words here; "token-ids" (A1111's rule) leaves bare
    names to the tokenizer stage, which matches their token ids anywhere (explicit `embedding:name` and
    `<name>` references are still parsed).
    unknown_embedding (comfy `embedding:name` not in `embeddings`): "error" keeps the reference (the
    tokenizer refuses it); "drop" removes it and adds a line to `Prompt.warnings`, as ComfyUI does.
    max_parts: parse only the first this many AND parts and count the rest (`Prompt.parts_omitted`).
    """
    if dialect not in _PARSERS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
    if isinstance(embeddings, str):
        raise TypeError("embeddings must be a collection of names, not one str")
    if embedding_match not in EMBEDDING_MATCHES:
        raise ValueError(f"unknown embedding_match {embedding_match!r}; choose one of {', '.join(EMBEDDING_MATCHES)}")
    if unknown_embedding not in UNKNOWN_EMBEDDINGS:
        raise ValueError(
            f"unknown unknown_embedding {unknown_embedding!r}; choose one of {', '.join(UNKNOWN_EMBEDDINGS)}"
        )
    text = _check_text(text)
    if max_parts is not None and max_parts < 1:
        raise ValueError(f"max_parts must be ≥ 1, got {max_parts}")
    opts = ParseOptions(step, steps, hires_steps, old_scheduling, embedding_match, unknown_embedding, max_parts)
    paused = gc.isenabled() and len(text) > 10_000
    if paused:  # parsing allocates many small acyclic objects: cyclic GC passes only cost time
        gc.disable()
    try:
        return _PARSERS[dialect](text, embeddings, opts)
    finally:
        if paused:
            gc.enable()


def schedule(
    text: str,
    steps: int,
    dialect: str = "a1111",
    *,
    old_scheduling: bool = False,
    hires_steps: int | None = None,
) -> Schedule:
    """The text in force at each step, as AUTOMATIC1111's get_learned_conditioning_prompt_schedules.

    Only a1111 schedules (AND parts each on their own, extra-network tags removed first); other dialects
    give one entry (the text, to the last step). `old_scheduling` selects A1111's pre-1.6 rule (`when` < 1
    is a fraction of the steps); `hires_steps` schedules A1111's highres-fix second pass of that many
    steps (see sdclip.syntax.a1111.Timeline).
    """
    if dialect not in _PARSERS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
    return _SCHEDULERS[dialect](_check_text(text), steps, old_scheduling, hires_steps)


__all__ = ["DIALECTS", "EMBEDDING_MATCHES", "UNKNOWN_EMBEDDINGS", "ParseOptions", "parse", "schedule", "PromptSyntaxError"]
