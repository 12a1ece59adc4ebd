"""Slow clients: a header timeout uvicorn does not have, on top of what it does.

uvicorn (0.55) closes idle keep-alive connections (`timeout_keep_alive`) and answers 503 past
`limit_concurrency` open connections or running requests, but has no limit on how long a
client may take to send its request line and headers: a client that opens a connection and
trickles its headers (or sends nothing) held it until it went away. `GuardedH11Protocol` is
uvicorn's own h11 protocol with one timer more: from the moment a connection opens (or its
previous response ends) to its headers being complete; past `header_timeout_s` it answers
408 and closes. Slow bodies are cut in the app (`service.deadlines`, `body_timeout_s`), which
can answer them with the service's error shape.

At shutdown uvicorn closes every connection that has no request in progress. One that was
accepted an instant before the listener closed, whose request is still on its way, was cut
with no answer; here such a connection gets `SHUTDOWN_WAIT_S` for its request, which the
draining app answers 503 + `Connection: close` (uvicorn waits for open connections).

In front of the service, a reverse proxy does the same (and buffers slow clients away from
the server): nginx `client_header_timeout`, `client_body_timeout`, `limit_conn`; HAProxy
`timeout http-request`, `maxconn`.
"""

from __future__ import annotations

import asyncio
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

_BODY = json.dumps(
    {
        "error": {
            "type": "request_timeout",
            "message": "the request line and headers did not arrive in time",
            "field": None,
        }
    }
).encode()
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


SHUTDOWN_WAIT_S = 1.0  # at shutdown, how long a fresh connection may take to send its request


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header timeout, and a moment at shutdown for a request
    already on its way (module doc)."""

    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    _stopping = False

    def shutdown(self) -> None:
        self._stopping = True
        if self.cycle is None and not self.transport.is_closing():
            # no request yet: answer one that arrives soon (503 while draining), then close
            self._disarm()
            self._header_timer = self.loop.call_later(SHUTDOWN_WAIT_S, self._close_if_idle)
            return
        super().shutdown()

    def _close_if_idle(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            super().shutdown()
        else:
            self.cycle.keep_alive = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # request line and headers are in
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._stopping and not self.transport.is_closing():
            super().shutdown()  # the server is stopping: no next request on this connection
        elif not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request's headers get the same time

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        logger.info("closing a connection whose headers took over %.1f s", self.header_timeout_s)
        self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def guarded_protocol(header_timeout_s: float) -> type[GuardedH11Protocol]:
    """The protocol class for `uvicorn.run(http=...)` with this header timeout."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": header_timeout_s})
