"""What a scoring request pays around its forward, against a bare FastAPI endpoint.

One (or 4) client(s) send `/v1/logprobs` (tiny text model, 3 continuations) to an idle service
on loopback, one request after another, and read the service's own timing headers:
`x-queue-time-ms` (waiting for the model worker), `x-inference-time-ms` (the forward) and
`x-total-time-ms` (arrival to response). The baseline is a bare FastAPI app on uvicorn that
parses the same body into the same pydantic model and answers the same response shape without
a model: its `x-total-time-ms` is what HTTP + FastAPI + pydantic cost by themselves.

Prints, per client count: median queue time, median (total - inference), the bare endpoint's
median total, and their ratio; the goal is queue < 0.2 ms and (total - inference) <= 1.5x bare.

`--profile` runs the service in this process under cProfile instead (the event loop's thread:
HTTP parsing, middleware, validation, the serving layer, serialization; not the model worker's
thread, whose time is the inference) while one client process sends the requests, and prints
where the loop's time per request goes, grouped by the package that spends it.

    .venv/bin/python bench/bench_request_overhead.py [--requests 300] [--clients 1,4]
    .venv/bin/python bench/bench_request_overhead.py --profile [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from selfreward_vlm.localserver import free_port, local_service
from selfreward_vlm.tiny import build_tiny_causal_lm

BODY = {"prompt": "Describe the image.", "prefix": "There is",
        "continuations": [" a red circle.", " a blue square.", " two cats."]}  # fmt: skip

BARE_APP = """
import time
from fastapi import FastAPI, Request
from selfreward_vlm.core.schemas import LogprobsRequest, LogprobsResponse, TokenLogprobs, Usage
app = FastAPI()

@app.middleware("http")
async def timing(request: Request, call_next):
    start = time.perf_counter()
    response = await call_next(request)
    response.headers["x-total-time-ms"] = f"{(time.perf_counter() - start) * 1000:.2f}"
    return response

@app.post("/v1/logprobs")
def logprobs(req: LogprobsRequest) -> LogprobsResponse:
    one = TokenLogprobs(text="x", token_ids=[1, 2, 3], tokens=["a", "b", "c"],
                        token_logprobs=[-1.0, -2.0, -3.0], sum_logprob=-6.0, mean_logprob=-2.0,
                        num_tokens=3)
    return LogprobsResponse(model=req.model, results=[one] * len(req.continuations),
                            usage=Usage())
"""


async def measure(url: str, clients: int, requests: int) -> dict[str, float]:
    headers: list[httpx.Headers] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for _ in range(20):  # warm-up: connections, caches
            (await http.post("/v1/logprobs", json=BODY)).raise_for_status()

        async def client() -> None:
            for _ in range(requests // clients):
                response = await http.post("/v1/logprobs", json=BODY)
                response.raise_for_status()
                headers.append(response.headers)

        await asyncio.gather(*(client() for _ in range(clients)))

    def median(name: str) -> float:
        return statistics.median(float(h.get(name, "0")) for h in headers)

    total = median("x-total-time-ms")
    around = statistics.median(
        float(h["x-total-time-ms"]) - float(h.get("x-inference-time-ms", "0")) for h in headers
    )
    return {"queue_ms": median("x-queue-time-ms"), "infer_ms": median("x-inference-time-ms"),
            "total_ms": total, "around_ms": around}  # fmt: skip


def bare_service(tmp: Path) -> Any:
    import contextlib
    import subprocess

    @contextlib.contextmanager
    def run() -> Any:
        (tmp / "bare_app.py").write_text(BARE_APP)
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--port",
                                 str(port), "--log-level", "warning"], cwd=tmp)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    httpx.post(f"{url}/v1/logprobs", json=BODY, timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait()

    return run()


# Where the event loop's time goes: the first matching piece of a function's file path names
# its group (site-packages first, so a library's own code is not counted as ours).
GROUPS = [
    ("uvicorn/h11: HTTP parsing and writing", ("/uvicorn/", "/h11/", "/httptools/")),
    ("starlette: ASGI plumbing, middleware base", ("/starlette/",)),
    ("fastapi: routing, dependencies, encoding", ("/fastapi/",)),
    ("pydantic: validation and serialization", ("/pydantic/", "/pydantic_core/")),
    ("anyio: thread hand-offs", ("/anyio/",)),
    ("asyncio: event loop, futures", ("/asyncio/", "/selectors.py", "/socket.py")),
    (
        "service middleware",
        tuple(f"/service/{m}.py" for m in ("auth", "deadlines", "drain", "metrics", "connections")),
    ),
    ("service app, errors", ("/service/app.py", "/service/errors.py")),
    ("prometheus_client: metrics", ("/prometheus_client/",)),
    ("service routes + serving layer", ("/service/routes/", "/service/serving/")),
    ("batcher submit (event-loop side)", ("/service/engine/batcher.py",)),
    ("json, logging, typing, other stdlib", ("/json/", "/logging/", "/typing.py", "/python3")),
]

CLIENT = """
import asyncio, json, sys, time, httpx
sys.path.insert(0, {bench!r})
from bench_request_overhead import measure
url = {url!r}
for _ in range(600):
    try:
        if httpx.get(url + "/ready", timeout=1).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(0.1)
print(json.dumps(asyncio.run(measure(url, 1, {requests}))))
"""


def profile(model: Path, data: Path, requests: int) -> None:
    """The service in this process under cProfile, one client process; prints the breakdown."""
    import cProfile
    import json
    import pstats
    import subprocess
    import threading

    import uvicorn

    from selfreward_vlm.service.app import build_app
    from selfreward_vlm.service.cli import uvicorn_options
    from selfreward_vlm.service.settings import ServiceSettings

    prof = cProfile.Profile()

    class ProfiledServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)  # the model loads here: not profiled
            prof.enable()  # the event loop's thread, from now on

    port = free_port()
    settings = ServiceSettings(model=str(model), data_dir=data, torch_threads=1, port=port,
                               host="127.0.0.1")  # fmt: skip
    server = ProfiledServer(
        uvicorn.Config(build_app(settings), **uvicorn_options(settings), log_level="warning")
    )
    code = CLIENT.format(bench=str(Path(__file__).parent), url=f"http://127.0.0.1:{port}",
                         requests=requests)  # fmt: skip
    client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = {}

    def watch() -> None:
        out, _ = client.communicate()
        result.update(json.loads(out.strip().splitlines()[-1]))
        server.should_exit = True

    threading.Thread(target=watch, daemon=True).start()
    server.run()
    prof.disable()
    stats = pstats.Stats(prof)
    per_group: dict[str, float] = {}
    total = 0.0
    for (path, _, func), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if path == "~" and ("epoll" in func or "select" in func):
            continue  # the loop waiting for the network: idle, not work
        group = next((name for name, parts in GROUPS if any(p in path for p in parts)), None)
        if group is None:
            group = "C builtins (socket send/recv, locks, ...)" if path == "~" else "other"
        per_group[group] = per_group.get(group, 0.0) + tottime
        total += tottime
    n = requests + 20  # the warm-up requests run through the same loop
    print(f"service: total {result['total_ms']:.2f} ms, inference {result['infer_ms']:.2f} ms, "
          f"queue {result['queue_ms']:.2f} ms, total - inference {result['around_ms']:.2f} ms "
          f"(median of {requests}, under cProfile: slower than unprofiled)")  # fmt: skip
    print(f"event-loop thread CPU per request, by what spends it (cProfile tottime / {n}):")
    for name, seconds in sorted(per_group.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds / n * 1000:7.3f} ms  {seconds / total:5.1%}  {name}")
    print(f"  {total / n * 1000:7.3f} ms  total")
    if os.environ.get("PROFILE_TOP"):
        stats.sort_stats("tottime").print_stats(int(os.environ["PROFILE_TOP"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", default="1,4", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--profile", action="store_true", help="the breakdown, under cProfile")
    args = ap.parse_args()
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            profile(build_tiny_causal_lm(tmp / "lm"), tmp / "data", args.requests)
        return
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model = build_tiny_causal_lm(tmp / "lm")
        with local_service(model, None, tmp / "data", "--torch-threads", "1",
                           "--log-level", "warning") as url:  # fmt: skip
            service = {c: asyncio.run(measure(url, c, args.requests)) for c in args.clients}
        with bare_service(tmp) as url:
            bare = {c: asyncio.run(measure(url, c, args.requests)) for c in args.clients}
    for c in args.clients:
        s, b = service[c], bare[c]
        print(
            f"{c} client(s): queue {s['queue_ms']:.2f} ms, inference {s['infer_ms']:.2f} ms, "
            f"total {s['total_ms']:.2f} ms, total - inference {s['around_ms']:.2f} ms; "
            f"bare endpoint {b['total_ms']:.2f} ms; ratio {s['around_ms'] / b['total_ms']:.2f}"
        )


if __name__ == "__main__":
    main()
