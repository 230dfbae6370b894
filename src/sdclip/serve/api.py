"""The JSON API's handlers: request bodies checked field by field, work run off the event loop.

- POST /api/inspect  → exactly `sdclip inspect --json`'s object (`sdclip.describe.describe`)
- POST /api/view     → {"inspect": ..., "view": ...}: what the page draws (see sdclip.serve.view)
- POST /api/tokenize → ids, as `sdclip tokenize`
- POST /api/encode   → a safetensors body of `pair.diffusers_kwargs()` (or a JSON summary), with --model
- GET  /api/info     → defaults, choices and limits, for the page and other clients

No field names a file: a request can only choose among the server's options and name embeddings by
`{name: vectors}` (as `inspect --embedding-name`). Unknown fields are refused, so a typo cannot pass
silently as a default.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import sdclip
from sdclip.conventions.family import FAMILIES, get_family
from sdclip.conventions.presets import PRESETS, Options, options_from_user
from sdclip.describe import describe
from sdclip.layout import LAYOUTS
from sdclip.serve.limits import ApiError, Worker, check_bearer
from sdclip.serve.view import DEFAULT_STEPS, MAX_STEPS, build_view
from sdclip.syntax import DIALECTS
from sdclip.syntax.prompt import PromptSyntaxError
from sdclip.tokenizer import NORMALIZATIONS, Tokenizer

MAX_LINES = 10_000  #: lines of one /api/tokenize request
MAX_BATCH = 16  #: prompts of one /api/encode request
MAX_NAMES = 64  #: embedding names of one request
#: integer option → (lowest, highest) accepted
INT_RANGES = {"stride": (1, 10_000), "comma_backtrack": (0, 10_000), "max_rows": (1, 10_000)}
TEXT_FIELDS = ("prompt", "syntax", "family", "layout", "normalize", "preset", *INT_RANGES, "embedding_names")
VIEW_FIELDS = (*TEXT_FIELDS, "steps", "step")


class Api:
    """State shared by the handlers: an optional Conditioner, the encode token, the workers."""

    def __init__(self, conditioner: Any = None, *, token: str | None = None, worker: Worker, encode_worker: Worker):
        self.conditioner = conditioner
        self.token = token
        self.worker = worker
        self.encode_worker = encode_worker

    # -- handlers ------------------------------------------------------------------------------

    async def inspect(self, request: Request) -> Response:
        body = await _json_object(request, TEXT_FIELDS)
        text, options, family, names = _text_request(body)
        tokenizer = Tokenizer.default(options.normalize)
        small = self.worker.small(len(text))
        return JSONResponse(await self._work(describe, text, options, family, tokenizer, names, inline=small))

    async def view(self, request: Request) -> Response:
        body = await _json_object(request, VIEW_FIELDS)
        text, options, family, names = _text_request(body)
        steps = _int(body, "steps", 1, MAX_STEPS, DEFAULT_STEPS)
        step = _int(body, "step", 1, MAX_STEPS, 1)
        if step > steps:
            raise ApiError(400, f"step {step} is past steps {steps}")
        tokenizer = Tokenizer.default(options.normalize)
        result = await self._work(lambda: build_view(text, options, family, tokenizer, names, steps=steps, step=step),
                                  inline=self.worker.small(len(text)))
        return JSONResponse(result)

    async def tokenize(self, request: Request) -> Response:
        body = await _json_object(request, ("text", "lines", "normalize"))
        normalize = _choice(body, "normalize", NORMALIZATIONS, "openclip")
        if ("text" in body) == ("lines" in body):
            raise ApiError(400, "give exactly one of 'text' (a str) or 'lines' (a list of str)")
        tokenizer = Tokenizer.default(normalize)
        if "text" in body:
            text = _str(body, "text")
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
            raise ApiError(400, f"format must be 'safetensors' or 'json', got {fmt!r}")
        body = await _json_object(request, ("prompt", "negative"))
        prompt = _prompts(body, "prompt", required=True)
        negative = _prompts(body, "negative", required=False)
        if isinstance(prompt, list) and isinstance(negative, list) and len(negative) != len(prompt):
            raise ApiError(400, f"{len(prompt)} prompts but {len(negative)} negatives")
        cond = self.conditioner
        run = self.encode_worker.run
        if fmt == "json":
            return JSONResponse(await _guarded(run, _encode_summary, cond, prompt, negative))
        data = await _guarded(run, _encode_bytes, cond, prompt, negative)
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="conditioning.safetensors"'})

    async def info(self, request: Request) -> Response:
        cond = self.conditioner
        options = cond.options if cond is not None else Options.preset("a1111")
        return JSONResponse(
            {
                "version": sdclip.__version__,
                "model": cond is not None,
                "family": cond.family.name if cond is not None else "sd1",
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


# -- request bodies ----------------------------------------------------------------------------------


async def _json_object(request: Request, allowed: tuple[str, ...]) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; this endpoint takes {', '.join(allowed)}")
    return body


def _text_request(body: Mapping[str, Any]) -> tuple[str, Options, Any, dict[str, int]]:
    """(prompt, Options, Family, embedding names) as `sdclip inspect` would build them from its flags."""
    text = _str(body, "prompt")
    try:
        options = options_from_user(
            _choice(body, "preset", PRESETS, "a1111"),
            syntax=_choice(body, "syntax", DIALECTS, None),
            layout=_choice(body, "layout", LAYOUTS, None),
            normalize=_choice(body, "normalize", NORMALIZATIONS, None),
            **{name: _int(body, name, lo, hi, None) for name, (lo, hi) in INT_RANGES.items()},
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    family = get_family(_choice(body, "family", tuple(FAMILIES), "sd1"))
    return text, options, family, _names(body.get("embedding_names"))


def _str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise ApiError(400, f"'{key}' must be a str" + ("" if key in body else " (missing)"))
    return value


def _choice(body: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str | None) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if value not in allowed:
        raise ApiError(400, f"unknown {key} {value!r}; choose one of {', '.join(allowed)}")
    return value


def _int(body: Mapping[str, Any], key: str, lo: int, hi: int, default: int | None) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ApiError(400, f"'{key}' must be an integer in {lo}..{hi}, got {value!r}")
    return value


def _names(value: object) -> dict[str, int]:
    """`{"name": vectors}` → embedding names as `inspect --embedding-name NAME:N` gives them."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_NAMES:
        raise ApiError(400, f"'embedding_names' must be an object {{name: vectors}} of at most {MAX_NAMES} names")
    for name, n in value.items():
        if not name.strip() or isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 75:
            raise ApiError(400, f"embedding {name!r}: vectors must be an integer in 1..75, got {n!r}")
    return dict(value)


def _prompts(body: Mapping[str, Any], key: str, *, required: bool) -> str | list[str] | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and len(value) <= MAX_BATCH and all(isinstance(x, str) for x in value):
        return value
    raise ApiError(400, f"'{key}' must be a str or a list of 1..{MAX_BATCH} str")


# -- encoding (torch imported here only) --------------------------------------------------------------


def _tensors(cond: Any, prompt: str | list[str], negative: str | list[str] | None) -> dict:
    pair = cond(prompt, negative)
    return {k: v.detach().contiguous().cpu() for k, v in pair.diffusers_kwargs().items()}


def _encode_bytes(cond: Any, prompt: str | list[str], negative: str | list[str] | None) -> bytes:
    from safetensors.torch import save

    metadata = {"family": cond.family.name, "options": json.dumps(asdict(cond.options))}
    return save(_tensors(cond, prompt, negative), metadata=metadata)


def _encode_summary(cond: Any, prompt: str | list[str], negative: str | list[str] | None) -> dict:
    tensors = _tensors(cond, prompt, negative)
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if negative is None:
        negatives = [""] * len(prompts)
    else:
        negatives = [negative] * len(prompts) if isinstance(negative, str) else negative
    preps = {"prompt": [cond.prepare(p) for p in prompts], "negative": [cond.prepare(n) for n in negatives]}
    return {
        "family": cond.family.name,
        "options": asdict(cond.options),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()},
        "tokens": {k: [p.token_count for p in v] for k, v in preps.items()},
        "dropped": {k: [p.dropped for p in v] for k, v in preps.items()},
    }
