"""The server's guards: request size, body arrival time, per-request time, bearer tokens, the Host header,
and where it listens.

Each guard answers with the same JSON error shape as a bad prompt (`{"error": ..., "position": null}`),
so a client handles one kind of failure.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")

MAX_BODY = 1 << 20  #: bytes of one request body (1 MiB: a prompt is a few KB)
#: seconds a request body may take to arrive: a client that opens a body and never finishes it would
#: otherwise hold its connection (and a buffer) forever; 1 MiB at 100 kB/s is 10 s
BODY_TIMEOUT = 15.0
#: the names a server without --token answers to: a page on another site whose name resolves to 127.0.0.1
#: (DNS rebinding) sends its own name as Host, and is refused
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
TIME_LIMIT = 10.0  #: seconds one request may work before it is answered 503
#: texts up to this many characters are described on the event loop itself: ~1 ms of work (a 150-token
#: prompt), where the hop to a worker thread and back would cost about as much again in GIL hand-offs
#: (bench/bench_serve.py). Longer texts go to the worker pool, under the deadline.
INLINE_CHARS = 2_000


class ApiError(Exception):
    """A request the server refuses: HTTP status, one-line message, prompt position if any."""

    def __init__(self, status: int, message: str, position: int | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.position = position
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.position, self.headers)


def error_response(status: int, message: str, position: int | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "position": position}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, by Content-Length or as it streams in; 408 (and
    the connection closed) for a body that has not fully arrived `timeout` seconds after the request began.

    Counting the stream matters: a chunked request has no Content-Length, and a client may lie. The
    deadline matters because uvicorn's `timeout_keep_alive` only covers the idle time between requests.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY, timeout: float = BODY_TIMEOUT):
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = error_response(413, f"request body over the {self.limit:,}-byte limit")
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await error_response(400, "bad Content-Length header")(scope, receive, send)
                    return
                if declared > self.limit:
                    await too_big(scope, receive, send)
                    return
        # buffer the body (at most `limit` bytes) before the app runs, then replay it: the app never sees
        # a partial body, and the answer to an oversized one is always a clean 413
        chunks: list[bytes] = []
        seen = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                slow = error_response(408, f"the request body did not arrive within {self.timeout:g} s",
                                      headers={"Connection": "close"})
                await slow(scope, receive, send)
                return
            if message["type"] != "http.request":
                return  # client went away
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.limit:
                await too_big(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class HostCheck:
    """ASGI middleware: 403 for a request whose Host header is not one of `allowed` (names, compared without
    port or brackets, case-insensitively). The guard against DNS rebinding for a server without a token."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...] = LOOPBACK_HOSTS):
        self.app = app
        self.allowed = frozenset(h.strip("[]").lower() for h in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), "")
            name = host_name(host)
            if name not in self.allowed:
                shown = host[:80] if host.isprintable() else repr(host[:80])
                refused = error_response(
                    403, f"this server answers to {', '.join(sorted(self.allowed))} only, not Host {shown!r} "
                    "(a guard against DNS rebinding): start it with --allow-host NAME, or with --token")
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def host_name(host: str) -> str:
    """`[::1]:7861` → `::1`, `LocalHost:80` → `localhost`: a Host header's name without its port."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


class Worker:
    """Runs request work in a bounded thread pool with a deadline.

    A thread cannot be killed, so a request past its deadline is answered 503 while its thread finishes in
    the background; the pool's size bounds how many such threads can pile up (later requests then wait
    and time out too, instead of starving the event loop).
    """

    def __init__(self, time_limit: float = TIME_LIMIT, threads: int = 4, name: str = "sdclip-serve",
                 inline_chars: int = 0):
        self.time_limit = time_limit
        self.inline_chars = inline_chars
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    def small(self, chars: int) -> bool:
        """Whether work on `chars` characters is bounded enough to run on the event loop."""
        return chars <= self.inline_chars

    async def run(self, fn: Callable[..., T], *args: Any, inline: bool = False) -> T:
        if inline:
            return fn(*args)
        future = asyncio.wrap_future(self.pool.submit(fn, *args))
        try:
            return await asyncio.wait_for(future, self.time_limit)
        except asyncio.TimeoutError:
            raise ApiError(
                503,
                f"the request did not finish within the server's {self.time_limit:g} s limit; try a shorter prompt",
                headers={"Retry-After": "1"},
            ) from None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def check_bearer(request: Request, token: str | None) -> None:
    """Refuse (401) a request without `Authorization: Bearer <token>` when the server has a token."""
    if token is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise ApiError(401, "this endpoint needs 'Authorization: Bearer <token>' (the server's --token)",
                       headers={"WWW-Authenticate": "Bearer"})


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) resolves only to loopback addresses."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)
