"""Deadlines, cancellation, timing headers and the token limit.

- A request past its deadline (setting, or `x-request-timeout-ms`) gets 504 and frees the
  model: a 30-second generation cut at 0.5 s leaves the worker free for the next request.
- A client that hangs up mid-request does not keep the model busy either.
- Queued work whose caller is gone is dropped unrun (batcher unit test, fake slow engine).
- `x-inference-time-ms` measures the forward (it read 0.00 on a 22 ms /v1/reward).
- The default token limit is the loaded model's context length.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from selfreward_vlm.service.deadlines import DeadlineExceededError, current_deadline
from selfreward_vlm.service.engine.batcher import Batcher
from selfreward_vlm.service.engine.lm import ScoreItem
from selfreward_vlm.service.settings import ServiceSettings
from tests.reliability import Server, keyed_server, upload_png

__all__ = ["keyed_server"]  # the session fixture, imported so pytest finds it here

# ~30 s of generation on the tiny VLM (64 beams, 1000 tokens, no EOS in sight).
LONG = {"prompt": "Describe.", "n": 64, "strategy": "diverse_beam", "stop": "eos",
        "max_new_tokens": 1000}  # fmt: skip
SHORT = {"prompt": "Describe.", "n": 2, "max_new_tokens": 8}
# Timing bounds hold on a busy 2-core CI box: what proves a generation was stopped is the
# worker's own count of work it dropped mid-generation (`_worker_stops`); the wall-clock
# bounds only add that the worker was free long before LONG could have finished.
FREE_WITHIN_S = 15


def _short_request_time(server: Server) -> float:
    t0 = time.perf_counter()
    r = httpx.post(f"{server.url}/v1/generate", json=SHORT, headers=server.headers(), timeout=60)
    assert r.status_code == 200, r.text
    return time.perf_counter() - t0


def _deadline_stops(server: Server) -> float:
    """Requests stopped by their deadline. Two paths race: the request's own timer (counted as
    abandoned) or the worker's per-step check inside the generation (counted as dropped work)
    — on a loaded machine either may fire first, and exactly one of them does."""
    return server.metric("selfreward_requests_abandoned_total", reason="deadline") + server.metric(
        "selfreward_work_dropped_total", reason="deadline"
    )


def _worker_stops(server: Server) -> float:
    """Generations the worker stopped between two steps (late, or its caller gone)."""
    return sum(
        server.metric("selfreward_work_dropped_total", reason=r) for r in ("deadline", "cancelled")
    )


def _wait_for(what: str, check: object, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.1)


def test_deadline_header_gives_504_and_frees_the_model(keyed_server: Server) -> None:
    before, stops = _deadline_stops(keyed_server), _worker_stops(keyed_server)
    t0 = time.perf_counter()
    r = httpx.post(
        f"{keyed_server.url}/v1/generate", json=LONG, timeout=60,
        headers={**keyed_server.headers(), "x-request-timeout-ms": "500"},
    )  # fmt: skip
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "deadline_exceeded"
    assert time.perf_counter() - t0 < FREE_WITHIN_S
    assert _short_request_time(keyed_server) < FREE_WITHIN_S  # the 30 s generation was stopped
    assert _deadline_stops(keyed_server) >= before + 1
    _wait_for("worker stopped the generation", lambda: _worker_stops(keyed_server) > stops)


def test_bad_deadline_header_is_a_422_naming_it(keyed_server: Server) -> None:
    for value in ("soon", "0", "-5", "nan"):
        r = httpx.post(
            f"{keyed_server.url}/v1/generate", json=SHORT, timeout=30,
            headers={**keyed_server.headers(), "x-request-timeout-ms": value},
        )  # fmt: skip
        assert r.status_code == 422, (value, r.text)
        assert r.json()["error"]["field"] == "x-request-timeout-ms"


def test_client_disconnect_does_not_keep_the_model_busy(keyed_server: Server) -> None:
    before = keyed_server.metric("selfreward_requests_abandoned_total", reason="disconnect")
    stops = _worker_stops(keyed_server)
    body = json.dumps(LONG).encode()
    auth = keyed_server.headers()["Authorization"]
    host, port = keyed_server.url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/generate HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + body)
        time.sleep(0.5)  # the generation is running now
    assert _short_request_time(keyed_server) < FREE_WITHIN_S
    abandoned = lambda: keyed_server.metric(  # noqa: E731
        "selfreward_requests_abandoned_total", reason="disconnect"
    )
    _wait_for("disconnect counted", lambda: abandoned() >= before + 1)
    assert abandoned() == before + 1
    _wait_for("worker stopped the generation", lambda: _worker_stops(keyed_server) > stops)


def test_timing_headers_measure_the_forward(keyed_server: Server) -> None:
    image_id = upload_png(keyed_server)
    count = keyed_server.metric("selfreward_inference_duration_seconds_count")
    for path, body in [
        ("/v1/reward", {"prompt": "Describe.", "image": {"id": image_id},
                        "candidates": ["A red square.", "A dog."]}),
        ("/v1/generate", {**SHORT, "max_new_tokens": 24}),
    ]:  # fmt: skip
        headers = keyed_server.headers()
        r = httpx.post(keyed_server.url + path, json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        total = float(r.headers["x-total-time-ms"])
        infer = float(r.headers["x-inference-time-ms"])
        assert float(r.headers["x-queue-time-ms"]) >= 0
        assert 0 < infer <= total, (path, r.headers)
        assert int(r.headers["x-batch-size"]) >= 1
    # every batch is observed (reward: a scoring and a CLIP batch, generate: one)
    assert keyed_server.metric("selfreward_inference_duration_seconds_count") >= count + 2


# ---------------------------------------------------------------------- batcher unit test


class _SlowEngine:
    """Blocks in `score` until released; records what it was asked to run."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[list[str]] = []

    def score(self, items):  # type: ignore[no-untyped-def]
        self.calls.append([it.prompt for it in items])
        self.release.wait(10)
        return [[] for _ in items]


class _SlowModels:
    def __init__(self) -> None:
        self.engine = _SlowEngine()
        self.clip = None


def test_batcher_drops_work_whose_caller_is_gone() -> None:
    settings = ServiceSettings(model="unused", max_batch_size=8, max_wait_ms=0)
    models = _SlowModels()

    async def run() -> Batcher:
        batcher = Batcher(models, settings)  # type: ignore[arg-type]
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(ScoreItem("base", "first", ["a"])))
        while not models.engine.calls:  # until the worker is blocked on `first`
            await asyncio.sleep(0.01)
        token = current_deadline.set(time.perf_counter() + 0.05)
        late = asyncio.ensure_future(batcher.submit(ScoreItem("base", "late", ["a"])))
        current_deadline.reset(token)
        gone = asyncio.ensure_future(batcher.submit(ScoreItem("base", "gone", ["a"])))
        kept = asyncio.ensure_future(batcher.submit(ScoreItem("base", "kept", ["a"])))
        await asyncio.sleep(0.1)
        gone.cancel()  # its client hung up
        await asyncio.sleep(0.05)
        models.engine.release.set()
        await first
        await kept
        with pytest.raises(DeadlineExceededError):
            await late
        assert gone.cancelled()
        await batcher.stop()
        return batcher

    batcher = asyncio.run(run())
    assert models.engine.calls == [["first"], ["kept"]]
    assert batcher.dropped == {"deadline": 1, "cancelled": 1}


# ---------------------------------------------------------------------- token limit


def test_token_limit_follows_the_model_context_length(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from selfreward_vlm.service.app import build_app

    model = tmp_path / "lm-512"
    shutil.copytree(tiny_models["lm"], model)
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = 512
    (model / "config.json").write_text(json.dumps(config))
    settings = ServiceSettings(model=str(model), data_dir=tmp_path / "data", warmup=False)
    with TestClient(build_app(settings)) as client:
        for _ in range(300):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.1)
        assert client.get("/info").json()["limits"]["max_text_tokens"] == 512
        long_text = " word" * 600
        r = client.post("/v1/logprobs", json={"prompt": "Hi", "continuations": [long_text]})
        assert r.status_code == 422 and r.json()["error"]["field"] == "continuations[0]"
    explicit = ServiceSettings(model=str(model), max_text_tokens=100)
    assert "max_text_tokens" in explicit.model_fields_set  # an operator's value is kept
