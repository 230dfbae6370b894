"""LLM text encoders' tokenizers (Qwen2.5-VL, Qwen3, Gemma-2): the model's own tokenizer folder read by
transformers (the `llm` extra), the family's prompt template around the prompt, and one tokenization of the
whole templated text so that the ids are exactly the ones diffusers feeds its text encoder.

The template and the prompt are tokenized together (as diffusers does, `tokenizer(template.format(p))`);
each token is then classed by its character offsets: template before the prompt, the prompt's own tokens
(with their source spans), template after it. A token straddling a boundary counts as the prompt's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdclip.conventions.family import ChatCall

#: the one line for a user without transformers
MISSING_EXTRA = ("the LLM text encoders (qwen-image, z-image, lumina2, flux2, flux2-klein) need transformers: "
                 "pip install 'sdclip[llm]'")
#: rendered in place of the prompt to find where a chat template puts it
_SENTINEL = "\u2063sdclip-prompt\u2063"


def _transformers() -> Any:  # noqa: ANN401
    try:
        import transformers
    except ImportError:
        raise ImportError(MISSING_EXTRA) from None
    return transformers


@dataclass(frozen=True)
class Templated:
    """A prompt inside its family's template, tokenized once."""

    ids: tuple[int, ...]
    prefix: int  #: template tokens before the prompt (BOS included)
    suffix: int  #: template tokens after it
    spans: tuple[tuple[int, int], ...]  #: the prompt's tokens: character spans in the prompt text
    text: str  #: the whole templated text


class LLMTokenizer:
    """A transformers tokenizer (`AutoTokenizer.from_pretrained(folder)`) with what the LLM lane asks of it."""

    def __init__(self, tok: Any, folder: str = ""):  # noqa: ANN401
        self.tok = tok
        self.folder = folder
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    @classmethod
    def from_folder(cls, folder: str | Path) -> "LLMTokenizer":
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"{folder}: not a tokenizer folder (the model's tokenizer/ folder)")
        try:
            tok = _transformers().AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{folder}: not a tokenizer transformers can read ({str(exc).splitlines()[0]})") from None
        return cls(tok, str(folder))

    @property
    def padding_side(self) -> str:
        return str(getattr(self.tok, "padding_side", "right"))

    def render(self, template: str, prompt: str, chat: ChatCall = ChatCall()) -> tuple[str, int, int]:
        """(the templated text, where the prompt starts, where it ends). `template`: a format string with
        one `{}`, or "chat" for the tokenizer's own chat template, called as `chat` says."""
        if template != "chat":
            head, _, tail = template.partition("{}")
            return head + prompt + tail, len(head), len(head) + len(prompt)
        if not getattr(self.tok, "chat_template", None):
            where = self.folder or "this tokenizer"
            raise ValueError(f"{where}: the tokenizer has no chat template (z-image renders its prompt through "
                             "it): use the model's own tokenizer folder")
        for cut in chat.remove:
            prompt = prompt.replace(cut, "")
        marked = self._chat(_SENTINEL, chat)
        head, found, tail = marked.partition(_SENTINEL)
        whole = self._chat(prompt, chat)
        if not found or whole != head + prompt + tail:
            raise ValueError("the tokenizer's chat template changes the prompt's text: sdclip cannot place its tokens")
        return whole, len(head), len(head) + len(prompt)

    def _chat(self, prompt: str, chat: ChatCall) -> str:
        """The pipeline's messages (Z-Image: one user message; Flux.2: a system message, content as parts)."""
        def message(role: str, text: str) -> dict:
            return {"role": role, "content": [{"type": "text", "text": text}] if chat.parts else text}

        messages = ([message("system", chat.system)] if chat.system is not None else []) + [message("user", prompt)]
        extra = {} if chat.thinking is None else {"enable_thinking": chat.thinking}
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=chat.generation, **extra)

    def templated(self, template: str, prompt: str, chat: ChatCall = ChatCall()) -> Templated:
        text, start, end = self.render(template, prompt, chat)
        enc = self.tok(text, return_offsets_mapping=True, add_special_tokens=chat.special_tokens)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        prefix = 0
        while prefix < len(ids) and offsets[prefix][1] <= start:
            prefix += 1
        suffix = 0
        while suffix < len(ids) - prefix and offsets[len(ids) - 1 - suffix][0] >= end:
            suffix += 1
        spans = tuple((max(a, start) - start, min(b, end) - start) for a, b in offsets[prefix:len(ids) - suffix])
        return Templated(tuple(ids), prefix, suffix, spans, text)

    def token_text(self, token_id: int) -> str:
        return self.tok.convert_ids_to_tokens(int(token_id))

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


def llm_tokenizer_of(path: str | None, family: Any) -> LLMTokenizer | None:  # noqa: ANN401
    """The LLM tokenizer `inspect` / `serve` need for an LLM family (None for the others): `path` is the
    tokenizer folder or the diffusers model folder holding tokenizer/."""
    if not any(role.kind == "llm" for role in family.roles):
        return None
    if path is None:
        raise ValueError(f"--family {family.name} tokenizes with the model's own tokenizer, which sdclip does not ship: "
                         "pass --llm-tokenizer DIR (the model folder, or its tokenizer/)")
    folder = Path(path)
    if (folder / "tokenizer").is_dir():
        folder = folder / "tokenizer"
    return LLMTokenizer.from_folder(folder)
