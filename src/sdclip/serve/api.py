"""The JSON API's handlers: request bodies checked field by field, work run off the event loop.

- POST /api/inspect  → exactly `sdclip inspect --json`'s object (`sdclip.serve.view.inspect_object`)
- POST /api/view     → {"inspect": ..., "view": ...}: what the page draws (see sdclip.serve.view)
- POST /api/tokenize → ids, as `sdclip tokenize`
- POST /api/encode   → a safetensors body of `pair.diffusers_kwargs()` (or a JSON summary), with --model
- GET  /api/info     → defaults, choices and limits, for the page and other clients

No field names a file: a request can only choose among the server's options and name embeddings by
`{name: vectors}` (as `inspect --embedding-name`). Unknown fields are refused, so a typo cannot pass
silently as a default (sdclip.serve.fields reads every field). A request without `family` gets the
server's: its model's, or `--family`. SD3 / Flux tokenize T5 with the model's own tokenizer: the model's
(`--model`) or `--t5-tokenizer DIR`'s; Qwen-Image / Z-Image / Lumina 2 their LLM's tokenizer and chat template,
the model's or `--llm-tokenizer DIR`'s; without one those families are refused with one line naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import sdclip
from sdclip.conventions.family import FAMILIES, get_family
from sdclip.lanes import needs_tokenizer
from sdclip.conventions.presets import PRESETS, Options, options_from_user
from sdclip.layout import LAYOUTS
from sdclip.serve import fields
from sdclip.serve.limits import ApiError, Worker, check_bearer
from sdclip.serve.view import DEFAULT_STEPS, MAX_STEPS, ViewRequest, build_view, inspect_object
from sdclip.syntax import DIALECTS
from sdclip.syntax.prompt import PromptSyntaxError
from sdclip.tokenizer import NORMALIZATIONS, Tokenizer

MAX_LINES = 10_000  #: lines of one /api/tokenize request
MAX_BATCH = fields.MAX_BATCH
#: integer option → (lowest, highest) accepted
INT_RANGES = {"stride": (1, 10_000), "comma_backtrack": (0, 10_000), "max_rows": (1, 10_000),
              "max_sequence_length": (1, 4_096)}
TEXT_FIELDS = ("prompt", "syntax", "family", "layout", "normalize", "preset", *INT_RANGES, "embedding_names")
VIEW_FIELDS = (*TEXT_FIELDS, "steps", "step")
#: the families whose tokenizing needs the model's T5 tokenizer
T5_FAMILIES = tuple(name for name, fam in FAMILIES.items() if needs_tokenizer(fam, "t5_tokenizer"))
#: the families whose tokenizing needs the model's LLM tokenizer (and its chat template)
LLM_FAMILIES = tuple(name for name, fam in FAMILIES.items() if needs_tokenizer(fam, "llm_tokenizer"))


class Api:
    """State shared by the handlers: an optional Conditioner, the T5 and LLM tokenizers, the encode token, the
    workers."""

    def __init__(self, conditioner: Any = None, *, token: str | None = None, worker: Worker, encode_worker: Worker,
                 t5_tokenizer: Any = None, family: str | None = None, llm_tokenizer: Any = None):
        self.conditioner = conditioner
        self.token = token
        self.worker = worker
        self.encode_worker = encode_worker
        self.t5_tokenizer = t5_tokenizer if t5_tokenizer is not None else getattr(conditioner, "t5_tokenizer", None)
        llm = llm_tokenizer if llm_tokenizer is not None else getattr(conditioner, "tokenizers", {}).get("llm_tokenizer")
        self.tokenizers = {"llm_tokenizer": llm} if llm is not None else {}  #: later kinds' tokenizers by name
        self.family = family or (conditioner.family.name if conditioner is not None else "sd1")

    # -- handlers ------------------------------------------------------------------------------

    async def inspect(self, request: Request) -> Response:
        req = self._view_request(fields.json_object(await request.body(), VIEW_FIELDS))
        result = await self._work(inspect_object, req, inline=self.worker.small(len(req.text)))
        return JSONResponse(result)

    async def view(self, request: Request) -> Response:
        req = self._view_request(fields.json_object(await request.body(), VIEW_FIELDS))
        result = await self._work(build_view, req, inline=self.worker.small(len(req.text)))
        return JSONResponse(result)

    async def tokenize(self, request: Request) -> Response:
        body = fields.json_object(await request.body(), ("text", "lines", "normalize"))
        normalize = fields.choice(body, "normalize", NORMALIZATIONS, "openclip")
        if ("text" in body) == ("lines" in body):
            raise ApiError(400, "give exactly one of 'text' (a str) or 'lines' (a list of str)")
        tokenizer = Tokenizer.default(normalize)
        if "text" in body:
            text = fields.text(body, "text")
            return JSONResponse({"ids": await self._work(tokenizer.encode, text, inline=self.worker.small(len(text)))})
        lines = body["lines"]
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise ApiError(400, "'lines' must be a list of str")
        if len(lines) > MAX_LINES:
            raise ApiError(413, f"at most {MAX_LINES:,} lines per request, got {len(lines):,}")
        return JSONResponse({"ids": await self._work(tokenizer.encode_batch, lines)})

    async def encode(self, request: Request) -> Response:
        check_bearer(request, self.token)
        if self.conditioner is None:
            raise ApiError(404, "no model loaded: start the server with `sdclip serve --model PATH` to encode")
        fmt = request.query_params.get("format", "safetensors")
        if fmt not in ("safetensors", "json"):
            raise ApiError(400, f"the 'format' query parameter must be 'safetensors' or 'json', got {fields.show(fmt)}")
        body = fields.json_object(await request.body(), ("prompt", "negative"))
        prompt = fields.prompts(body, "prompt", required=True)
        negative = fields.prompts(body, "negative", required=False)
        if isinstance(prompt, list) and isinstance(negative, list) and len(negative) != len(prompt):
            raise ApiError(400, f"{len(prompt)} prompts but {len(negative)} negatives")
        from sdclip.serve.encode import encode_bytes, encode_summary  # torch: only with a model

        cond = self.conditioner
        run = self.encode_worker.run
        if fmt == "json":
            return JSONResponse(await _guarded(run, encode_summary, cond, prompt, negative))
        data, notes = await _guarded(run, encode_bytes, cond, prompt, negative)
        headers = {"Content-Disposition": 'attachment; filename="conditioning.safetensors"'}
        if notes:  # ASCII JSON: a header value must be Latin-1
            headers["X-Sdclip-Warnings"] = json.dumps(notes, ensure_ascii=True)
        return Response(data, media_type="application/octet-stream", headers=headers)

    async def info(self, request: Request) -> Response:
        cond = self.conditioner
        options = cond.options if cond is not None else Options.preset("a1111")
        return JSONResponse(
            {
                "version": sdclip.__version__,
                "model": cond is not None,
                "family": self.family,
                "t5_tokenizer": self.t5_tokenizer is not None,
                "needs_t5": list(T5_FAMILIES),
                "llm_tokenizer": "llm_tokenizer" in self.tokenizers,
                "needs_llm": list(LLM_FAMILIES),
                "defaults": {"syntax": options.dialect, "layout": options.layout, "normalize": options.normalize},
                "embeddings": dict(cond.embeddings.vector_counts()) if cond is not None else {},
                "encode_auth": self.token is not None,
                "choices": {
                    "syntax": list(DIALECTS),
                    "family": list(FAMILIES),
                    "layout": list(LAYOUTS),
                    "normalize": list(NORMALIZATIONS),
                    "preset": list(PRESETS),
                },
                "limits": {"time_s": self.worker.time_limit, "max_steps": MAX_STEPS},
            }
        )

    def _view_request(self, body: Mapping[str, Any]) -> ViewRequest:
        """What /api/inspect and /api/view show: the text request, its steps and this server's tokenizers."""
        text, options, family, names = self._text_request(body)
        steps, step = _steps(body)
        return ViewRequest(text, options, family, Tokenizer.default(options.normalize), names, steps=steps, step=step,
                           t5_tokenizer=self.t5_tokenizer, tokenizers=self.tokenizers)

    def _text_request(self, body: Mapping[str, Any]) -> tuple[str, Options, Any, dict[str, int]]:
        """(prompt, Options, Family, embedding names) as `sdclip inspect` would build them from its flags."""
        text = fields.text(body, "prompt")
        try:
            options = options_from_user(
                fields.choice(body, "preset", PRESETS, "a1111"),
                syntax=fields.choice(body, "syntax", DIALECTS, None),
                layout=fields.choice(body, "layout", LAYOUTS, None),
                normalize=fields.choice(body, "normalize", NORMALIZATIONS, None),
                **{name: fields.integer(body, name, lo, hi, None) for name, (lo, hi) in INT_RANGES.items()},
            )
        except ValueError as exc:
            raise ApiError(400, str(exc).splitlines()[0]) from None
        family = get_family(fields.choice(body, "family", tuple(FAMILIES), self.family))
        if family.name in T5_FAMILIES and self.t5_tokenizer is None:
            raise ApiError(400, f"family {family.name} tokenizes with its model's T5 tokenizer, which this server was "
                           "not given: start it with --model <an SD3 / Flux model> or --t5-tokenizer DIR")
        if family.name in LLM_FAMILIES and "llm_tokenizer" not in self.tokenizers:
            raise ApiError(400, f"family {family.name} tokenizes with its model's own LLM tokenizer and chat template, "
                           f"which this server was not given: start it with --model <a {family.name} model> or "
                           "--llm-tokenizer DIR (the model folder, or its tokenizer/)")
        return text, options, family, fields.embedding_names(body.get("embedding_names"))

    async def _work(self, fn: Callable[..., Any], *args: Any, inline: bool = False) -> Any:
        return await _guarded(self.worker.run, fn, *args, inline=inline)


async def _guarded(run: Callable, fn: Callable[..., Any], *args: Any, inline: bool = False) -> Any:
    """Run `fn` through a Worker, turning the library's bad-input errors into 400s."""

    def call() -> Any:
        try:
            return fn(*args)
        except PromptSyntaxError as exc:
            raise ApiError(400, exc.message, exc.position if exc.source else None) from None
        except (ValueError, KeyError) as exc:
            msg = str(exc.args[0]) if isinstance(exc, KeyError) and type(exc) is KeyError and exc.args else str(exc)
            raise ApiError(400, msg.splitlines()[0] if msg else type(exc).__name__) from None

    return await run(call, inline=inline)


def _steps(body: Mapping[str, Any]) -> tuple[int, int]:
    steps = fields.integer(body, "steps", 1, MAX_STEPS, DEFAULT_STEPS)
    step = fields.integer(body, "step", 1, MAX_STEPS, 1)
    if step > steps:
        raise ApiError(400, f"'step' {step} is past 'steps' {steps}")
    return steps, step
