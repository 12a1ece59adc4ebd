"""Probes and introspection: /health, /ready, /metrics, /info (open even with an API key)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
from typing import Literal

import anyio
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from selfreward_vlm.core.schemas import ErrorResponse, InfoResponse, ModelInfo
from selfreward_vlm.service.errors import ServiceError
from selfreward_vlm.service.http.metrics import PROMETHEUS_CONTENT_TYPE
from selfreward_vlm.service.serving.completions import PROMPT_FORMATS
from selfreward_vlm.service.serving.models import served_names
from selfreward_vlm.service.state import AppState, get_ready_state, get_state

router = APIRouter(tags=["health"])

_LIMITS = (
    "max_body_bytes",
    "max_image_bytes",
    "max_image_pixels",
    "max_items",
    "max_text_tokens",
    "max_new_tokens",
    "max_adapter_bytes",
    "max_pairs_per_request",
    "max_live_rows",
    "max_batch_size",
    "max_wait_ms",
    "max_batch_tokens",
    "max_queue",
)


class ServedModelInfo(ModelInfo):
    """`ModelInfo` plus how the service runs the policy and what CLIP's scale is."""

    family: str | None = Field(
        None, description="family module (llava, llava_next, qwen_vl, idefics3, gemma3, text, "
        "generic), picked by the model's config.model_type"
    )  # fmt: skip
    path: str | None = Field(
        None, description="'fast' (family module: cached image features and prefix KV) or "
        "'generic' (the model's own full forward for every score)"
    )  # fmt: skip
    clip_logit_scale: float | None = Field(
        None, description="the CLIP model's learned logit scale (exp), a guide for `scale`"
    )
    decode_batching: str | None = Field(
        None,
        description="'continuous (mixed|grouped adapters)': live generations advance in one "
        "decoder forward per step; 'isolated': each generation's step is its own forward "
        "(decode_batching=isolated, naive mode, or the generic path)",
    )


class OpenAIInfo(BaseModel):
    """How the OpenAI-compatible routes read a request."""

    served_model_names: list[str] = Field(
        description="names `model` may take for the base model (besides 'base' and adapters)"
    )
    completions_prompt: str = Field(description="how /v1/completions reads a prompt")


class ServedInfoResponse(InfoResponse):
    model: ServedModelInfo
    openai: OpenAIInfo | None = None


# Distribution names whose versions /info reports (read from metadata: no torch import here).
_DISTRIBUTIONS = ("selfreward-vlm", "torch", "transformers", "open_clip_torch", "peft", "fastapi")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class StoreHealthInfo(BaseModel):
    """How the store answered lately (service.store.faults)."""

    state: Literal["ok", "unavailable", "full"] = Field(
        ..., description="ok; unavailable (503 store_unavailable); full (507 on writes)"
    )
    since: float = Field(..., description="unix time the state last changed")
    where: str = Field(..., description="the store, without secrets")
    last_error: str | None = None
    last_error_at: float | None = None
    errors: dict[str, int] = Field(default_factory=dict, description="store errors by kind")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    store: StoreHealthInfo


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    store: Literal["ok", "unavailable", "full"] = Field(
        ..., description="the store's state; /ready stays 200 while the store is down (see "
        "README, Reliability): routes that need the store answer 503 store_unavailable"
    )  # fmt: skip


_PING_S = 0.5  # /health waits this long at most for the store


@router.get("/health", response_model=HealthResponse, summary="Liveness, and the store's state")
async def health(state: AppState = Depends(get_state)) -> HealthResponse:
    """Always 200 while the process serves HTTP, even while models load or after they failed,
    and while the store is down (a restart would not bring it back). `store` says how the
    store answers: one round trip, bounded by 0.5 s, made in a worker thread."""
    store = state.store
    with contextlib.suppress(ServiceError):  # recorded in store.health by the ping
        await anyio.to_thread.run_sync(store.ping, _PING_S)
    return HealthResponse(status="ok", store=StoreHealthInfo(**store.health.report()))


@router.get(
    "/ready",
    response_model=ReadyResponse,
    summary="Readiness: models loaded and warm",
    responses={503: {"model": ErrorResponse, "description": "loading, or loading failed"}},
)
async def ready(state: AppState = Depends(get_state)) -> ReadyResponse:
    """200 once the models are loaded, warmed and the batcher runs; 503 (saying why) before.

    A store outage does not turn it to 503: replicas share the store, so taking them all out
    of rotation would also stop what works without it (scoring, generation); `store` says
    the state the last store call found."""
    if not state.ready:
        raise state.not_ready_error()
    return ReadyResponse(status="ready", store=state.store.health.state)  # type: ignore[arg-type]


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {PROMETHEUS_CONTENT_TYPE: {}}}},
)
async def metrics(state: AppState = Depends(get_state)) -> Response:
    """Prometheus text exposition of this app's registry."""
    return Response(state.metrics.exposition(), media_type=PROMETHEUS_CONTENT_TYPE)


@router.get(
    "/info",
    response_model=ServedInfoResponse,
    summary="Models, adapters, limits and versions",
    responses={503: {"model": ErrorResponse}},
)
def info(state: AppState = Depends(get_ready_state)) -> ServedInfoResponse:
    """What this service serves and the limits a client must respect."""
    models = state.models
    assert models is not None  # get_ready_state
    settings = state.settings
    versions = {"python": platform.python_version()}
    versions.update({dist: _version(dist) for dist in _DISTRIBUTIONS})
    served: dict[str, object] = getattr(models, "served_info", dict)()  # fakes lack it
    return ServedInfoResponse(
        version=versions["selfreward-vlm"].replace("not installed", "0+unknown"),
        model=ServedModelInfo(**models.info().model_dump(), **served),
        adapters=list(models.engine.adapters.names()),
        limits={name: getattr(settings, name) for name in _LIMITS},
        adapter_versions=state.shared_adapters.versions() if state.shared_adapters else {},
        naive_mode=settings.naive_mode,
        versions=versions,
        openai=OpenAIInfo(
            served_model_names=served_names(state), completions_prompt=PROMPT_FORMATS
        ),
    )
