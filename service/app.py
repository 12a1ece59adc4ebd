"""The FastAPI app: `build_app(settings)`; models load in the lifespan, nothing at import time.

Error handling lives here, in one place: every `ServiceError`, FastAPI's validation errors,
Starlette's HTTP errors (404, 405) and any unexpected exception leave as
`{"error": {"type", "message", "field"}}` with the right status.

Reliability (see README "Reliability"): every request runs under a deadline and is cancelled
when its client hangs up (`service.deadlines`); SIGTERM drains before stopping
(`service.http.drain`); 429/503 carry `Retry-After`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from selfreward_vlm.service.deadlines import DeadlineMiddleware
from selfreward_vlm.service.errors import (
    ServiceError,
    UnauthorizedError,
)
from selfreward_vlm.service.http.auth import BearerAuthMiddleware, BodyLimitMiddleware
from selfreward_vlm.service.http.drain import Drain, DrainMiddleware, ShuttingDownError
from selfreward_vlm.service.http.metrics import Metrics, RequestTimingMiddleware
from selfreward_vlm.service.settings import ServiceSettings
from selfreward_vlm.service.state import AppState, open_state

if TYPE_CHECKING:
    from selfreward_vlm.service.engine import Models

logger = logging.getLogger(__name__)

API_VERSION = "1.0.0"  # the wire contract's version (openapi `info.version`)
_MULTIPART_OVERHEAD = 2**20  # form boundaries and headers around an adapter upload

# Called as `factory(models, settings, metrics=metrics)`; must offer `async start()`/`stop()`.
BatcherFactory = Callable[..., Any]


def build_app(
    settings: ServiceSettings,
    models: Models | None = None,
    *,
    batcher_factory: BatcherFactory | None = None,
) -> FastAPI:
    """Build the service app.

    `models` skips loading (tests inject tiny or fake models); `batcher_factory(models,
    settings, metrics=...)` replaces `service.engine.batcher.Batcher` (tests use a fake).
    """
    from selfreward_vlm.service.routes import include_routers

    metrics = Metrics()
    drain = Drain(lambda: settings.drain_timeout_s, lambda: settings.drain_grace_s)
    app = FastAPI(
        title="selfreward",
        version=API_VERSION,
        summary="Reward scoring for self-rewarding VLM preference optimization (CSR, SBSPO)",
        lifespan=_make_lifespan(settings, models, batcher_factory, metrics, drain),
    )
    app.state.drain = drain  # `selfreward serve` hands it the listening sockets
    include_routers(app)
    _add_exception_handlers(app)

    def body_limit(scope: Scope) -> int:
        if scope.get("method") == "POST" and scope.get("path") == "/v1/adapters":
            return max(settings.max_body_bytes, settings.max_adapter_bytes + _MULTIPART_OVERHEAD)
        return settings.max_body_bytes

    # add_middleware prepends: the last added runs first (outermost). Order, outside in:
    # timing (catches everything) > drain (counts in-flight) > deadline > auth > body limit.
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit)
    app.add_middleware(
        BearerAuthMiddleware,
        api_key=settings.api_key,
        read_key=settings.read_key,
        admin_key=settings.admin_key,
    )
    app.add_middleware(
        DeadlineMiddleware,
        timeout_s=lambda: settings.request_timeout_s,
        on_abandon=metrics.observe_abandoned,
        body_timeout_s=lambda: settings.body_timeout_s,
    )
    app.add_middleware(DrainMiddleware, drain=drain)
    app.add_middleware(RequestTimingMiddleware, metrics=metrics, render_error=render)
    return app


# --------------------------------------------------------------------------- lifespan


def _make_lifespan(
    settings: ServiceSettings,
    models: Models | None,
    batcher_factory: BatcherFactory | None,
    metrics: Metrics,
    drain: Drain,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = open_state(settings, metrics)
        app.state.selfreward = state
        _count_store_errors(state, metrics)
        drain.on_begin = lambda: metrics.set_ready(False)
        drain.install()
        task: asyncio.Task[None] | None = None
        if models is not None:  # injected: nothing slow to wait for, be ready on entry
            await _bring_up(state, models, batcher_factory)
        else:  # load in the background so /health answers (and /ready says why) meanwhile
            task = asyncio.create_task(_bring_up(state, None, batcher_factory))
        try:
            yield
        finally:
            state.phase = "stopping"
            metrics.set_ready(False)
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.batcher is not None:
                await state.batcher.stop()
            state.store.close()
            drain.uninstall()
            logger.info("stopped: batcher stopped, pair store closed")

    return lifespan


def _count_store_errors(state: AppState, metrics: Metrics) -> None:
    """`selfreward_store_errors_total{kind}`: store calls answered 503 or 507 (store.faults)."""
    from prometheus_client import Counter

    counter = Counter(
        "selfreward_store_errors",
        "Store calls that failed, by kind (connection, shutdown, pool_timeout, conflict, busy, "
        "io_error, resources, disk_full)",
        ["kind"],
        registry=metrics.registry,
    )
    state.store.health.on_error = lambda kind: counter.labels(kind=kind).inc()


def _follow_context_length(settings: ServiceSettings, models: Models) -> None:
    """Unless the operator set `max_text_tokens`, make it the model's context length (a
    long-context model gets its whole window, a short one no promise it cannot keep)."""
    if "max_text_tokens" in settings.model_fields_set:
        return
    config = getattr(getattr(models.engine, "hf", None), "config", None)
    if config is None:  # a fake model (tests): nothing to follow
        return
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    names = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
    length = next((getattr(text, n) for n in names if isinstance(getattr(text, n, None), int)), 0)
    if length > 0:
        own = getattr(models, "settings", settings)
        for target in {id(settings): settings, id(own): own}.values():
            target.max_text_tokens = length


async def _bring_up(
    state: AppState, models: Models | None, batcher_factory: BatcherFactory | None
) -> None:
    """Load (unless injected), warm up, start the batcher, reload uploaded adapters; only
    then publish the models, which is what turns /ready to 200. A failure is logged and kept
    for /ready; /health stays up."""
    from selfreward_vlm.service.routes.adapters import reload_uploaded_adapters

    settings = state.settings
    batcher = None
    try:
        if models is None:
            state.phase = "loading"
            from selfreward_vlm.service.engine import load_models

            models = await anyio.to_thread.run_sync(load_models, settings, abandon_on_cancel=True)
        _follow_context_length(settings, models)
        if settings.warmup:
            state.phase = "warming"
            await anyio.to_thread.run_sync(models.warmup, abandon_on_cancel=True)
        if batcher_factory is None:
            from selfreward_vlm.service.engine.batcher import Batcher

            batcher_factory = Batcher
        batcher = batcher_factory(models, settings, metrics=state.metrics)
        await batcher.start()
        await reload_uploaded_adapters(models, settings)
    except asyncio.CancelledError:
        if batcher is not None:
            await batcher.stop()
        raise
    except Exception as exc:
        logger.exception("loading the models failed; /ready will answer 503")
        state.phase, state.error = "failed", f"{type(exc).__name__}: {exc}"
        if batcher is not None:
            await batcher.stop()
        return
    state.models, state.batcher, state.phase = models, batcher, "ready"
    state.metrics.set_ready(True)
    logger.info("models ready: %s", settings.model)


# --------------------------------------------------------------------------- errors


def error_response(
    status: int,
    type_: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The service's one error shape."""
    body = {"error": {"type": type_, "message": message, "field": field}}
    return JSONResponse(body, status_code=status, headers=headers)


def service_error_response(exc: ServiceError) -> JSONResponse:
    headers: dict[str, str] = {}
    if exc.retry_after is not None:  # 429 queue_full, 503 not_ready / store_unavailable
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, ShuttingDownError):
        headers["Connection"] = "close"  # this server is going away: reconnect elsewhere
    if isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(exc.status_code, exc.type, exc.message, exc.field, headers or None)


def render(exc: Exception, request_id: str) -> JSONResponse:
    """Render an exception that escaped every handler (used by the timing middleware)."""
    if isinstance(exc, ServiceError):
        return service_error_response(exc)
    return error_response(500, "internal_error", f"internal server error (request {request_id})")


def _field_of(loc: tuple[Any, ...]) -> str | None:
    """`('body', 'pairs', 0, 'id')` -> `pairs.0.id`; `('query', 'limit')` -> `limit`."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:] or parts
    return ".".join(parts) or None


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    for err in errors:
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "JSON decode error")
            where = err["loc"][1] if len(err["loc"]) > 1 else "?"
            return error_response(
                400, "invalid_json", f"malformed JSON body: {detail} (at {where})", "body"
            )
    if not errors:
        return error_response(422, "invalid_request", "invalid request")
    shown = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return error_response(
        422, "invalid_request", "; ".join(shown) + more, _field_of(tuple(errors[0]["loc"]))
    )


_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404 and exc.detail == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    headers = exc.headers
    if status == 405:  # Starlette names the first matching route's methods only
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return error_response(
        status, _HTTP_TYPES.get(status, f"http_{status}"), message, headers=headers
    )


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of this app serves at the request's path (asked of the
    router itself, method by method: included routers nest their routes)."""
    from starlette.routing import Match

    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
    ]


async def _on_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return service_error_response(exc)


def _add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
