"""Micro-batching: concurrent requests meet in one bounded queue; one worker thread drains it in
batches (max size, max wait, token budget) and runs each batch's scoring work as one forward per
adapter. A full queue is a 429 with Retry-After, never an unbounded backlog.

Work whose caller went away (deadline passed, client disconnected: see `service.deadlines`) is
dropped when the worker meets it, before it costs a forward or a place in a batch. A generation
already running is stopped at its next forward step (a hook on the input embeddings, which
every decoding step calls), so an abandoned request does not keep the model busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from selfreward_vlm.core.schemas import Usage
from selfreward_vlm.service.deadlines import DeadlineExceededError, current_deadline
from selfreward_vlm.service.engine.decoding import GenerateItem, generate
from selfreward_vlm.service.engine.lm import ScoreItem
from selfreward_vlm.service.errors import (
    InvalidRequestError,
    NotReadyError,
    QueueFullError,
    ServiceError,
)

if TYPE_CHECKING:
    from selfreward_vlm.service.engine.loader import Models
    from selfreward_vlm.service.settings import ServiceSettings

log = logging.getLogger("selfreward.batcher")


class _Abandoned(ServiceError):
    """Raised inside a generation whose caller is gone; nobody reads it."""

    status_code = 499
    type = "client_closed_request"


@dataclass
class ClipItem:
    image_id: str | None
    image: Any
    texts: list[str]
    usage: Any


@dataclass
class Work:
    """One unit of queued work and its timings (for the x-queue/inference-time headers)."""

    item: ScoreItem | GenerateItem | ClipItem
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)
    deadline: float | None = None  # perf_counter value; None = no deadline
    abandoned: bool = False  # the caller stopped waiting (client gone or request cancelled)
    queue_s: float = 0.0
    infer_s: float = 0.0
    batch_size: int = 1

    @property
    def tokens(self) -> int:
        """Rough size for the batch token budget (characters / 4; exact counts need the
        tokenizer, which would put tokenization on the event loop)."""
        item = self.item
        if isinstance(item, ScoreItem):
            return sum(len(c) for c in item.continuations) // 4 + len(item.continuations)
        return 1


def check_encodable(item: ScoreItem | GenerateItem | ClipItem) -> None:
    """422 for text no tokenizer can take: JSON allows lone surrogates (`"\\ud800"`), UTF-8
    and the Rust tokenizers do not (they raised TypeError: a 500)."""
    fields: list[tuple[str, str]] = []
    if isinstance(item, ClipItem):
        fields = [(f"texts[{i}]", t) for i, t in enumerate(item.texts)]
    else:
        fields = [("prompt", item.prompt), ("prefix", item.prefix)]
        if isinstance(item, ScoreItem):
            fields += [(f"continuations[{i}]", t) for i, t in enumerate(item.continuations)]
    for name, text in fields:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidRequestError(
                f"{name} holds a lone surrogate ({e.object[e.start : e.end]!r} at {e.start}): "
                "not valid Unicode text",
                field=name,
            ) from None


class Batcher:
    """Runs model work on one thread; `await submit(item)` from the event loop."""

    def __init__(self, models: Models, settings: ServiceSettings, metrics: Any = None):
        self.models, self.settings, self.metrics = models, settings, metrics
        self.max_batch = 1 if settings.naive_mode else settings.max_batch_size
        self._queue: queue.Queue[Work | None] = queue.Queue(maxsize=settings.max_queue)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()  # the worker ends once the queue is empty
        self.batch_sizes: list[int] = []  # recent batch sizes, for /metrics and tests
        self.dropped = {"deadline": 0, "cancelled": 0}  # queued work dropped unrun

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="selfreward-batcher", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            # Wake an idle worker; never a blocking put on the event loop: with the queue full
            # the worker is busy, and it sees `_stopping` once it has emptied the queue.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    async def submit(self, item: ScoreItem | GenerateItem | ClipItem) -> tuple[Any, Work]:
        """Queue `item`; returns (result, work) once a batch has run it."""
        if self._thread is None:
            raise NotReadyError("the model worker is not running")
        check_encodable(item)
        work = Work(item, deadline=current_deadline.get())
        try:
            self._queue.put_nowait(work)
        except queue.Full:
            raise QueueFullError(
                f"the request queue is full ({self.settings.max_queue} waiting); retry later",
                retry_after=1.0,
            ) from None
        try:
            result = await asyncio.wrap_future(work.future)
        except asyncio.CancelledError:
            work.abandoned = True  # queued: never runs; running generation: stops next step
            raise
        return result, work

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.1 if self._stopping.is_set() else None)
            except queue.Empty:
                return  # stopping, and nothing is left to run
            if first is None:
                return
            if not self._claim(first):
                continue
            batch = [first]
            budget = self.settings.max_batch_tokens - first.tokens
            wait_until = time.perf_counter() + self.settings.max_wait_ms / 1000
            while len(batch) < self.max_batch and budget > 0:
                try:
                    nxt = self._queue.get(timeout=max(wait_until - time.perf_counter(), 0))
                except queue.Empty:
                    break
                if nxt is None:
                    with contextlib.suppress(queue.Full):  # else `_stopping` ends the loop
                        self._queue.put_nowait(None)
                    break
                if self._claim(nxt):
                    batch.append(nxt)
                    budget -= nxt.tokens
            try:
                self._run_batch(batch)
            except Exception as exc:  # a bug outside the per-item guards: without this the
                # thread died and every later request waited out its deadline while /ready said 200
                log.error("a batch failed; its requests get the error", exc_info=exc)
                for work in batch:
                    if not work.future.done():
                        work.future.set_exception(exc)

    def _claim(self, work: Work) -> bool:
        """Take `work` into a batch, unless its caller is gone (cancelled: the request was
        abandoned) or its deadline has passed; such work is dropped without running."""
        if not work.future.set_running_or_notify_cancel():
            self._note_drop("cancelled")
            return False
        if work.deadline is not None and time.perf_counter() >= work.deadline:
            self._note_drop("deadline")
            work.future.set_exception(
                DeadlineExceededError("the deadline passed while the request was queued")
            )
            return False
        return True

    def _note_drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        if self.metrics is not None:
            self.metrics.observe_dropped(reason)

    def _run_batch(self, batch: list[Work]) -> None:
        start = time.perf_counter()
        for work in batch:
            work.queue_s = start - work.enqueued
            work.batch_size = len(batch)
        by_adapter: dict[str, list[Work]] = defaultdict(list)
        outcomes: list[tuple[Work, Any, BaseException | None]] = []
        for work in batch:
            if isinstance(work.item, ScoreItem):
                by_adapter[work.item.adapter].append(work)
            else:
                outcomes.append(self._run_one(work))
        for works in by_adapter.values():
            outcomes.extend(self._run_scores(works))
        infer_s = time.perf_counter() - start
        # Timings first, answers second: a caller woken by its future reads `infer_s` at once
        # (setting it afterwards is how /v1/reward once reported 0.00 ms of inference).
        for work in batch:
            work.infer_s = infer_s
        for work, result, exc in outcomes:
            if exc is None:
                work.future.set_result(result)
            else:
                self._fail(work, exc)
        self.batch_sizes = [*self.batch_sizes[-999:], len(batch)]
        if self.metrics is not None:
            self.metrics.observe_batch(len(batch), batch[0].queue_s, infer_s)

    def _run_scores(self, works: list[Work]) -> list[tuple[Work, Any, BaseException | None]]:
        """One forward for all scoring work of an adapter; on failure, isolate the bad item.
        Returns (work, result, error) per item."""
        try:
            results = self.models.engine.score([w.item for w in works])  # type: ignore[misc]
        except Exception as exc:
            if len(works) == 1:
                return [(works[0], None, exc)]
            out = []
            for work in works:  # isolate the failing item; the others still get answers
                work.item.usage = Usage()  # type: ignore[union-attr]
                out.extend(self._run_scores([work]))
            return out
        return [(w, r, None) for w, r in zip(works, results, strict=True)]

    def _run_one(self, work: Work) -> tuple[Work, Any, BaseException | None]:
        item = work.item
        try:
            if isinstance(item, GenerateItem):
                with self._interruptible(work):
                    result: Any = generate(self.models.engine, item)
            else:
                assert isinstance(item, ClipItem) and self.models.clip is not None
                result = self.models.clip.cosines(item.image_id, item.image, item.texts, item.usage)
        except Exception as exc:
            return work, None, exc
        return work, result, None

    @contextlib.contextmanager
    def _interruptible(self, work: Work) -> Iterator[None]:
        """Stop `work`'s generation at the next forward once it is abandoned or late."""
        hf = getattr(self.models.engine, "hf", None)
        embeddings = hf.get_input_embeddings() if hf is not None else None
        if embeddings is None:
            yield
            return

        def check(_module: Any, _args: Any) -> None:
            if work.deadline is not None and time.perf_counter() >= work.deadline:
                self._note_drop("deadline")
                raise DeadlineExceededError("the deadline passed during generation")
            if work.abandoned:
                self._note_drop("cancelled")
                raise _Abandoned("the request was abandoned")

        handle = embeddings.register_forward_pre_hook(check)
        try:
            yield
        finally:
            handle.remove()

    @staticmethod
    def _fail(work: Work, exc: BaseException) -> None:
        if not isinstance(exc, ServiceError):
            log.error("model work failed", exc_info=exc)
        work.future.set_exception(exc)
