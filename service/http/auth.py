"""Request guards that run before any route: optional bearer auth and the body-size limit.

Keys are never logged nor reported (`/info` shows limits, not settings; the settings' repr
hides them).

Both are plain ASGI middleware so they can refuse a request before its body is read. They raise
`ServiceError`s; the timing middleware (`service.http.metrics.RequestTimingMiddleware`, outermost)
turns those into the service's one JSON error shape.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Literal

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from selfreward_vlm.service.errors import PayloadTooLargeError, ServiceError, UnauthorizedError

Access = Literal["open", "read", "write", "admin"]
# Probes, the API description and the pair viewer's page (it holds no data; its data calls
# are /v1 routes and need a token) stay open. Everything else needs a token, whatever its
# prefix: compatibility routes (/get_reward, ...) included, so a new route cannot forget.
OPEN_PATHS = frozenset(
    {"/health", "/ready", "/info", "/metrics", "/openapi.json", "/docs", "/redoc", "/ui", "/ui/"}
)
OPEN_PREFIXES = ("/docs/", "/ui/static/")
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ForbiddenError(ServiceError):
    """A valid token that may not do this (the read-only key writing, say)."""

    status_code = 403
    type = "forbidden"


def requires_auth(path: str) -> bool:
    """Whether `path` needs a token when the service has one."""
    return access_level("GET", path) != "open"


def route_path(scope: Scope) -> str:
    """The path the app routes on: `scope["path"]` holds the `root_path` prefix too (behind
    a proxy mounted at /prefix, `/prefix/v1/adapters`), and a check on the raw path would
    take an admin action for a read."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :] or "/"
    return path


def access_level(method: str, path: str) -> Access:
    """What a request needs: `admin` changes adapters, deletes a dataset or runs gc, `write`
    stores pairs, `read` is everything else that is not open (scoring, generation, image
    upload, listings)."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return "open"
    method = method.upper()
    if method in _READ_METHODS:
        return "read"
    if path == "/v1/adapters" or path.startswith("/v1/adapters/"):
        return "admin"
    if path.startswith("/v1/datasets"):
        return "admin" if method == "DELETE" else "write"
    if path.startswith("/v1/admin/"):
        return "admin"
    return "read"


class BearerAuthMiddleware:
    """Bearer-token auth with up to three keys (all optional; none set = no auth).

    - `api_key`: everything, except admin actions when an `admin_key` is set;
    - `read_key`: `read` requests only (scoring, generation, reads);
    - `admin_key`: everything.
    No token (or an unknown one) is a 401; a known token without the right is a 403.
    """

    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None,
        read_key: str | None = None,
        admin_key: str | None = None,
    ) -> None:
        self.app = app
        self.keys = {
            role: key.encode()
            for role, key in (("api", api_key), ("read", read_key), ("admin", admin_key))
            if key
        }

    def _role(self, token: bytes) -> str | None:
        role = None
        for name, key in self.keys.items():
            # compare_digest, and no early exit: the time taken tells nothing about the token.
            if hmac.compare_digest(token, key):
                role = name
        return role

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys and scope["type"] == "http":
            need = access_level(str(scope.get("method", "GET")), route_path(scope))
            if need != "open":
                self._check(Headers(scope=scope).get("authorization", ""), need)
        await self.app(scope, receive, send)

    def _check(self, header: str, need: Access) -> None:
        scheme, _, token = header.partition(" ")
        role = self._role(token.strip().encode()) if scheme.lower() == "bearer" else None
        if role is None:
            what = "missing" if not header else "invalid"
            raise UnauthorizedError(f"{what} bearer token", field="authorization")
        if role == "read" and need != "read":
            raise ForbiddenError(
                "the read-only key may score and read, not change stored data", "authorization"
            )
        if need == "admin" and role == "api" and "admin" in self.keys:
            raise ForbiddenError("this action needs the admin key", field="authorization")


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
