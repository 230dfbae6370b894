"""/api/encode's work, run in its worker thread: tensors, a summary, and what went wrong in the API's words.

Errors and warnings name the request's fields (`'prompt'`, `'negative'`, item numbers of a list), never
the CLI flags the library's messages mention, and warnings travel in the answer (the JSON summary's
`warnings`, the safetensors file's metadata and an `X-Sdclip-Warnings` header) instead of the server's
stderr. Torch is imported here only.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sdclip.cli.encode import _padded_lists
from sdclip.describe import lane_warnings
from sdclip.syntax.prompt import PromptSyntaxError

#: library wording → the API's (the library speaks to `sdclip encode` users and Python callers)
_REWORDS = (
    ("diffusers-format output (sdclip encode's file, pipe(**kwargs)) holds one per prompt",
     "/api/encode answers diffusers' keyword tensors, one conditioning per prompt"),
    ("or --syntax plain", "or a server started with --syntax plain"),
    ("(--row-limit)", "(the server's --row-limit)"),
    ("the negative prompt uses", "'negative' uses"),
    ("the prompt uses", "'prompt' uses"),
)
_NUMBERED = re.compile(r"^(negative prompt|prompt) (\d+): ")
_PACKAGE = str(Path(__file__).resolve().parents[1])


def api_words(message: str, batch: bool) -> str:
    """A library message as the API says it: fields by their JSON names."""
    for old, new in _REWORDS:
        message = message.replace(old, new)

    def field(m: re.Match) -> str:
        name = "'negative'" if m.group(1).startswith("negative") else "'prompt'"
        return f"{name} item {m.group(2)}: " if batch else f"{name}: "

    return _NUMBERED.sub(field, message)


class Request:
    """One /api/encode request's texts, checked and prepared before any encoder runs."""

    def __init__(self, cond: Any, prompt: str | list[str], negative: str | list[str] | None):
        self.cond, self.prompt, self.negative = cond, prompt, negative
        self.batch = isinstance(prompt, list)
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if negative is None:
            negatives = [""] * len(prompts)
        else:
            negatives = [negative] * len(prompts) if isinstance(negative, str) else negative
        self.warnings: list[str] = []
        self.prepared = {"prompt": self._prepare("prompt", prompts), "negative": self._prepare("negative", negatives)}

    def _label(self, field: str, i: int) -> str:
        return f"'{field}' item {i + 1}" if self.batch else f"'{field}'"

    def _prepare(self, field: str, texts: list[str]) -> list:
        out = []
        for i, text in enumerate(texts):
            try:
                prep = self.cond.prepare(text)
            except PromptSyntaxError as exc:
                raise PromptSyntaxError(f"{self._label(field, i)}: {exc.message}", exc.source, exc.position) from None
            except ValueError as exc:
                raise ValueError(f"{self._label(field, i)}: {api_words(str(exc), self.batch)}") from None
            self.warnings.extend(f"{self._label(field, i)}: {w}" for w in prep.prompt.warnings)
            # never silent: weights that do nothing on an LLM encoder, text past max_sequence_length
            self.warnings.extend(f"{self._label(field, i)}: {w}" for w in lane_warnings(prep, self.cond.family))
            if prep.prompt.extra_networks:
                self.warnings.append(f"{self._label(field, i)}: {len(prep.prompt.extra_networks)} extra-network "
                                     "tag(s) removed from the conditioning (LoRA etc. are not text)")
            out.append(prep)
        return out

    def tensors(self) -> dict:
        """`pair.diffusers_kwargs()` on the CPU, as `sdclip encode` stores them (Z-Image's list zero-padded with a
        `…_mask`); the library's warnings land in `self.warnings`.

        `warnings.catch_warnings` swaps process-wide state: this runs in the one encode thread, and a warning
        raised elsewhere meanwhile (not from sdclip) is re-issued as it would have been."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                pair = self.cond(self.prompt, self.negative)
                kwargs = pair.diffusers_kwargs()
            except PromptSyntaxError:
                raise
            except ValueError as exc:
                raise ValueError(api_words(str(exc), self.batch)) from None
        for w in caught:
            if str(w.filename).startswith(_PACKAGE):
                self.warnings.append(api_words(str(w.message), self.batch))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return {k: v.detach().contiguous().cpu() for k, v in _padded_lists(kwargs).items()}


def encode_bytes(cond: Any, prompt: str | list[str], negative: str | list[str] | None) -> tuple[bytes, list[str]]:
    """The safetensors file of diffusers' keyword tensors and the request's warnings (also in its metadata)."""
    from safetensors.torch import save

    req = Request(cond, prompt, negative)
    tensors = req.tensors()
    metadata = {"family": cond.family.name, "options": json.dumps(asdict(cond.options)),
                "warnings": json.dumps(req.warnings, ensure_ascii=False)}
    return save(tensors, metadata=metadata), req.warnings


def encode_summary(cond: Any, prompt: str | list[str], negative: str | list[str] | None) -> dict:
    """Shapes, token counts, dropped text and warnings instead of the tensors."""
    req = Request(cond, prompt, negative)
    tensors = req.tensors()
    return {
        "family": cond.family.name,
        "options": asdict(cond.options),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()},
        "tokens": {k: [p.token_count for p in v] for k, v in req.prepared.items()},
        "dropped": {k: [p.dropped for p in v] for k, v in req.prepared.items()},
        "warnings": req.warnings,
    }
