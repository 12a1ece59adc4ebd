"""Request guards that run before any route: optional bearer auth and the body-size limit.

Both are plain ASGI middleware so they can refuse a request before its body is read. They raise
`ServiceError`s; the timing middleware (`service.metrics.RequestTimingMiddleware`, outermost)
turns those into the service's one JSON error shape.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from selfreward_vlm.service.errors import PayloadTooLargeError, UnauthorizedError


def requires_auth(path: str) -> bool:
    """Only the API proper (`/v1/*`) needs the token; probes and docs stay open."""
    return path == "/v1" or path.startswith("/v1/")


class BearerAuthMiddleware:
    """When `api_key` is set, every `/v1/*` request needs `Authorization: Bearer <api_key>`."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is not None and scope["type"] == "http" and requires_auth(scope["path"]):
            header = Headers(scope=scope).get("authorization", "")
            scheme, _, token = header.partition(" ")
            # compare_digest: the time taken must not tell how much of the token was right.
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                token.strip().encode(), self.api_key
            )
            if not ok:
                what = "missing" if not header else "invalid"
                raise UnauthorizedError(f"{what} bearer token", field="authorization")
        await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    """Raised inside `receive` once the streamed body passes the limit."""


class BodyLimitMiddleware:
    """413 for a body over the limit: by `Content-Length` up front, and by counting the bytes
    as they stream in (chunked uploads, lying headers).

    When the count passes the limit mid-stream, whatever the app answers (FastAPI turns the
    failed read into a 400) is dropped and the 413 raised instead.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to a read that failed; the 413 replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            # `_BodyTooLarge` itself, or whatever a route made of the failed read.
            if not exceeded:
                raise
        if exceeded and not started:
            raise _too_large(received, limit)


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body is over the limit of {limit} bytes (got at least {size})", field="body"
    )
