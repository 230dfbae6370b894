"""The ASGI application of `sdclip serve`: one page, its static assets, the JSON API.

Starlette (on uvicorn) because it is a small, well-kept ASGI toolkit with no code generation, no
validation layer of its own and few dependencies: the API is five routes, and the page is three
files shipped in the package (no CDN, works offline).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sdclip.serve.api import Api
from sdclip.serve.limits import (
    BODY_TIMEOUT,
    INLINE_CHARS,
    LOOPBACK_HOSTS,
    MAX_BODY,
    TIME_LIMIT,
    ApiError,
    BodyLimit,
    HostCheck,
    Worker,
    error_response,
)
from sdclip.serve.openapi import SPEC

STATIC = Path(__file__).resolve().parent / "static"
#: the page loads nothing from elsewhere; say so to the browser too
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(
    conditioner: Any = None,
    *,
    token: str | None = None,
    cors: str | None = None,
    max_body: int = MAX_BODY,
    time_limit: float = TIME_LIMIT,
    threads: int = 4,
    inline_chars: int = INLINE_CHARS,
    t5_tokenizer: Any = None,
    family: str | None = None,
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS,
    body_timeout: float = BODY_TIMEOUT,
    llm_tokenizer: Any = None,
) -> Starlette:
    """The app. `conditioner`: an already-built `sdclip.conditioner.Conditioner` enabling /api/encode (None:
    inspection only, and torch is never imported). `token`: bearer token that /api/encode requires.
    `cors`: the one origin allowed cross-origin requests (none by default). `inline_chars`: texts up to this
    length are inspected on the event loop (see sdclip.serve.limits.INLINE_CHARS); 0 sends all to the pool.
    `t5_tokenizer`: SD3 / Flux tokenizing without a model (default: the conditioner's). `family`: what a
    request without one gets (default: the conditioner's, else sd1). `allowed_hosts`: the Host names
    answered when there is no `token` (None: any). `body_timeout`: seconds a request body may take.
    `llm_tokenizer`: Qwen-Image / Z-Image / Lumina 2 tokenizing without a model (sdclip.tokenizer.llm.LLMTokenizer;
    default: the conditioner's)."""
    worker = Worker(time_limit, threads, inline_chars=inline_chars)
    encode_worker = Worker(time_limit, 1, name="sdclip-encode")  # one encode at a time: the encoder is not shared
    api = Api(conditioner, token=token, worker=worker, encode_worker=encode_worker, t5_tokenizer=t5_tokenizer,
              family=family, llm_tokenizer=llm_tokenizer)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=_HEADERS)

    async def openapi(request: Request) -> Response:
        return JSONResponse(SPEC)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return error_response(status, getattr(exc, "detail", "not found"))

    async def internal(request: Request, exc: Exception) -> Response:
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        worker.close()
        encode_worker.close()

    middleware = []
    if token is None and allowed_hosts is not None and "*" not in allowed_hosts:
        middleware.append(Middleware(HostCheck, allowed=tuple(allowed_hosts)))
    middleware.append(Middleware(BodyLimit, limit=max_body, timeout=body_timeout))
    if cors:
        middleware.append(Middleware(CORSMiddleware, allow_origins=[cors], allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"]))
    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/inspect", api.inspect, methods=["POST"]),
        Route("/api/view", api.view, methods=["POST"]),
        Route("/api/tokenize", api.tokenize, methods=["POST"]),
        Route("/api/encode", api.encode, methods=["POST"]),
        Route("/api/info", api.info, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={ApiError: api_error, 404: not_found, 405: not_found, Exception: internal},
        lifespan=lifespan,
    )
    app.state.api = api
    return app
