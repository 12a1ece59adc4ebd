"""Graceful shutdown: SIGTERM under load, counted.

Clients keep a real server busy with short generations; SIGTERM arrives mid-load. Then:
`/ready` turns 503 at once (or the port is closed, once the drain is complete: never 200
again); every request either completes (200) or gets a clean 503 with
`Retry-After`, or finds the port closed before anything was sent; none is lost without an
answer; requests in flight at SIGTERM finish; the process exits and the pair store was closed
cleanly (integrity check, every acknowledged pair there, the WAL folded back).

Sized for a busy 2-core CI box: 64-token generations (the drain has six or so to finish, one
after another) and a drain timeout (60 s) far above what they take there, so a slow machine
never turns a completed drain into requests counted lost.
"""

from __future__ import annotations

import collections
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from tests.reliability import Server, report, start

WORK = {"prompt": "Describe.", "strategy": "sample", "n": 4, "stop": "eos",
        "max_new_tokens": 64, "seed": 1}  # fmt: skip
CLIENTS = 6


def _pairs(k: int) -> dict:
    pair = {
        "id": f"pair-{k}", "prompt_id": f"p{k}", "prompt": "Describe.", "chosen": "A cat.",
        "rejected": "A dog.", "images": [], "method": "csr", "params": {}, "model": "base",
        "iteration": 0, "chosen_score": {"reward": 1.0}, "rejected_score": {"reward": 0.0},
    }  # fmt: skip
    return {"pairs": [pair]}


def _ready(server: Server) -> int | str:
    """/ready's status; a closed port only counts once the server logged a finished drain
    (it stops listening only after that), so a refusal never hides a 200."""
    try:
        return httpx.get(f"{server.url}/ready", timeout=5).status_code
    except httpx.ConnectError:
        assert "drain complete" in server.log.read_text(), "port closed before the drain ended"
        return "refused after the drain"


def test_sigterm_under_load_drains_and_loses_nothing(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    server = start(tiny_models, tmp_path / "data", drain_timeout_s=60, log_level="info")
    try:
        for k in range(5):  # acknowledged pairs must survive the shutdown
            r = httpx.post(f"{server.url}/v1/datasets/d1/pairs", json=_pairs(k), timeout=30)
            assert r.status_code == 200, r.text
        outcomes: collections.Counter = collections.Counter()
        lost: list[str] = []
        spans: list[tuple[float, float]] = []  # (start, end) of completed requests
        lock = threading.Lock()
        go = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                go.wait()
                while True:
                    t0 = time.monotonic()
                    try:
                        r = http.post("/v1/generate", json=WORK)
                    except httpx.ConnectError:
                        with lock:
                            outcomes["refused before sending"] += 1
                        return
                    except httpx.HTTPError as exc:
                        with lock:
                            lost.append(repr(exc))
                        return
                    with lock:
                        if r.status_code == 200:
                            outcomes["completed"] += 1
                            spans.append((t0, time.monotonic()))
                            continue
                        if r.status_code == 503 and r.headers.get("retry-after"):
                            outcomes["503"] += 1
                            return  # a load balancer would send it elsewhere now
                        lost.append(f"{r.status_code} {r.text[:200]}")
                        return

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        go.set()
        time.sleep(1.5)
        sigterm = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        ready = [_ready(server)]
        while ready[-1] == 200 and time.monotonic() < sigterm + 5:  # the signal's handler
            ready.append(_ready(server))  # runs when the busy server next gets the CPU
        ready.append(_ready(server))
        assert ready[-2] in (503, "refused after the drain"), ready  # at once, while it drains
        assert ready[-1] in (503, "refused after the drain"), ready  # and stays so
        # uvicorn re-raises the signal it handled once shutdown is complete: -SIGTERM, or 0
        assert server.proc.wait(timeout=120) in (0, -signal.SIGTERM)
        for t in threads:
            t.join(30)
    finally:
        server.stop(signal.SIGKILL)

    in_flight = sum(1 for s, e in spans if s < sigterm < e)
    report("shutdown", clients=CLIENTS, lost=len(lost), in_flight_at_sigterm=in_flight, **outcomes)
    assert lost == [], lost
    assert outcomes["completed"] >= CLIENTS
    assert any(s < sigterm < e for s, e in spans), "no request was in flight at SIGTERM"
    log = server.log.read_text()
    assert "SIGTERM: draining" in log and "pair store closed" in log
    db = server.data_dir / "selfreward.db"
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = {row[0] for row in conn.execute("SELECT id FROM pairs")}
    assert {f"pair-{k}" for k in range(5)} <= ids


def test_kubernetes_waits_for_the_whole_shutdown() -> None:
    """Review finding 10: the pod's grace period (60 s) was shorter than a worst-case
    shutdown, so the kubelet's SIGKILL could cut the drain's last requests."""
    import yaml

    from selfreward_vlm.service.settings import ServiceSettings
    from tests.conftest import ROOT

    docs = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    uvicorn_graceful_s, batcher_join_s = 10, 30  # service/cli.py, Batcher.stop
    settings = ServiceSettings(model="unused")
    worst = settings.drain_timeout_s + settings.drain_grace_s + uvicorn_graceful_s + batcher_join_s
    assert pod["terminationGracePeriodSeconds"] > worst


def test_health_stays_open_while_draining_behind_a_root_path() -> None:
    """With a root path (/prefix), `/prefix/health` is still the liveness probe: a 503 there
    while draining would get the pod killed before its requests finish."""
    import asyncio

    from selfreward_vlm.service.http.drain import Drain, DrainMiddleware

    reached: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        reached.append(scope["path"])

    drain = Drain(lambda: 1.0)
    drain.draining = True
    middleware = DrainMiddleware(app, drain)  # type: ignore[arg-type]
    scope = {"type": "http", "method": "GET", "path": "/prefix/health", "root_path": "/prefix"}
    asyncio.run(middleware(scope, None, None))  # type: ignore[arg-type]
    assert reached == ["/prefix/health"]
