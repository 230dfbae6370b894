"""uvicorn as `sdclip serve` runs it: a connection must deliver a request's headers within a deadline.

Why: uvicorn's h11 protocol starts no timer when a connection opens, and `timeout_keep_alive` is cancelled
by the first byte of the next request, so a client that sends nothing, or half a header line, holds its
connection forever (300 of 300 such connections were still open after 60 s). The body has its own deadline
in the app (sdclip.serve.limits.BodyLimit); this closes the gap before the app is called.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from sdclip.serve.limits import BODY_TIMEOUT


def protocol(header_timeout: float) -> type[H11Protocol]:
    """An h11 protocol class that closes a connection whose request headers are not complete
    `header_timeout` seconds after the connection opened or the previous answer was sent."""

    class HeaderDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the headers are in: the app's body deadline takes over
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


def make_server(app: Any, *, header_timeout: float = BODY_TIMEOUT) -> uvicorn.Server:
    """The uvicorn Server for `app`, quiet, with the header deadline (run it with `.run(sockets=[sock])`)."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False,
                            http=protocol(header_timeout))
    return uvicorn.Server(config)
