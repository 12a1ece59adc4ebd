"""Prometheus metrics of one app, in its own `CollectorRegistry`.

A per-app registry (not prometheus-client's global one) lets several apps live in one process,
as they do in the tests. Names follow TEI's router: request totals, then the total / queue /
inference histograms, the batch-size histogram and the token counters that `usage` reports.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from selfreward_vlm.core.schemas import Usage
from selfreward_vlm.service.errors import ServiceError

logger = logging.getLogger(__name__)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Seconds: 0.5 ms .. 60 s, dense where a tiny or a warm request lands.
_TIME_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_ROW_BUCKETS = (1, 2, 5, 10, 20, 40, 80, 160, 320, 640)

PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The service's metrics. The HTTP layer records requests; the engine calls
    `observe_batch` once per forward batch and routes call `add_usage` once per response."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "selfreward_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "selfreward_request_duration_seconds",
            "Total time of a request, from its arrival to the end of its response",
            ["route"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "selfreward_queue_duration_seconds",
            "Time a work item waited in the batching queue",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "selfreward_inference_duration_seconds",
            "Time of one batched forward / generation",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "selfreward_batch_size",
            "Work items merged into one forward",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.live_rows = Gauge(
            "selfreward_live_rows", "Decoder rows of the live generations", registry=r
        )
        self.live_generations = Gauge(
            "selfreward_live_generations", "Generations being decoded right now", registry=r
        )
        self.step_rows = Histogram(
            "selfreward_decode_step_rows",
            "Rows (beams, samples of all live generations) one decode step forwards",
            buckets=_ROW_BUCKETS,
            registry=r,
        )
        self.step_duration = Histogram(
            "selfreward_decode_step_duration_seconds",
            "Time of one decode step over all live generations",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.worker_seconds = Counter(
            "selfreward_worker_busy_seconds",
            "Time the model worker spent on scoring batches, prefills and decode steps",
            ["phase"],
            registry=r,
        )
        # the children looked up once: the worker adds to them every iteration
        self._busy = [self.worker_seconds.labels(phase=p) for p in ("scoring", "prefill", "decode")]
        self.tokens_scored = Counter(
            "selfreward_tokens_scored", "Tokens whose log-prob a response reported", registry=r
        )
        self.tokens_forwarded = Counter(
            "selfreward_tokens_forwarded", "Tokens pushed through the language model", registry=r
        )
        self.tokens_cached = Counter(
            "selfreward_tokens_cached", "Tokens served from the prefix KV cache", registry=r
        )
        self.image_cache_hits = Counter(
            "selfreward_image_cache_hits", "Image encodings served from cache", registry=r
        )
        self.image_encodes = Counter(
            "selfreward_image_encodes", "Images encoded by the vision tower or CLIP", registry=r
        )
        self.ready = Gauge("selfreward_ready", "1 once the models are loaded and warm", registry=r)
        self.dropped = Counter(
            "selfreward_work_dropped",
            "Work dropped unrun or stopped mid-generation: its request was cancelled or its "
            "deadline passed",
            ["reason"],
            registry=r,
        )
        self.abandoned = Counter(
            "selfreward_requests_abandoned",
            "Requests cut short: deadline (answered 504) or client disconnect (no answer)",
            ["reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "selfreward_requests_in_flight", "Requests being served right now", registry=r
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished HTTP request (called by the timing middleware)."""
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.request_duration.labels(route=route).observe(seconds)

    def observe_batch(self, size: int, queue_s: float, infer_s: float) -> None:
        """Record one batch: its size, how long its oldest item queued, its forward time."""
        self.batch_size.observe(size)
        self.queue_duration.observe(max(queue_s, 0.0))
        self.inference_duration.observe(max(infer_s, 0.0))

    def observe_worker(self, scoring_s: float, prefill_s: float, decode_s: float) -> None:
        """One scheduler iteration's busy time, by phase."""
        for child, seconds in zip(self._busy, (scoring_s, prefill_s, decode_s), strict=True):
            if seconds > 0:
                child.inc(seconds)

    def observe_step(self, generations: int, rows: int, seconds: float, live_rows: int) -> None:
        """Record one decode step: how many generations and rows it advanced, its time, and
        the rows still live after it."""
        self.step_rows.observe(rows)
        self.step_duration.observe(max(seconds, 0.0))
        self.live_generations.set(generations)
        self.live_rows.set(live_rows)

    def add_usage(self, usage: Usage) -> None:
        """Add one response's `usage` to the token and image-cache counters."""
        self.tokens_scored.inc(max(usage.tokens_scored, 0))
        self.tokens_forwarded.inc(max(usage.tokens_forwarded, 0))
        self.tokens_cached.inc(max(usage.tokens_cached, 0))
        self.image_cache_hits.inc(max(usage.image_cache_hits, 0))
        self.image_encodes.inc(max(usage.image_encodes, 0))

    def observe_dropped(self, reason: str) -> None:
        """Queued work the batcher dropped without running it (`cancelled` or `deadline`)."""
        self.dropped.labels(reason=reason).inc()

    def observe_abandoned(self, reason: str) -> None:
        """A request cut short by its deadline or by its client hanging up."""
        self.abandoned.labels(reason=reason).inc()

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1.0 if ready else 0.0)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric in this registry."""
        return generate_latest(self.registry)


class RequestTimingMiddleware:
    """Outermost guard: request id, `x-total-time-ms`, request metrics, and the catch-all.

    Any exception that escapes the app (or the guards inside this middleware) becomes a JSON
    error via `render_error` rather than reaching the server: a `ServiceError` keeps its status,
    anything else is a 500 `internal_error`, logged with its traceback and request id.
    """

    def __init__(
        self, app: ASGIApp, metrics: Metrics, render_error: Callable[[Exception, str], Response]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.render_error = render_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500
        started = False

        async def timed_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                headers["x-total-time-ms"] = f"{(time.perf_counter() - start) * 1000:.2f}"
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception as exc:
            if not isinstance(exc, ServiceError):
                logger.exception(
                    "unhandled error in %s %s (request %s)",
                    scope.get("method"),
                    scope.get("path"),
                    request_id,
                )
            if started:
                return  # the response is half sent: nothing better to do than end it
            await self.render_error(exc, request_id)(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                template, str(scope.get("method", "")), status, time.perf_counter() - start
            )
