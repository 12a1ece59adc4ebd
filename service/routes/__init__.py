"""HTTP routes, one module per feature; `include_routers` mounts them all on an app."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


# The optional bearer token, as OpenAPI documents it. `service.http.auth`'s middleware enforces
# it before any route runs; a `Security(HTTPBearer())` dependency would document it the same way
# but parse the header again on every request, for nothing.
BEARER_SCHEME = {"HTTPBearer": {"type": "http", "scheme": "bearer",
                                "description": "SELFREWARD_API_KEY, if set"}}  # fmt: skip


def include_routers(app: FastAPI) -> None:
    """Mount every router; OpenAPI documents the bearer token on the routers behind it."""
    from selfreward_vlm.service import ui
    from selfreward_vlm.service.routes import (
        adapters,
        datasets,
        generate,
        health,
        images,
        openai_compat,
        openrlhf,
        retention,
        scoring,
    )

    # A request is matched against the routes in this order (FastAPI tries every route before
    # the one that matches: about 2.5 us each), so the hot paths come first: scoring and
    # generation, then the foreign protocols (thin translators onto the same serving layer).
    # No two routes here can match the same path, so the order changes nothing else.
    for module in (scoring, generate, openai_compat, openrlhf):
        _include_behind_token(app, module.router)
    app.include_router(health.router)
    for module in (images, datasets, adapters, retention):
        _include_behind_token(app, module.router)
    # The pair viewer: its page is open (it holds no data), its data calls are /v1 (token).
    _include_behind_token(app, ui.api_router)
    app.include_router(ui.page_router)
    _document_error_shape(app)


def _include_behind_token(app: FastAPI, router: APIRouter) -> None:
    """Mount `router`; each of its operations documents the bearer token (`security`)."""
    security: dict[str, Any] = {"security": [{name: [] for name in BEARER_SCHEME}]}
    for route in router.routes:  # FastAPI copies them, `openapi_extra` included, when mounted
        if isinstance(route, APIRoute):
            route.openapi_extra = {**(route.openapi_extra or {}), **security}
    app.include_router(router)


def _document_error_shape(app: FastAPI) -> None:
    """Make the OpenAPI document tell the truth about errors: FastAPI documents 422 as its own
    `HTTPValidationError`, but this service answers `ErrorResponse` (see `service.app`); and
    every route behind the bearer token may answer 401."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {})["securitySchemes"] = BEARER_SCHEME
        error = {"content": {"application/json": {"schema": _ERROR_REF}}}
        for operations in schema.get("paths", {}).values():
            for op in operations.values():
                responses = op.setdefault("responses", {})
                if "HTTPValidationError" in str(responses.get("422", "")):
                    responses["422"] = {"description": "Invalid request (names the field)", **error}
                if op.get("security"):
                    responses.setdefault("401", {"description": "Missing or wrong token", **error})
                    _document_guards(op, responses, error)
        components = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        for name, component in components.items():
            if name.startswith("Body_"):  # form bodies: routes refuse fields they do not name
                component["additionalProperties"] = False
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# What the request guards (service.http.auth, .deadlines, .drain, the batcher) may answer on any
# route behind the token, whatever its handler does: documented so clients and fuzzers know.
_GUARD_ANSWERS = {
    "403": "This key may not do this (read-only or non-admin key)",
    "404": "Unknown adapter, image, dataset or resource named in the request",
    "429": "The request queue is full (see Retry-After)",
    "503": "Not ready, shutting down, or the store is unavailable (see Retry-After)",
    "504": "The request's deadline passed (request_timeout_s or x-request-timeout-ms)",
}
_BODY_ANSWERS = {
    "400": "Malformed JSON body",
    "413": "Body (or image, or adapter) over the limit",
    "422": "Invalid request (names the field)",
    "507": "A disk of the service is full (`field` names it); nothing was written",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying (429; 503 when the service will be back)",
        "schema": {"type": "integer", "minimum": 1},
    }
}
# The foreign protocols' routes answer their own errors in OpenAI's shape (400 for what the
# native routes answer 422); the guards in front of them (401, 403, the body size, the drain)
# still answer in the service's.
_FOREIGN_TAGS = {"openai"}
_OPENAI_ERROR_REF = {"$ref": "#/components/schemas/OpenAIErrorResponse"}


def _document_guards(op: dict[str, Any], responses: dict[str, Any], error: dict) -> None:
    answers = {**_GUARD_ANSWERS, **(_BODY_ANSWERS if "requestBody" in op else {})}
    foreign = bool(_FOREIGN_TAGS & set(op.get("tags", ())))
    if foreign:
        answers.pop("422", None)
        either = {"anyOf": [_OPENAI_ERROR_REF, _ERROR_REF]}
        error = {"content": {"application/json": {"schema": either}}}
    for code, description in answers.items():
        responses.setdefault(code, {"description": description, **error})
    for code in ("429", "503"):
        responses[code].setdefault("headers", _RETRY_AFTER)
