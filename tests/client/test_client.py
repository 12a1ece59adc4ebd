"""The HTTP client over httpx.MockTransport: retries, errors, replicas, auth, caching, paging."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from selfreward_vlm.client import (
    APIConnectionError,
    APITimeoutError,
    AsyncScoringClient,
    InsufficientStorageError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    NotReadyError,
    QueueFullError,
    ScoringClient,
    StoreUnavailableError,
)
from selfreward_vlm.core.schemas import PreferencePair, ResponseScore

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
CLIP_OK = {"results": [{"text": "a", "cosine": 0.2, "relevance": 20.0, "truncated": False}],
           "usage": {}}  # fmt: skip


def err(status: int, type_: str, field: str | None = None, **headers: str) -> httpx.Response:
    body = {"error": {"type": type_, "message": f"{type_} happened", "field": field}}
    return httpx.Response(status, json=body, headers=headers)


class Recorder:
    """A MockTransport handler that answers from a script and records every request."""

    def __init__(self, *responses: httpx.Response | Exception | Callable[..., Any]) -> None:
        self.script = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        if callable(item) and not isinstance(item, httpx.Response):
            return item(request)
        return item


def make(handler: Recorder, url: str | list[str] = "http://svc", **kw: Any) -> ScoringClient:
    client = ScoringClient(url, transport=httpx.MockTransport(handler), **kw)
    client._sleep = lambda s: None  # no real backoff in tests
    return client


def test_503_twice_then_success_is_retried() -> None:
    sleeps: list[float] = []
    rec = Recorder(err(503, "not_ready"), err(503, "not_ready"), httpx.Response(200, json=CLIP_OK))
    client = make(rec)
    client._sleep = sleeps.append
    out = client.clip("abc", ["a"])
    assert out.results[0].relevance == 20.0
    assert len(rec.requests) == 3
    assert len(sleeps) == 2 and all(0 < s <= 8.5 for s in sleeps)


def test_422_is_not_retried_and_names_the_field() -> None:
    rec = Recorder(err(422, "invalid_request", field="texts"))
    with pytest.raises(InvalidRequestError) as info:
        make(rec).clip("abc", ["a"])
    assert len(rec.requests) == 1
    e = info.value
    assert (e.status, e.type, e.field) == (422, "invalid_request", "texts")
    assert "texts" in str(e)


def test_429_honours_retry_after() -> None:
    sleeps: list[float] = []
    rec = Recorder(
        err(429, "queue_full", **{"Retry-After": "2.5"}), httpx.Response(200, json=CLIP_OK)
    )
    client = make(rec)
    client._sleep = sleeps.append
    client.clip("abc", ["a"])
    assert sleeps == [2.5] and len(rec.requests) == 2


def test_retries_give_up_with_the_typed_error() -> None:
    rec = Recorder(err(429, "queue_full", **{"Retry-After": "1"}))
    with pytest.raises(QueueFullError) as info:
        make(rec, max_retries=2).clip("abc", ["a"])
    assert info.value.retry_after == 1.0 and len(rec.requests) == 3


def test_connection_error_retried_then_raised() -> None:
    rec = Recorder(httpx.ConnectError("refused"))
    with pytest.raises(APIConnectionError):
        make(rec, max_retries=3).health()
    assert len(rec.requests) == 4


def test_read_timeout_is_not_retried() -> None:
    rec = Recorder(httpx.ReadTimeout("slow"))
    with pytest.raises(APITimeoutError):
        make(rec).health()
    assert len(rec.requests) == 1


def test_500_and_foreign_bodies_map_to_typed_errors() -> None:
    with pytest.raises(InternalServerError):
        make(Recorder(httpx.Response(502, text="<html>bad gateway</html>"))).health()
    with pytest.raises(NotFoundError) as info:
        make(Recorder(err(404, "not_found"))).get_image("nope")
    assert info.value.status_code == 404


def test_507_is_insufficient_storage_not_retried() -> None:
    rec = Recorder(err(507, "insufficient_storage", field="store"))
    with pytest.raises(InsufficientStorageError) as info:
        make(rec).clip("abc", ["a"])
    assert len(rec.requests) == 1  # a full disk is the operator's to fix: not retried
    e = info.value
    assert isinstance(e, InternalServerError) and not isinstance(e, NotReadyError)
    assert (e.status, e.type, e.field) == (507, "insufficient_storage", "store")


def test_503_store_unavailable_is_typed_and_retried() -> None:
    sleeps: list[float] = []
    rec = Recorder(err(503, "store_unavailable", **{"Retry-After": "1"}))
    client = make(rec, max_retries=1)
    client._sleep = sleeps.append
    with pytest.raises(StoreUnavailableError) as info:
        client.clip("abc", ["a"])
    assert isinstance(info.value, NotReadyError)  # `except NotReadyError` still catches it
    assert len(rec.requests) == 2 and sleeps == [1.0]


def test_several_base_urls_round_robin_and_fail_over() -> None:
    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "ok"})

    rec = Recorder(ok)
    client = make(rec, url=["http://a:1", "http://b:2/", "http://c:3"])
    for _ in range(6):
        client.health()
    assert [r.url.host for r in rec.requests] == ["a", "b", "c", "a", "b", "c"]

    def b_is_down(request: httpx.Request) -> httpx.Response:
        if request.url.host == "b":
            raise httpx.ConnectError("down")
        return httpx.Response(200, json={"status": "ok"})

    sleeps: list[float] = []
    rec = Recorder(b_is_down)
    client = make(rec, url=["http://a:1", "http://b:2"])
    client._sleep = sleeps.append
    for _ in range(4):
        assert client.health() == {"status": "ok"}
    assert [r.url.host for r in rec.requests] == ["a", "b", "a", "a", "b", "a"]
    assert sleeps == []  # failover is immediate; no retry was needed


def test_bearer_header_and_custom_headers() -> None:
    rec = Recorder(httpx.Response(200, json={"status": "ok"}))
    make(rec, api_key="s3cret", headers={"x-run": "7"}).health()
    assert rec.requests[0].headers["authorization"] == "Bearer s3cret"
    assert rec.requests[0].headers["x-run"] == "7"
    make(rec).health()
    assert "authorization" not in rec.requests[1].headers


def test_upload_image_once_per_sha(tmp_path: Path) -> None:
    def store(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == "image/png"
        return httpx.Response(
            200, json={"id": f"id{len(request.content)}", "width": 1, "height": 1}
        )

    rec = Recorder(store)
    client = make(rec)
    path = tmp_path / "x.png"
    path.write_bytes(PNG)
    assert client.upload_image(PNG) == client.upload_image(path) == client.upload_image(str(path))
    assert len(rec.requests) == 1
    client.upload_image(PNG + b"\x01")
    assert len(rec.requests) == 2


def test_async_upload_image_once_under_concurrency() -> None:
    calls = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        await asyncio.sleep(0.01)
        return httpx.Response(200, json={"id": "x", "width": 1, "height": 1})

    async def main() -> list[str]:
        async with AsyncScoringClient("http://svc", transport=httpx.MockTransport(handler)) as c:
            return list(await asyncio.gather(*(c.upload_image(PNG) for _ in range(5))))

    assert asyncio.run(main()) == ["x"] * 5 and len(calls) == 1


def test_async_client_retries_503() -> None:
    rec = Recorder(err(503, "not_ready"), httpx.Response(200, json=CLIP_OK))

    async def main() -> float:
        async with AsyncScoringClient("http://svc", transport=httpx.MockTransport(rec)) as client:
            client._sleep = lambda s: asyncio.sleep(0)
            return (await client.clip("abc", ["a"])).results[0].relevance

    assert asyncio.run(main()) == 20.0 and len(rec.requests) == 2


def pair(i: int) -> PreferencePair:
    score = ResponseScore(reward=float(i))
    return PreferencePair(id=f"p{i}", prompt_id=f"q{i}", prompt="x", chosen="a", rejected="b",
                          method="csr", chosen_score=score, rejected_score=score)  # fmt: skip


def test_iter_pairs_follows_cursors() -> None:
    pages = {None: ([0, 1], "c1"), "c1": ([2, 3], "c2"), "c2": ([4], None)}

    def page(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        assert request.url.params["limit"] == "2"
        ids, nxt = pages[after]
        body = {"dataset": "d", "pairs": [pair(i).model_dump() for i in ids], "next_cursor": nxt}
        return httpx.Response(200, json=body)

    rec = Recorder(page)
    got = [p.id for p in make(rec).iter_pairs("d", page_size=2)]
    assert got == ["p0", "p1", "p2", "p3", "p4"] and len(rec.requests) == 3


def test_upsert_pairs_batches_and_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    import selfreward_vlm.client._base as base

    monkeypatch.setattr(base, "PAIRS_BATCH", 2)

    def upsert(request: httpx.Request) -> httpx.Response:
        n = len(json.loads(request.content)["pairs"])
        return httpx.Response(
            200, json={"dataset": "d", "inserted": n, "duplicates": 0, "total": n}
        )

    rec = Recorder(upsert)
    out = make(rec).upsert_pairs("d", [pair(i) for i in range(5)])
    assert out.inserted == 5 and len(rec.requests) == 3
    assert rec.requests[0].url.path == "/v1/datasets/d/pairs"


def test_ready_is_a_single_probe_and_wait_until_ready() -> None:
    rec = Recorder(err(503, "not_ready"))
    client = make(rec)
    assert client.ready() is False and len(rec.requests) == 1
    rec = Recorder(err(503, "not_ready"), httpx.ConnectError("x"), httpx.Response(200, json={}))
    make(rec).wait_until_ready(timeout=5, interval=0)
    assert len(rec.requests) == 3
    with pytest.raises(APITimeoutError):
        make(Recorder(err(503, "not_ready"))).wait_until_ready(timeout=0.05, interval=0.01)
    with pytest.raises(NotReadyError):
        make(Recorder(err(503, "not_ready")), max_retries=0).info()


def test_generate_and_reward_bodies() -> None:
    seen: list[dict[str, Any]] = []

    def echo(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        if request.url.path == "/v1/reward":
            body = {"model": "base", "lambda": 0.5, "language_score": "prob", "results": [],
                    "usage": {}}  # fmt: skip
            return httpx.Response(200, json=body)
        return httpx.Response(200, json={"model": "base", "candidates": [], "usage": {}})

    client = make(Recorder(echo))
    client.generate("hi", image="abc", strategy="sample", n=3, seed=0, stop="eos")
    assert (
        seen[0]["image"] == {"id": "abc"}
        and seen[0]["seed"] == 0
        and "num_beam_groups" not in seen[0]
    )
    with pytest.raises(ValueError):
        client.generate("hi", strateg="sample")  # typo: rejected before any request
    assert client.reward("hi", ["a."], image="abc", lam=0.5).lambda_ == 0.5
    assert seen[-1]["lambda"] == 0.5 and seen[-1]["candidates"] == ["a."]


def test_upload_adapter_multipart(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x00\x01")

    def check(request: httpx.Request) -> httpx.Response:
        body = request.read()
        assert b'name="name"' in body and b"adapter_model.safetensors" in body
        assert b'name="adapter_config.json"; filename="adapter_config.json"' in body
        return httpx.Response(200, json={"name": "it1", "size_bytes": 2})

    assert make(Recorder(check)).upload_adapter("it1", tmp_path).name == "it1"
    with pytest.raises(FileNotFoundError):
        make(Recorder(check)).upload_adapter("x", tmp_path / "missing")


def test_client_imports_without_heavy_modules() -> None:
    code = (
        "import sys\n"
        "import selfreward_vlm.client, selfreward_vlm.client.cli, selfreward_vlm.client.pairs\n"
        "import selfreward_vlm.client.methods, selfreward_vlm.core.selection\n"
        "import selfreward_vlm.core.rewards\n"
        "bad = [m for m in ('torch', 'transformers', 'open_clip', 'fastapi') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
