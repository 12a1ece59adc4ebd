"""Server-side deadlines and client disconnects.

Every request runs under a deadline: `request_timeout_s` (a setting), or less when the caller
sends `x-request-timeout-ms`. A request still running at its deadline is cancelled and answered
504 `deadline_exceeded`. A client that hangs up before its answer is written gets its request
cancelled too. Cancellation reaches the batcher: work still queued is dropped unrun (its batch
slot goes to someone else), and the worker also drops queued work whose deadline has passed.

A body that has not arrived in full `body_timeout_s` after the headers is answered 408
`request_timeout` and its connection closed: a slow upload would otherwise hold its
connection until the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from selfreward_vlm.service.errors import InvalidRequestError, ServiceError
from selfreward_vlm.service.http.auth import route_path

TIMEOUT_HEADER = "x-request-timeout-ms"
# The deadline of the request being served, as a `time.perf_counter()` value (None: none).
# A contextvar: set by the middleware, read by `Batcher.submit` in the same task.
current_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "selfreward_deadline", default=None
)
# Probes and scrapes answer at once and must work while the service is overloaded.
_NO_DEADLINE = frozenset({"/health", "/ready", "/metrics"})


class DeadlineExceededError(ServiceError):
    """The request did not finish within its deadline; whatever it queued was dropped."""

    status_code = 504
    type = "deadline_exceeded"


def request_timeout(scope: Scope, default_s: float) -> float:
    """Seconds this request may run: the setting, or the shorter `x-request-timeout-ms`."""
    raw = Headers(scope=scope).get(TIMEOUT_HEADER)
    if raw is None:
        return default_s
    try:
        value = float(raw) / 1000
    except ValueError:
        value = -1.0
    if not value > 0 or value != value:  # negative, zero or NaN
        raise InvalidRequestError(
            f"{TIMEOUT_HEADER} must be a positive number of milliseconds, got {raw!r}",
            field=TIMEOUT_HEADER,
        )
    return min(value, default_s)


class DeadlineMiddleware:
    """Runs each request under its deadline and cancels it when the client disconnects.

    The client's disconnect is only observable through `receive()`: once the body has been
    read, a watcher task keeps reading it, and the app's own later `receive()` calls wait on
    what the watcher saw (so the two never race for the same message).
    """

    def __init__(
        self,
        app: ASGIApp,
        timeout_s: Callable[[], float],
        on_abandon: Callable[[str], None],
        body_timeout_s: Callable[[], float] = lambda: float("inf"),
    ) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.on_abandon = on_abandon
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in _NO_DEADLINE:
            await self.app(scope, receive, send)
            return
        seconds = request_timeout(scope, self.timeout_s())
        deadline = time.perf_counter() + seconds
        gone = asyncio.Event()  # the client hung up
        state = {"started": False, "done": False}
        watcher: asyncio.Task[None] | None = None
        scope_ = anyio.CancelScope(deadline=anyio.current_time() + seconds)

        async def watch() -> None:
            message = await receive()
            if message["type"] == "http.disconnect" and not state["done"]:
                gone.set()
                scope_.cancel()

        body_by = time.perf_counter() + self.body_timeout_s()

        async def guarded_receive() -> Message:
            nonlocal watcher
            if watcher is not None:  # body already read: wait for the watcher's verdict
                await gone.wait()
                return {"type": "http.disconnect"}
            try:  # a slow body is cut in seconds, not at the request's deadline
                wait = max(0.001, body_by - time.perf_counter())
                # asyncio.timeout, not wait_for: wait_for ran each read as a task of its own,
                # two loop iterations per request (bench/bench_request_overhead.py)
                async with asyncio.timeout(wait if wait < 1e9 else None):
                    message = await receive()
            except TimeoutError:
                self.on_abandon("slow_body")
                raise HTTPException(
                    408,
                    f"the request body did not arrive within {self.body_timeout_s():g} s "
                    "(setting body_timeout_s)",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.ensure_future(watch())
            return message

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state["done"] = True
            await send(message)

        token = current_deadline.set(deadline)
        try:
            with scope_:
                await self.app(scope, guarded_receive, tracked_send)
        finally:
            current_deadline.reset(token)
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        if not scope_.cancelled_caught:
            return
        if gone.is_set():
            self.on_abandon("disconnect")
            return  # nobody is listening for an answer
        self.on_abandon("deadline")
        if not state["started"]:
            raise DeadlineExceededError(
                f"the request did not finish within its deadline of {seconds * 1000:.0f} ms "
                f"(setting request_timeout_s, or the {TIMEOUT_HEADER} header)"
            )
