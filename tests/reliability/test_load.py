"""Load: N concurrent clients × M requests of mixed endpoints against a real uvicorn server on
loopback (the session's keyed server: queue bound 16), bounded in count and time.

- Below the queue bound: zero errors.
- Deliberate overload (far more concurrent requests than batch + queue hold): only 200 or
  429 with `Retry-After`; never a connection error, a timeout without an answer or a crash.
- Memory after the runs stays within `RSS_BOUND_MIB` of memory before (the caches are bounded),
  and the service scores the same numbers afterwards.

Sizes: `SELFREWARD_LOAD_CLIENTS` × `SELFREWARD_LOAD_REQUESTS` (CI: 8 × 12), overload
`SELFREWARD_OVERLOAD_CLIENTS` (CI: 96). With `SELFREWARD_RELIABILITY_REPORT=FILE` the figures
(requests, errors, p50/p99 latency, RSS) are appended to FILE as JSON lines (`make reliability`
puts them in the README's table).
"""

from __future__ import annotations

import base64
import collections
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.reliability import (
    Server,
    keyed_server,
    png_bytes,
    reference_numbers,
    report,
    upload_png,
)

__all__ = ["keyed_server"]  # the session fixture, imported so pytest finds it here

CLIENTS = int(os.environ.get("SELFREWARD_LOAD_CLIENTS", "8"))
REQUESTS = int(os.environ.get("SELFREWARD_LOAD_REQUESTS", "12"))
OVERLOAD = int(os.environ.get("SELFREWARD_OVERLOAD_CLIENTS", "96"))
RSS_BOUND_MIB = 200  # growth allowed over a run: caches fill up to their bounds, then stop


def _requests(image_id: str, k: int) -> list[tuple[str, str, Any]]:
    """The mix: scoring, CLIP, reward, generation, an image upload, a pair write, reads."""
    image = {"id": image_id}
    inline = base64.b64encode(png_bytes((k % 255, 40, 90))).decode()
    return [
        ("POST", "/v1/logprobs", {"prompt": "Describe.", "image": image,
                                  "continuations": [f"A red square {k}.", "A dog."]}),
        ("POST", "/v1/reward", {"prompt": "Describe.", "image": image,
                                "candidates": ["A red square.", f"Item {k}."]}),
        ("POST", "/v1/clip", {"image": image, "texts": ["a square", f"thing {k}"]}),
        ("POST", "/v1/generate", {"prompt": "Describe.", "image": image, "n": 2,
                                  "max_new_tokens": 8}),
        ("POST", "/v1/clip", {"image": {"base64": inline}, "texts": ["colour"]}),
        ("GET", "/v1/datasets", None),
        ("GET", "/v1/adapters", None),
    ]  # fmt: skip


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _run_clients(
    clients: int, per_client: int, make: Callable[[int], tuple[str, str, Any]], url: str,
    headers: dict[str, str],
) -> tuple[collections.Counter, list[float], list[str]]:  # fmt: skip
    """Run `clients` threads of `per_client` sequential requests; returns (statuses,
    latencies in ms, problems: anything but a 2xx or a 429 with Retry-After)."""
    statuses: collections.Counter = collections.Counter()
    latencies: list[float] = []
    problems: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(c: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
            start.wait()
            for i in range(per_client):
                method, path, body = make(c * per_client + i)
                t0 = time.perf_counter()
                try:
                    r = http.request(method, path, json=body)
                except httpx.HTTPError as exc:
                    with lock:
                        problems.append(f"{path}: {exc!r}")
                    continue
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    statuses[r.status_code] += 1
                    latencies.append(ms)
                    if r.status_code == 429 and r.headers.get("retry-after"):
                        continue
                    if r.status_code >= 300:
                        problems.append(f"{path}: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return statuses, latencies, problems


def test_load_mixed_endpoints_zero_errors_then_overload(keyed_server: Server) -> None:
    # "Below the queue bound": a request holds at most 2 work items (/v1/reward: scoring and
    # CLIP), and one batch (32) plus the queue (16) hold 48.
    assert 2 * CLIENTS <= 32 + 16, "more clients than the queue bound: use the overload phase"
    image_id = upload_png(keyed_server)
    numbers = reference_numbers(keyed_server, image_id)
    rss_before, _ = keyed_server.rss_kib()
    headers = keyed_server.headers("api")
    rng = random.Random(0)

    def mixed(k: int) -> tuple[str, str, Any]:
        return rng.choice(_requests(image_id, k))

    t0 = time.perf_counter()
    statuses, latencies, problems = _run_clients(
        CLIENTS, REQUESTS, mixed, keyed_server.url, headers
    )
    wall = time.perf_counter() - t0
    assert problems == [], problems[:5]
    assert sum(statuses.values()) == CLIENTS * REQUESTS
    assert set(statuses) <= {200, 201}

    # Overload: every client fires at once; the batch (32) and the queue (16) hold less.
    gen = ("POST", "/v1/generate", {"prompt": "Describe.", "n": 4, "max_new_tokens": 24})
    o_statuses, o_latencies, o_problems = _run_clients(
        OVERLOAD, 1, lambda k: gen, keyed_server.url, headers
    )
    assert o_problems == [], o_problems[:5]  # 200, or 429 with Retry-After: nothing else
    assert sum(o_statuses.values()) == OVERLOAD and o_statuses[429] > 0, o_statuses

    assert keyed_server.proc.poll() is None
    rss_after, rss_peak = keyed_server.rss_kib()
    assert (rss_after - rss_before) / 1024 < RSS_BOUND_MIB, (rss_before, rss_after)
    after = reference_numbers(keyed_server, image_id)
    for key, values in numbers.items():
        assert after[key] == pytest.approx(values, rel=1e-5, abs=1e-6), key
    report(
        "load", clients=CLIENTS, requests=sum(statuses.values()), errors=len(problems),
        wall_s=round(wall, 2), rps=round(sum(statuses.values()) / wall, 1),
        p50_ms=round(statistics.median(latencies), 1),
        p99_ms=round(_percentile(latencies, 0.99), 1),
        overload_requests=OVERLOAD, overload_200=o_statuses[200], overload_429=o_statuses[429],
        overload_p99_ms=round(_percentile(o_latencies, 0.99), 1),
        rss_before_mib=round(rss_before / 1024), rss_after_mib=round(rss_after / 1024),
        rss_peak_mib=round(rss_peak / 1024),
    )  # fmt: skip
