"""What a running app holds, in one place: `request.app.state.selfreward`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from fastapi import Request

from selfreward_vlm.service.errors import NotReadyError
from selfreward_vlm.service.http.metrics import Metrics

if TYPE_CHECKING:
    from selfreward_vlm.service.adapters.shared import SharedAdapters
    from selfreward_vlm.service.engine import Models
    from selfreward_vlm.service.engine.batcher import Batcher
    from selfreward_vlm.service.images.store import ImageStore
    from selfreward_vlm.service.settings import ServiceSettings
    from selfreward_vlm.service.store import Store

Phase = Literal["starting", "loading", "warming", "ready", "failed", "stopping"]


@dataclass
class AppState:
    settings: ServiceSettings
    images: ImageStore
    store: Store
    models: Models | None = None  # set by the lifespan once loaded and warmed
    batcher: Batcher | None = None
    metrics: Metrics = field(default_factory=Metrics)
    phase: Phase = "starting"  # what the lifespan is doing; /ready reports it
    error: str | None = None  # why loading failed, when phase == "failed"
    adapter_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one change at a time
    extra: dict[str, Any] = field(default_factory=dict)
    _shared: SharedAdapters | None = field(default=None, repr=False)

    @property
    def ready(self) -> bool:
        return self.models is not None and self.batcher is not None

    @property
    def shared_adapters(self) -> SharedAdapters | None:
        """The shared adapter registry's sync (service.adapters.shared), attached to the engine as
        soon as the models are ready; None before, or for models without adapters (fakes)."""
        adapters = getattr(getattr(self.models, "engine", None), "adapters", None)
        if self._shared is None and adapters is not None:
            from selfreward_vlm.service.adapters.shared import SharedAdapters

            root = self.settings.adapter_store or self.settings.data_dir / "adapter-store"
            self._shared = SharedAdapters(self.store, Path(root), adapters)
            self._shared.attach(local_root=self.settings.data_dir / "adapters")
        return self._shared

    def not_ready_error(self) -> NotReadyError:
        """The 503 to answer while the models are not serving, saying why."""
        if self.phase == "failed":
            return NotReadyError(f"model loading failed: {self.error}")
        return NotReadyError(f"models are not ready (state: {self.phase}); poll GET /ready")


def open_state(settings: ServiceSettings, metrics: Metrics | None = None) -> AppState:
    """Open the store (`settings.store`: SQLite under `settings.data_dir` unless it is a
    PostgreSQL URL; migrated on open); no models yet."""
    from selfreward_vlm.service.images.store import ImageStore
    from selfreward_vlm.service.images.urls import UrlPolicy
    from selfreward_vlm.service.store import open_store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(
        settings.store or settings.data_dir / "selfreward.db",
        timeout_s=settings.store_timeout_s,
        reconnect_s=settings.store_reconnect_s,
    )
    images = ImageStore(
        store,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        cache_size=settings.decoded_image_cache_size,
    )
    images.url_policy = UrlPolicy.from_settings(settings)
    state = AppState(settings, images, store, metrics=metrics or Metrics())
    return state


def get_state(request: Request) -> AppState:
    """FastAPI dependency: the app state (models may still be loading)."""
    return request.app.state.selfreward


async def get_ready_state(request: Request) -> AppState:
    """FastAPI dependency for endpoints that need the models: 503 until they are warm.

    A coroutine: a plain function dependency costs every request a hop to the thread pool
    and back (measured: `bench/bench_request_overhead.py --profile`)."""
    state: AppState = request.app.state.selfreward
    if not state.ready:
        raise state.not_ready_error()
    if state._shared is None:  # from the first request on, adapters follow the registry,
        await anyio.to_thread.run_sync(lambda: state.shared_adapters)  # which reads the store
    return state
