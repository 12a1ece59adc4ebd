"""The scheduler: one worker thread runs all model work, in iterations of
(scoring batch, admissions, one decode step).

- Scoring work (log-probs, rewards, CLIP) meets in one bounded queue; each iteration takes what
  has queued (max size, token budget) and runs it as one forward per adapter.
- Generations join at a step boundary: their prefill runs between two steps (a token budget per
  step bounds it), within a budget of live rows (`max_live_rows`) and KV bytes; beyond it they
  wait, beyond the queue they get a 429 with Retry-After.
- Every live generation then advances one token in ONE decoder forward over the rows of all of
  them (`ragged.decode_step`; continuous batching as vLLM and TGI do it); a finished one is
  answered at once. `decode_batching="isolated"` runs each generation's step as its own forward
  instead (numbers independent of the neighbours), and the generic path always does.
- An out-of-memory step is retried split in halves; a failing one fails only its generation.

Work whose caller went away (deadline passed, client disconnected: see `service.deadlines`) is
dropped when the worker meets it, before it costs a forward; a live generation is dropped at
its next step, without disturbing the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from selfreward_vlm.core.schemas import Usage
from selfreward_vlm.service.deadlines import DeadlineExceededError, current_deadline
from selfreward_vlm.service.engine.decoding import GenerateItem, Generation
from selfreward_vlm.service.engine.lm import ScoreItem
from selfreward_vlm.service.engine.ragged import decode_step
from selfreward_vlm.service.engine.raw_text import TextScoreItem, score_text
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
GIL_SWITCH_INTERVAL_S = 0.0005


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

    item: ScoreItem | GenerateItem | ClipItem | TextScoreItem
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)
    deadline: float | None = None  # perf_counter value; None = no deadline
    abandoned: bool = False  # the caller stopped waiting (client gone or request cancelled)
    queue_s: float = 0.0
    infer_s: float = 0.0
    batch_size: int = 1  # requests sharing its forward (the most, for a generation)
    started: float = 0.0  # perf_counter when it left the queue for the model

    @property
    def tokens(self) -> int:
        """Rough size for the batch token budget (characters / 4; exact counts need the
        tokenizer, which would put tokenization on the event loop)."""
        item = self.item
        if isinstance(item, ScoreItem):
            return sum(len(c) for c in item.continuations) // 4 + len(item.continuations)
        if isinstance(item, TextScoreItem):
            return len(item.ids)
        return 1


def check_encodable(item: ScoreItem | GenerateItem | ClipItem | TextScoreItem) -> None:
    """422 for text no tokenizer can take: JSON allows lone surrogates (`"\\ud800"`), UTF-8
    and the Rust tokenizers do not (they raised TypeError: a 500)."""
    fields: list[tuple[str, str]] = []
    if isinstance(item, TextScoreItem):
        return  # token ids: tokenized already
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
        self._stopping = threading.Event()  # the worker ends once all work is done
        self._waiting: deque[Work] = deque()  # generations taken from the queue, not yet live
        self._live: list[tuple[Work, Generation]] = []
        self._prefilling: list[tuple[Work, Generation]] = []  # prompts forwarded in chunks
        self._kv_budget: int | None = None  # bytes; None: no byte limit
        self.batch_sizes: list[int] = []  # recent scoring batch sizes, for /metrics and tests
        self.step_rows: list[int] = []  # recent decode steps' row counts
        self.dropped = {"deadline": 0, "cancelled": 0}  # work dropped unrun or mid-generation
        # the worker's busy seconds by phase (the benchmark's split of where the time goes)
        self.seconds = {"scoring": 0.0, "prefill": 0.0, "decode": 0.0}

    async def start(self) -> None:
        # The worker runs Python between torch ops while holding the GIL; at CPython's default
        # 5 ms switch interval the event loop thread (parsing, answering) waited that long for
        # it each time. A shorter interval hands it over sooner (measured: README, Performance).
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._kv_budget = self._kv_bytes_budget()
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

    async def submit(
        self, item: ScoreItem | GenerateItem | ClipItem | TextScoreItem
    ) -> tuple[Any, Work]:
        """Queue `item`; returns (result, work) once the model has run it."""
        if self._thread is None:
            raise NotReadyError("the model worker is not running")
        check_encodable(item)
        work = Work(item, deadline=current_deadline.get())
        try:
            if self._queue.qsize() + len(self._waiting) >= self.settings.max_queue:
                raise queue.Full
            self._queue.put_nowait(work)
        except queue.Full:
            raise QueueFullError(
                f"the request queue is full ({self.settings.max_queue} waiting); retry later",
                retry_after=1.0,
            ) from None
        try:
            result = await asyncio.wrap_future(work.future)
        except asyncio.CancelledError:
            work.abandoned = True  # queued: never runs; live generation: dropped next step
            raise
        return result, work

    @property
    def _continuous(self) -> bool:
        """Whether generations share decode steps (see `ServiceSettings.decode_batching`)."""
        return self.settings.decode_batching == "continuous" and not self.settings.naive_mode

    @property
    def live_rows(self) -> int:
        """Rows the live generations' next step forwards."""
        return sum(gen.live_rows for _, gen in self._live)

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        while True:
            busy = bool(self._live or self._waiting or self._prefilling)
            try:
                batch = self._take(block=not busy)
            except _Stop:
                return
            try:
                t0 = time.perf_counter()
                if batch:
                    self._run_batch(batch)
                t1 = time.perf_counter()
                self._admit()
                t2 = time.perf_counter()
                if self._live:
                    self._step()
                t3 = time.perf_counter()
                seconds = self.seconds
                seconds["scoring"] += t1 - t0
                seconds["prefill"] += t2 - t1
                seconds["decode"] += t3 - t2
                if self.metrics is not None:
                    self.metrics.observe_worker(t1 - t0, t2 - t1, t3 - t2)
            except Exception as exc:  # a bug outside the per-item guards: without this the
                # thread died and every later request waited out its deadline while /ready said 200
                log.error("a scheduler iteration failed; its requests get the error", exc_info=exc)
                for work in [*batch, *(w for w, _ in (*self._live, *self._prefilling))]:
                    if not work.future.done():
                        work.future.set_exception(exc)
                self._live, self._prefilling = [], []

    def _take(self, block: bool) -> list[Work]:
        """Scoring work that has queued (generations go to `_waiting`). Blocks for the first
        item only when there is nothing else to do; raises `_Stop` when stopped and idle."""
        batch: list[Work] = []
        budget = self.settings.max_batch_tokens
        wait_until: float | None = None
        while len(batch) < self.max_batch and budget > 0:
            try:
                if block:
                    timeout = 0.1 if self._stopping.is_set() else None
                    nxt = self._queue.get(timeout=timeout)
                elif wait_until is not None:
                    nxt = self._queue.get(timeout=max(wait_until - time.perf_counter(), 0))
                else:
                    nxt = self._queue.get_nowait()
            except queue.Empty:
                if block:  # stopping, and nothing is left to run
                    raise _Stop from None
                break
            if nxt is None:
                if block:
                    raise _Stop
                with contextlib.suppress(queue.Full):  # for the idle loop to see
                    self._queue.put_nowait(None)
                break
            if not self._claim(nxt):
                continue
            block = False
            if wait_until is None and self.settings.max_wait_ms > 0 and not self._live:
                wait_until = time.perf_counter() + self.settings.max_wait_ms / 1000
            if isinstance(nxt.item, GenerateItem):
                self._waiting.append(nxt)
            else:
                batch.append(nxt)
                budget -= nxt.tokens
        return batch

    def _claim(self, work: Work) -> bool:
        """Take `work` for the model, unless its caller is gone (cancelled: the request was
        abandoned) or its deadline has passed; such work is dropped without running."""
        if not work.future.set_running_or_notify_cancel():
            self._note_drop("cancelled")
            return False
        return not self._late(work, "the deadline passed while the request was queued")

    def _late(self, work: Work, message: str) -> bool:
        """Fail `work` if its deadline has passed (True), else False."""
        if work.deadline is not None and time.perf_counter() >= work.deadline:
            self._note_drop("deadline")
            work.future.set_exception(DeadlineExceededError(message))
            return True
        return False

    def _note_drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        if self.metrics is not None:
            self.metrics.observe_dropped(reason)

    # ------------------------------------------------------------------ scoring

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
            elif isinstance(work.item, TextScoreItem):
                outcomes.append(self._run_text(work))
            else:
                outcomes.append(self._run_clip(work))
        for works in by_adapter.values():
            outcomes.extend(self._run_scores(works))
        infer_s = time.perf_counter() - start
        # Timings first, answers second: a caller woken by its future reads `infer_s` at once
        # (setting it afterwards is how /v1/reward once reported 0.00 ms of inference).
        for work in batch:
            work.infer_s = infer_s
        # Bookkeeping before the answers: after them, this thread would hold the GIL through it
        # while the event loop waits to send the first answer.
        self.batch_sizes = [*self.batch_sizes[-999:], len(batch)]
        if self.metrics is not None:
            self.metrics.observe_batch(len(batch), batch[0].queue_s, infer_s)
        for work, result, exc in outcomes:
            if exc is None:
                work.future.set_result(result)
            else:
                self._fail(work, exc)

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

    def _run_text(self, work: Work) -> tuple[Work, Any, BaseException | None]:
        assert isinstance(work.item, TextScoreItem)
        try:
            return work, score_text(self.models.engine, work.item), None  # type: ignore[arg-type]
        except Exception as exc:
            return work, None, exc

    def _run_clip(self, work: Work) -> tuple[Work, Any, BaseException | None]:
        item = work.item
        assert isinstance(item, ClipItem) and self.models.clip is not None
        try:
            result = self.models.clip.cosines(item.image_id, item.image, item.texts, item.usage)
        except Exception as exc:
            return work, None, exc
        return work, result, None

    # ------------------------------------------------------------------ generation

    def _kv_bytes_budget(self) -> int | None:
        """The live generations' KV byte budget (see `ServiceSettings.kv_cache_bytes`)."""
        if self.settings.kv_cache_bytes:
            return self.settings.kv_cache_bytes
        device = getattr(self.models.engine, "device", None)
        if device is not None and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return int(free * self.settings.kv_cache_memory_fraction)
        return None

    def _admit(self) -> None:
        """Prefill within `max_prefill_tokens_per_step` per iteration: first the generations
        already prefilling, then waiting ones, while the row and KV budgets allow; at least
        one joins when none is live, so any request can run. In continuous mode a long prompt
        is forwarded in chunks over several iterations (`Prefill`), so the running
        generations take a step between two chunks; isolated mode prefills whole."""
        budget = self.settings.max_prefill_tokens_per_step
        prefilled = 0
        rows = sum(item_rows(gen.item) for _, gen in (*self._live, *self._prefilling))
        prefilling, self._prefilling = self._prefilling, []
        for work, gen in prefilling:
            if self._dropped(work, "the deadline passed while the prompt was prefilled"):
                continue
            if prefilled >= budget:
                self._prefilling.append((work, gen))
                continue
            prefilled += self._prefill(work, gen, budget - prefilled)
        while self._waiting and prefilled < budget:
            work = self._waiting[0]
            item = work.item
            assert isinstance(item, GenerateItem)
            busy = self._live or self._prefilling
            if busy and rows + item_rows(item) > self.settings.max_live_rows:
                break
            self._waiting.popleft()
            if self._dropped(work, "the deadline passed while the request was queued"):
                continue
            work.started = time.perf_counter()
            work.queue_s = work.started - work.enqueued
            chunk = budget - prefilled if self._continuous else None
            before = item.usage.tokens_forwarded
            try:
                with self._model_for(item):
                    gen = Generation(engine=self.models.engine, item=item,
                                     batched=self._continuous, prefill_chunk=chunk)  # fmt: skip
            except Exception as exc:
                self._finish(work, None, exc)
                continue
            prefilled += item.usage.tokens_forwarded - before
            rows += item_rows(item)
            if gen.prefilling:
                self._prefilling.append((work, gen))
            elif not self._join(work, gen):
                break

    @contextlib.contextmanager
    def _model_for(self, item: GenerateItem) -> Iterator[None]:
        """The engine's lock and `item`'s adapter, in inference mode."""
        engine = self.models.engine
        with torch.inference_mode(), engine.lock, engine.adapters.active(item.adapter):
            yield

    def _prefill(self, work: Work, gen: Generation, limit: int) -> int:
        """The next chunk of `gen`'s prompt; it joins once its prompt is all in."""
        try:
            with self._model_for(gen.item):
                done = gen.prefill(limit)
        except Exception as exc:
            self._finish(work, None, exc)
            return 0
        if gen.prefilling:
            self._prefilling.append((work, gen))
        else:
            self._join(work, gen)
        return done

    def _join(self, work: Work, gen: Generation) -> bool:
        """A prefilled generation goes live, or is answered when its first token ended it;
        False (and it waits again, its prefix state cached: cheap later) past the KV budget."""
        kv = sum(g.kv_bytes for _, g in self._live)
        if self._live and self._kv_budget is not None and kv + gen.kv_bytes > self._kv_budget:
            self._waiting.appendleft(work)
            return False
        if gen.result is not None:  # finished on its first token
            self._finish(work, gen.result, None)
        else:
            self._live.append((work, gen))
        return True

    def _dropped(self, work: Work, message: str) -> bool:
        """Drop `work` if its caller went away or its deadline passed (True)."""
        if work.abandoned:
            self._note_drop("cancelled")
            if not work.future.done():
                self._finish(work, None, _Abandoned("the request was abandoned"))
            return True
        return self._late(work, message)

    def _step(self) -> None:
        """Advance every live generation one token; answer the finished ones at once."""
        live = []
        for work, gen in self._live:
            if not self._dropped(work, "the deadline passed during generation"):
                live.append((work, gen))
        if not live:
            self._live = []
            return
        start = time.perf_counter()
        rows = sum(gen.live_rows for _, gen in live)
        batched = [(w, g) for w, g in live if g.batched]
        alone = [(w, g) for w, g in live if not g.batched]
        groups: list[list[tuple[Work, Generation]]] = []
        if batched and self.settings.adapter_batching == "grouped":
            by_adapter: dict[str, list[tuple[Work, Generation]]] = defaultdict(list)
            for w, g in batched:
                by_adapter[g.item.adapter].append((w, g))
            groups += list(by_adapter.values())
        elif batched:
            groups.append(batched)
        groups += [[pair] for pair in alone]
        for group in groups:
            self._run_step(group, alone=not group[0][1].batched)
        self.step_rows = [*self.step_rows[-999:], rows]
        self._live = [(w, g) for w, g in live if not w.future.done()]
        if self.metrics is not None:
            seconds = time.perf_counter() - start
            self.metrics.observe_step(len(self._live), rows, seconds, self.live_rows)

    def _run_step(self, group: list[tuple[Work, Generation]], alone: bool) -> None:
        """One forward for `group`'s pending steps; an out-of-memory error splits the group in
        halves and retries, down to a single generation, which then fails alone."""
        engine = self.models.engine
        gens = [g for _, g in group]
        try:
            if alone:
                work, gen = group[0]
                with torch.inference_mode(), engine.lock, engine.adapters.active(gen.item.adapter):
                    logps: Sequence[torch.Tensor | None] = [gen.rows.step(*gen.pending)]  # type: ignore[misc]
            else:
                with torch.inference_mode(), engine.lock:
                    logps = decode_step(engine, gens)
        except Exception as exc:
            if len(group) > 1 and _is_oom(exc):
                log.warning("out of memory in a %d-generation step; retrying it split", len(group))
                _free_cached_memory(engine)
                half = len(group) // 2
                self._run_step(group[:half], alone=False)
                self._run_step(group[half:], alone=False)
                return
            for work, _ in group:
                self._finish(work, None, exc)
            return
        for (work, gen), logp in zip(group, logps, strict=True):
            work.batch_size = max(work.batch_size, len(group))
            try:
                with torch.inference_mode():
                    gen.advance(logp)  # type: ignore[arg-type]
            except Exception as exc:  # a search's own bug: only its request fails
                self._finish(work, None, exc)
                continue
            if gen.result is not None:
                self._finish(work, gen.result, None)

    def _finish(self, work: Work, result: Any, exc: BaseException | None) -> None:
        """Answer one generation (timings first: the caller reads them when woken)."""
        now = time.perf_counter()
        if not work.started:
            work.started, work.queue_s = now, now - work.enqueued
        work.infer_s = now - work.started
        if exc is None:
            work.future.set_result(result)
        else:
            self._fail(work, exc)
        if self.metrics is not None:
            self.metrics.observe_batch(work.batch_size, work.queue_s, work.infer_s)

    @staticmethod
    def _fail(work: Work, exc: BaseException) -> None:
        if not isinstance(exc, ServiceError):
            log.error("model work failed", exc_info=exc)
        if not work.future.done():
            work.future.set_exception(exc)


class _Stop(Exception):
    """The worker was stopped and has nothing left to run."""


def item_rows(item: GenerateItem) -> int:
    """The most decoder rows a generation holds at once (what `max_live_rows` counts)."""
    return 1 if item.strategy == "greedy" else item.n


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_cached_memory(engine: Any) -> None:
    device = getattr(engine, "device", None)
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
