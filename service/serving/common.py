"""What every serving function shares: item limits, image references, usage and timings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio

from selfreward_vlm.core.schemas import ImageRef, Usage
from selfreward_vlm.service.engine.batcher import Work
from selfreward_vlm.service.errors import InvalidRequestError
from selfreward_vlm.service.state import AppState

T = TypeVar("T")


@dataclass
class Served(Generic[T]):
    """A serving function's answer: the response body and the batcher work that produced it
        (the routes turn `works` into the x-queue-time-ms / x-inference-time-ms headers), and its
    usage."""

    body: T
    works: list[Work] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


def check_items(state: AppState, items: list[Any], field: str) -> None:
    """422 when a request carries more items than `max_items`."""
    limit = state.settings.max_items
    if len(items) > limit:
        raise InvalidRequestError(f"{len(items)} {field} given; at most {limit}", field=field)


async def resolve_image(
    state: AppState, ref: ImageRef | None, for_policy: bool = True, field: str = "image"
) -> tuple[str | None, Any]:
    """(id, PIL image) of an image reference; (None, None) when there is none. Images for the
    policy need a VLM; CLIP (`for_policy=False`) takes them whatever the policy model is."""
    if ref is None:
        return None, None
    if for_policy and state.models is not None and state.models.engine.kind != "vlm":
        raise InvalidRequestError("this model is text-only; omit 'image'", field=field)
    return await anyio.to_thread.run_sync(state.images.resolve, ref, field)


def total_usage(*usages: Usage) -> Usage:
    out = Usage()
    for u in usages:
        for name in Usage.model_fields:
            setattr(out, name, getattr(out, name) + getattr(u, name))
    return out


def record(state: AppState, usage: Usage) -> Usage:
    """Count `usage` in /metrics; returns it."""
    metrics = getattr(state, "metrics", None)
    if metrics is not None:
        metrics.add_usage(usage)
    return usage
