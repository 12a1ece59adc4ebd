"""Micro-batching: concurrent work meets in one batch, each caller gets its own result."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from selfreward_vlm.service.engine.batcher import Batcher
from selfreward_vlm.service.engine.lm import ScoreItem
from selfreward_vlm.service.engine.loader import load_models
from selfreward_vlm.service.errors import QueueFullError
from selfreward_vlm.service.settings import ServiceSettings


def _image(shade: int) -> Image.Image:
    return Image.new("RGB", (32, 32), (shade, 255 - shade, 128))


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]):
    return load_models(ServiceSettings(model=str(tiny_models["vlm"])))


def test_concurrent_requests_are_batched_and_each_gets_its_result(models, tiny_models) -> None:
    settings = ServiceSettings(model=str(tiny_models["vlm"]), max_wait_ms=200, max_batch_size=16)
    items = [
        ScoreItem("base", f"Describe image {k}.", ["There is a red circle.", " blue"][: 1 + k % 2],
                  "There is" if k % 3 else "", f"img{k % 3}", _image(40 * (k % 3)))
        for k in range(8)
    ]  # fmt: skip
    expected = [
        [r.token_logprobs for r in models.engine.score([ScoreItem(
            it.adapter, it.prompt, it.continuations, it.prefix, it.image_id, it.image)])[0]]
        for it in items
    ]  # fmt: skip

    async def run() -> tuple[list, list[int]]:
        batcher = Batcher(models, settings)
        await batcher.start()
        try:
            results = await asyncio.gather(*(batcher.submit(it) for it in items))
        finally:
            await batcher.stop()
        return results, batcher.batch_sizes

    results, sizes = asyncio.run(run())
    assert max(sizes) > 1
    for (scored, work), want in zip(results, expected, strict=True):
        assert work.batch_size > 1
        for s, w in zip(scored, want, strict=True):
            assert s.token_logprobs == pytest.approx(w, abs=1e-4)


class _SlowEngine:
    """Blocks in `score` until released, so the queue fills up behind it."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def score(self, items):
        self.release.wait(10)
        return [[] for _ in items]


class _SlowModels:
    def __init__(self) -> None:
        self.engine = _SlowEngine()
        self.clip = None


def test_full_queue_answers_queue_full(tiny_models) -> None:
    settings = ServiceSettings(model="unused", max_queue=2, max_batch_size=1, max_wait_ms=0)
    slow = _SlowModels()

    async def run() -> list:
        batcher = Batcher(slow, settings)  # type: ignore[arg-type]
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(ScoreItem("base", "p", ["a"])))
        await asyncio.sleep(0.2)  # the worker now blocks on the first item
        queued = [
            asyncio.ensure_future(batcher.submit(ScoreItem("base", "p", ["a"]))) for _ in range(2)
        ]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFullError) as info:
            await batcher.submit(ScoreItem("base", "p", ["a"]))
        assert info.value.retry_after > 0
        slow.engine.release.set()
        done = await asyncio.gather(first, *queued)
        await batcher.stop()
        return done

    t0 = time.perf_counter()
    assert len(asyncio.run(run())) == 3
    assert time.perf_counter() - t0 < 10


class _OnceWrongEngine:
    """`score` answers its first batch with the wrong number of results (a bug outside the
    per-item guards), then correctly."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, items):
        self.calls += 1
        return [] if self.calls == 1 else [[] for _ in items]


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on() -> None:
    """Review finding 7: such a bug used to kill the worker thread, and every later request
    waited out its full deadline."""
    settings = ServiceSettings(model="unused", max_batch_size=1, max_wait_ms=0)
    models = _SlowModels()
    models.engine = _OnceWrongEngine()  # type: ignore[assignment]

    async def run() -> list:
        batcher = Batcher(models, settings)  # type: ignore[arg-type]
        await batcher.start()
        try:
            with pytest.raises(ValueError):
                await asyncio.wait_for(batcher.submit(ScoreItem("base", "p", ["a"])), 60)
            second, _ = await asyncio.wait_for(batcher.submit(ScoreItem("base", "p", ["a"])), 60)
        finally:
            await batcher.stop()
        return second

    assert asyncio.run(run()) == []


def test_stop_with_a_full_queue_does_not_block_the_event_loop() -> None:
    """Review finding 9: `stop` put its sentinel with a blocking `put`; with the queue full
    the event loop stalled until the worker took an item. Queued work still runs."""
    settings = ServiceSettings(model="unused", max_queue=2, max_batch_size=1, max_wait_ms=0)
    slow = _SlowModels()

    async def run() -> tuple[int, list]:
        batcher = Batcher(slow, settings)  # type: ignore[arg-type]
        await batcher.start()
        work = [asyncio.ensure_future(batcher.submit(ScoreItem("base", "p", ["a"])))]
        await asyncio.sleep(0.2)  # the worker now blocks on the first item
        work += [asyncio.ensure_future(batcher.submit(ScoreItem("base", "p", ["a"])))
                 for _ in range(2)]  # fmt: skip
        await asyncio.sleep(0.05)  # queued: the queue is full
        stopping = asyncio.ensure_future(batcher.stop())
        ticks = 0
        while ticks < 5:  # the loop keeps running while stop() waits
            await asyncio.sleep(0.01)
            ticks += 1
        slow.engine.release.set()
        await asyncio.wait_for(stopping, 30)
        return ticks, await asyncio.gather(*work)

    t0 = time.perf_counter()
    ticks, done = asyncio.run(run())
    assert ticks == 5 and len(done) == 3
    assert time.perf_counter() - t0 < 8  # the engine's own 10 s timeout never ran out
