"""Graceful shutdown: on SIGTERM, drain before stopping.

What an orchestrator (or a person) sees after SIGTERM:
1. `/ready` answers 503 at once, so a load balancer stops sending traffic;
2. requests already in flight run to completion, for up to `drain_timeout_s`;
3. new requests get a clean 503 `not_ready` with `Retry-After` and `Connection: close`
   (never a dropped connection), `/health` and `/metrics` still answer; every answer while
   draining closes its connection, so no idle keep-alive connection is cut later;
4. once nothing is in flight, the grace period (`drain_grace_s`): the listener stays open and
   every new connection still gets its 503 + `Connection: close`, for as long as a load
   balancer needs to see `/ready` fail and stop sending. Without it, requests sent in the
   instant the listener closed found their connection reset with no answer (measured: 14 of
   32 hammering clients);
5. then the listening sockets' accept queue is cut to its minimum for a moment
   (`listen(0)`): the kernel stops completing new handshakes (their SYNs are dropped, retried
   by the client and later refused, so nothing was sent) while the connections it already
   queued are accepted and answered; closing a listener resets every connection still in its
   queue, whose request was sent (measured: 23 of 32 clients hammering through the close).
   The listeners close at the first moment their queues are seen empty (Linux reports a
   listener's queue in `TCP_INFO`; elsewhere after `QUEUE_FLUSH_S`): left to uvicorn, they
   closed at its next tick, up to 0.1 s later, time enough for a handshake to land in the one
   slot `listen(0)` leaves and be reset (1 in about 10 runs of the 32-client test, on a busy
   box);
6. then uvicorn's own shutdown runs: it stops listening, the lifespan stops the batcher and
   closes the pair store.

uvicorn installs its signal handlers before the lifespan starts; `Drain.install` puts its own
SIGTERM handler in front and calls uvicorn's once the drain is over (only possible in the main
thread, where `selfreward serve` runs; in-process test apps skip it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from selfreward_vlm.service.errors import NotReadyError
from selfreward_vlm.service.http.auth import route_path

logger = logging.getLogger(__name__)
_ALWAYS_OPEN = frozenset({"/health", "/metrics"})
QUEUE_FLUSH_S = 0.3  # after listen(0): time to accept what the kernel had queued
_TCP_LISTEN = 10  # tcpi_state of a listening socket (`accept_queue`)


class ShuttingDownError(NotReadyError):
    """The service is draining before it stops: try another replica, or again later."""


class Drain:
    """In-flight request count and the draining flag of one app."""

    def __init__(
        self, timeout_s: Callable[[], float], grace_s: Callable[[], float] = lambda: 0.0
    ) -> None:
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._previous: Any = None
        self._installed = False
        self.on_begin: Callable[[], None] = lambda: None  # e.g. metrics.set_ready(False)
        # The server's listening sockets, and stopping to listen at once (set by `selfreward
        # serve`; none in-process).
        self.listeners: Callable[[], list[Any]] = list
        self.stop_listening: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ counting

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self._idle.set()

    async def wait_idle(self) -> bool:
        """Wait until nothing is in flight or the drain timeout passes; True if idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), self.timeout_s())
        except asyncio.TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ signals

    def install(self) -> None:
        """Put the draining SIGTERM handler in front of uvicorn's (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        self._previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self.begin, signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def begin(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """Start draining; a second SIGTERM stops at once."""
        if self.draining:
            self._stop_server(signum, frame)
            return
        self.draining = True
        self.on_begin()
        logger.info("SIGTERM: draining %d in-flight request(s) before stopping", self.in_flight)
        asyncio.get_running_loop().create_task(self._finish(signum, frame))

    async def _finish(self, signum: int, frame: FrameType | None) -> None:
        start = time.monotonic()
        idle = await self.wait_idle()
        grace = self.grace_s()
        logger.info(
            "drain %s after %.2f s; answering 503 for %.1f s more, then stopping",
            "complete" if idle else f"timed out with {self.in_flight} in flight",
            time.monotonic() - start,
            grace,
        )
        if grace > 0:
            await asyncio.sleep(grace)
        if self._shrink_backlog():
            await self._close_when_queues_empty()
        logger.info("grace period over: closing the listener")
        self._stop_server(signum, frame)

    async def _close_when_queues_empty(self) -> None:
        """Let the loop accept (and answer) what the kernel queued, and stop listening the
        moment every accept queue is seen empty, or after `QUEUE_FLUSH_S` (step 5)."""
        deadline = time.monotonic() + QUEUE_FLUSH_S
        while time.monotonic() < deadline:
            queued = [accept_queue(sock) for sock in self.listeners()]
            if queued and all(n == 0 for n in queued):
                break
            await asyncio.sleep(0.002)
        self.stop_listening()

    def _shrink_backlog(self) -> bool:
        """`listen(0)` on each listening socket (step 5 of the module doc); True if any."""
        done = False
        for sock in self.listeners():
            try:
                with socket.socket(fileno=os.dup(sock.fileno())) as same:
                    same.listen(0)
                done = True
            except OSError as exc:  # a socket uvicorn closed meanwhile, or not a TCP one
                logger.debug("could not shrink a listen queue: %s", exc)
        return done

    def _stop_server(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous
        if callable(previous):
            previous(signum, frame)  # uvicorn's handle_exit: it stops the server
        else:  # no server handler to hand over to: stop the process the default way
            signal.raise_signal(signal.SIGINT)


def accept_queue(sock: Any) -> int | None:
    """Connections waiting in a listening TCP socket's accept queue: on Linux, `TCP_INFO`
    reports it for a listener as `tcpi_unacked`; None where that is not known."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, AttributeError, ValueError):
        return None
    if len(info) < 28 or info[0] != _TCP_LISTEN:
        return None
    return int(struct.unpack_from("I", info, 24)[0])


class DrainMiddleware:
    """Counts in-flight requests; while draining, answers new ones 503 (see module doc)."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and route_path(scope) not in _ALWAYS_OPEN:
            raise ShuttingDownError("the service is shutting down; retry on another replica")
        drain = self.drain

        async def closing_send(message: Message) -> None:
            # While draining, every answer closes its connection: no keep-alive connection
            # is left idle for the server to cut under a client's next request.
            if drain.draining and message["type"] == "http.response.start":
                MutableHeaders(scope=message)["connection"] = "close"
            await send(message)

        drain.enter()
        try:
            await self.app(scope, receive, closing_send)
        finally:
            drain.leave()
