"""The client's retry policy against a real HTTP server (uvicorn on loopback) that answers
429/503 and then recovers: `Retry-After` is honoured (and capped), backoff is exponential with
jitter, only transient answers are retried, and both clients behave the same."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from selfreward_vlm.client import AsyncScoringClient, ScoringClient
from selfreward_vlm.client._base import MAX_RETRY_AFTER
from selfreward_vlm.client.errors import InvalidRequestError, NotReadyError
from selfreward_vlm.localserver import free_port

OK = {
    "model": "base",
    "results": [{"text": "A cat.", "token_ids": [5], "tokens": ["A"], "token_logprobs": [-1.5],
                 "sum_logprob": -1.5, "mean_logprob": -1.5, "num_tokens": 1}],
    "usage": {},
}  # fmt: skip


@dataclass
class Script:
    """What the server answers next: (status, Retry-After or None), then 200 for good."""

    answers: list[tuple[int, str | None]] = field(default_factory=list)
    seen: list[float] = field(default_factory=list)  # arrival times


SCRIPT = Script()


async def logprobs(request: Request) -> JSONResponse:
    SCRIPT.seen.append(time.monotonic())
    if not SCRIPT.answers:
        return JSONResponse(OK)
    status, retry_after = SCRIPT.answers.pop(0)
    kind = {429: "queue_full", 503: "not_ready", 422: "invalid_request"}[status]
    headers = {"Retry-After": retry_after} if retry_after else None
    body = {"error": {"type": kind, "message": "scripted", "field": "prompt"}}
    return JSONResponse(body, status_code=status, headers=headers)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/logprobs", logprobs, methods=["POST"])])
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


def _script(*answers: tuple[int, str | None]) -> None:
    SCRIPT.answers, SCRIPT.seen = list(answers), []


def _sync_client(url: str, sleeps: list[float], real: bool = True, **kw: object) -> ScoringClient:
    client = ScoringClient(url, **kw)  # type: ignore[arg-type]

    def sleep(s: float) -> None:
        sleeps.append(s)
        if real:
            time.sleep(s)

    client._sleep = sleep
    return client


def test_retry_after_then_backoff_then_success(server: str) -> None:
    _script((429, "1"), (503, None))
    sleeps: list[float] = []
    with _sync_client(server, sleeps) as client:
        t0 = time.monotonic()
        out = client.logprobs("Describe.", ["A cat."])
    assert out.results[0].token_logprobs == [-1.5]
    assert len(SCRIPT.seen) == 3
    assert sleeps[0] == 1.0  # the server's Retry-After
    assert 1.0 <= sleeps[1] <= 1.5  # backoff after attempt 2: 0.5·2 s, plus up to 0.5 s jitter
    # the waits really happened between the server's arrivals
    assert SCRIPT.seen[1] - SCRIPT.seen[0] >= 0.95
    assert time.monotonic() - t0 >= sum(sleeps) - 0.05


def test_backoff_grows_and_is_jittered(server: str) -> None:
    runs = []
    for _ in range(4):
        _script((503, None), (503, None), (503, None))
        sleeps: list[float] = []
        with _sync_client(server, sleeps, real=False, max_retries=3) as client:
            client.logprobs("Describe.", ["A cat."])
        runs.append(sleeps)
    for sleeps in runs:
        assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 1.5 and 2.0 <= sleeps[2] <= 2.5
    assert len({round(s[0], 6) for s in runs}) > 1  # jitter: not every client waits the same


def test_gives_up_after_max_retries_and_caps_retry_after(server: str) -> None:
    _script(*[(503, "3600")] * 5)
    sleeps: list[float] = []
    client = _sync_client(server, sleeps, real=False, max_retries=2)
    with client, pytest.raises(NotReadyError) as info:
        client.logprobs("Describe.", ["A cat."])
    assert info.value.retry_after == 3600
    assert len(SCRIPT.seen) == 3 and sleeps == [MAX_RETRY_AFTER, MAX_RETRY_AFTER]


def test_deterministic_errors_are_not_retried(server: str) -> None:
    _script((422, None))
    sleeps: list[float] = []
    client = _sync_client(server, sleeps)
    with client, pytest.raises(InvalidRequestError):
        client.logprobs("Describe.", ["A cat."])
    assert len(SCRIPT.seen) == 1 and sleeps == []


def test_async_client_follows_the_same_policy(server: str) -> None:
    _script((429, "1"), (503, None))
    sleeps: list[float] = []

    async def run() -> float:
        client = AsyncScoringClient(server)

        async def sleep(s: float) -> None:
            sleeps.append(s)
            await asyncio.sleep(s)

        client._sleep = sleep  # type: ignore[assignment]
        try:
            out = await client.logprobs("Describe.", ["A cat."])
        finally:
            await client.close()
        return out.results[0].token_logprobs[0]

    assert asyncio.run(run()) == -1.5
    assert len(SCRIPT.seen) == 3 and sleeps[0] == 1.0 and 1.0 <= sleeps[1] <= 1.5
