"""The values the syntax stage hands on: weighted text, break marks, embedding references.

No model is needed to build them; every dialect (a1111, comfy, compel, plain) produces the same shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

FragmentKind = Literal["text", "break", "embedding"]
Combine = Literal["single", "and", "blend", "concat"]

#: weights outside ±MAX_WEIGHT (or NaN/inf) are refused: no real prompt needs them, and they
#: turn conditioning into garbage silently.
MAX_WEIGHT = 100.0


class PromptSyntaxError(ValueError):
    """The one error every parser raises: where in the prompt, what, and a caret line."""

    def __init__(self, message: str, source: str = "", position: int = 0):
        self.message = message
        self.source = source
        self.position = max(0, min(position, len(source)))
        super().__init__(self._render())

    @property
    def caret(self) -> str:
        """Two lines: a window of the prompt around the position and a ^ under it."""
        lo = max(0, self.position - 40)
        hi = min(len(self.source), self.position + 40)
        window = self.source[lo:hi].replace("\n", " ").replace("\t", " ")
        prefix = "…" if lo > 0 else ""
        return f"{prefix}{window}\n{' ' * (len(prefix) + self.position - lo)}^"

    def _render(self) -> str:
        if not self.source:
            return self.message
        return f"{self.message} (at character {self.position})\n{self.caret}"


def check_weight(weight: float, fragment: str, source: str = "", position: int = 0) -> float:
    """Refuse NaN, infinite and absurd weights, naming the fragment they were attached to."""
    if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
        raise PromptSyntaxError(
            f"weight {weight!r} on {fragment[:60]!r} is not usable (must be finite and within ±{MAX_WEIGHT:g})",
            source,
            position,
        )
    return weight


@dataclass(frozen=True)
class Fragment:
    """A run of text with one weight; `start`/`end` are its character span in the source prompt.

    kind "break" ends the current row (AUTOMATIC1111 `BREAK`); kind "embedding" is a textual-inversion
    reference whose `text` is the embedding's name.
    """

    text: str
    weight: float = 1.0
    start: int = 0
    end: int = 0
    kind: FragmentKind = "text"


@dataclass(frozen=True)
class Sequence:
    """What becomes one token stream (one encoding): fragments in order."""

    fragments: tuple[Fragment, ...] = ()

    @property
    def text(self) -> str:
        """The plain text without syntax (breaks as a space, embeddings by name)."""
        out = []
        for f in self.fragments:
            out.append(" " if f.kind == "break" else f.text)
        return "".join(out)


@dataclass(frozen=True)
class Part:
    """One sub-prompt of a combination, with its weight (AND weight, blend weight)."""

    sequence: Sequence
    weight: float = 1.0


@dataclass(frozen=True)
class ExtraNetwork:
    """An AUTOMATIC1111 extra-network tag (`<lora:name:0.8>`, `<lyco:…>`, `<hypernet:…>`, any `<word:…>`).

    A1111 removes these from the text before any other parsing and applies the network to the model; sdclip
    removes them from the conditioning the same way and keeps them here so reports can list them.
    `kind` is the word before the first colon ("lora"), `name` the first argument, `args` the rest as
    written ("0.8", "te=0.5"), `start`/`end` the tag's span in the source prompt.
    """

    kind: str
    name: str
    args: tuple[str, ...] = ()
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class Prompt:
    """A parsed prompt.

    combine:
      - "single": one part (the usual case);
      - "and": AUTOMATIC1111 `AND` — parts are separate conditionings, mixed by the sampler with weights;
      - "blend": compel `.blend()` — weighted sum of the parts' encodings (normalised unless `normalize` is False);
      - "concat": compel `.and()` — encodings concatenated on the token axis.
    """

    parts: tuple[Part, ...]
    combine: Combine = "single"
    normalize: bool = True
    source: str = ""
    #: A1111 extra-network tags removed from the text (a1111 dialect only), in source order
    extra_networks: tuple[ExtraNetwork, ...] = ()
    #: things the parser dropped or could not honour, one readable line each (e.g. an unknown
    #: ComfyUI `embedding:name` under unknown_embedding="drop")
    warnings: tuple[str, ...] = ()
    #: AND parts counted but not parsed (ParseOptions.max_parts); 0 for a whole parse
    parts_omitted: int = 0


@dataclass(frozen=True)
class Scheduled:
    """The prompt text in force up to and including step `end_step` (1-based, of `steps`).

    `parts` are the AND sub-prompts' texts at this step (each scheduled on its own, as A1111 does),
    `text` joins them with the original `AND` separators, so `parse(text)` gives the same parts unless a
    scheduled branch itself makes or unmakes an `AND` word (then use `parts`).
    """

    end_step: int
    text: str
    parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Schedule:
    """A prompt's per-step texts (AUTOMATIC1111 `[a:b:when]`, `[a|b]`); one entry if nothing is scheduled."""

    steps: int
    entries: tuple[Scheduled, ...] = field(default_factory=tuple)
    #: A1111 extra-network tags removed before scheduling (they hold at every step)
    extra_networks: tuple[ExtraNetwork, ...] = ()

    def at(self, step: int) -> str:
        """The text in force at 1-based `step`."""
        if not 1 <= step <= self.steps:
            raise ValueError(f"step {step} outside 1..{self.steps}")
        for entry in self.entries:
            if step <= entry.end_step:
                return entry.text
        return self.entries[-1].text


@dataclass(frozen=True)
class ParseOptions:
    """What a dialect's parser may need besides the text; each dialect reads the fields it has use for.

    step / steps / hires_steps / old_scheduling: a1111 reads a scheduled prompt at `step` of `steps`
    exactly as A1111 schedules it (without `steps`, as at its first step from the sign of `when`).
    embedding_match: "word" finds loaded names as whole words in the parser; "token-ids" (A1111's rule)
    leaves bare names to the tokenizer stage (explicit `embedding:name` and `<name>` are still parsed).
    unknown_embedding: a comfy `embedding:name` not loaded is kept ("error": the tokenizer refuses it) or
    removed with a line in `Prompt.warnings` ("drop", as ComfyUI does)."""

    step: int = 1
    steps: int | None = None
    hires_steps: int | None = None
    old_scheduling: bool = False
    embedding_match: str = "word"
    unknown_embedding: str = "error"
    #: parse at most this many AND parts; the rest are only counted (`Prompt.parts_omitted`): a summary
    #: (`sdclip inspect`) of a prompt of 1.7 M parts needs its first few, not 1.7 M parsed parts
    max_parts: int | None = None

