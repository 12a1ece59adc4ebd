"""What a scoring request pays around its forward, against a bare FastAPI endpoint.

One (or 4) client(s) send `/v1/logprobs` (tiny text model, 3 continuations) to an idle service
on loopback, one request after another, and read the service's own timing headers:
`x-queue-time-ms` (waiting for the model worker), `x-inference-time-ms` (the forward) and
`x-total-time-ms` (arrival to response). The baseline is a bare FastAPI app on uvicorn that
parses the same body into the same pydantic model and answers the same response shape without
a model: its `x-total-time-ms` is what HTTP + FastAPI + pydantic cost by themselves.

Prints, per client count: median queue time, median (total - inference), the same without the
queue time (at 4 clients the queue is the wait for the model's previous batch, not the path's
own cost), the bare endpoint's median total, and their ratios; the goal is queue < 0.2 ms and
(total - inference) <= 1.5x bare. The service and the bare endpoint run side by side and are
measured in alternating blocks (`--rounds`), so the box's drift weighs on both alike.

`--stages` runs the service in this process with a timestamp at each stage a request passes
(middlewares, body read, dependencies, the hand-offs to the model worker and back, the
response) and prints the median time between consecutive stages.

`--profile` runs the service in this process under cProfile instead (the event loop's thread:
HTTP parsing, middleware, validation, the serving layer, serialization; not the model worker's
thread, whose time is the inference) while one client process sends the requests, and prints
where the loop's time per request goes, grouped by the package that spends it.

    .venv/bin/python bench/bench_request_overhead.py [--requests 600] [--rounds 6] [--clients 1,4]
    .venv/bin/python bench/bench_request_overhead.py --profile [--requests 1000]
    .venv/bin/python bench/bench_request_overhead.py --stages [--requests 300]
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


async def collect(url: str, clients: int, requests: int) -> list[httpx.Headers]:
    """The response headers of `requests` requests from `clients` concurrent clients."""
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
    return headers


def summarize(headers: list[httpx.Headers]) -> dict[str, float]:
    """Medians: queue, inference, total, total - inference ("around") and total - inference -
    queue ("own": the path's own cost, without the wait for the model's previous batch)."""

    def ms(h: httpx.Headers, name: str) -> float:
        return float(h.get(name, "0"))

    def median(f: Any) -> float:
        return statistics.median(f(h) for h in headers)

    return {
        "queue_ms": median(lambda h: ms(h, "x-queue-time-ms")),
        "infer_ms": median(lambda h: ms(h, "x-inference-time-ms")),
        "total_ms": median(lambda h: ms(h, "x-total-time-ms")),
        "around_ms": median(lambda h: ms(h, "x-total-time-ms") - ms(h, "x-inference-time-ms")),
        "own_ms": median(
            lambda h: (
                ms(h, "x-total-time-ms") - ms(h, "x-inference-time-ms") - ms(h, "x-queue-time-ms")
            )
        ),
    }


async def measure(url: str, clients: int, requests: int) -> dict[str, float]:
    return summarize(await collect(url, clients, requests))


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


def serve_in_process(model: Path, data: Path, requests: int, on_start: Any) -> dict[str, Any]:
    """The service on this process's event loop while one client process sends `requests`
    requests; `on_start()` runs once the model is loaded. Returns the client's medians."""
    import json
    import subprocess
    import threading

    import uvicorn

    from selfreward_vlm.service.app import build_app
    from selfreward_vlm.service.cli import uvicorn_options
    from selfreward_vlm.service.settings import ServiceSettings

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)  # the model loads here: not measured
            on_start()

    port = free_port()
    settings = ServiceSettings(model=str(model), data_dir=data, torch_threads=1, port=port,
                               host="127.0.0.1")  # fmt: skip
    server = Server(
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
    return result


def profile(model: Path, data: Path, requests: int) -> None:
    """The service in this process under cProfile, one client process; prints the breakdown."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    result = serve_in_process(model, data, requests, prof.enable)  # the loop's thread
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


# `--stages`: a timestamp where a /v1/logprobs request passes each point (patched in around
# the service's own functions; the patches only record perf_counter values). The names are of
# the intervals between two consecutive points.
STAGES = [
    "middlewares: timing, drain",
    "middlewares: deadline, auth",
    "body limit middleware, Starlette/FastAPI up to the route's body read",
    "the receive wrappers",
    "waiting for the body from the client",
    "the body assembled",
    "content type, JSON parse",
    "dependencies and body validation",
    "route to the serving layer",
    "serving layer up to the batcher",
    "submit and the worker's wake-up (work item, queue put, thread and GIL hand-off)",
    "the worker takes the work",
    "inference",
    "the answer back on the event loop",
    "serving layer: the response (token strings, models)",
    "response validation, encoding, timing headers",
]


def stages(model: Path, data: Path, requests: int) -> None:
    """Median time between consecutive stages of one client's requests (see STAGES)."""

    import fastapi.routing
    import starlette.requests

    from selfreward_vlm.service.deadlines import DeadlineMiddleware
    from selfreward_vlm.service.engine import batcher as batcher_mod
    from selfreward_vlm.service.http.auth import BodyLimitMiddleware
    from selfreward_vlm.service.http.metrics import RequestTimingMiddleware
    from selfreward_vlm.service.routes import scoring as scoring_route

    events: list[tuple[int, float]] = []
    on = {"recording": False}

    def mark(stage: int) -> None:
        if on["recording"]:
            events.append((stage, time.perf_counter()))

    def around_call(cls: Any, before: int, receive_marks: bool = False) -> None:
        call = cls.__call__

        async def wrapped(self: Any, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await call(self, scope, receive, send)
            mark(before)
            inner_receive, inner_send = receive, send
            if receive_marks:

                async def inner_receive() -> Any:
                    mark(4)
                    message = await receive()
                    mark(5)
                    return message

                async def inner_send(message: Any) -> None:
                    if message["type"] == "http.response.start":
                        mark(16)
                    await send(message)

            await call(self, scope, inner_receive, inner_send)

        cls.__call__ = wrapped

    def stamp(owner: Any, name: str, before: int, after: int | None, when: Any = None) -> None:
        """Stamp `before` and `after` (if any) around `owner.name` (a coroutine function, or
        not)."""
        inner = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            on_call = when is None or when(kwargs)
            if on_call:
                mark(before)
            out = inner(*args, **kwargs)
            if not asyncio.iscoroutine(out):
                if after is not None:
                    mark(after)
                return out

            async def finish() -> Any:
                value = await out
                if on_call and after is not None:
                    mark(after)
                return value

            return finish()

        setattr(owner, name, timed)

    around_call(RequestTimingMiddleware, 0, receive_marks=True)
    around_call(DeadlineMiddleware, 1)  # (drain runs between timing and deadline)
    around_call(BodyLimitMiddleware, 2)
    stamp(starlette.requests.Request, "body", 3, 6)
    route = scoring_route.logprobs
    stamp(fastapi.routing, "solve_dependencies", 7, 8,
          when=lambda kw: getattr(kw.get("dependant"), "call", None) is route)  # fmt: skip
    stamp(scoring_route.scoring, "logprobs", 9, 15)
    stamp(batcher_mod.Batcher, "submit", 10, 14)
    stamp(batcher_mod.Batcher, "_claim", 11, None)  # the worker has the work from the queue
    stamp(batcher_mod.Batcher, "_run_batch", 12, 13)

    result = serve_in_process(model, data, requests, lambda: on.update(recording=True))
    per: list[dict[int, float]] = []
    for stage, t in events:
        if stage == 0:
            per.append({})
        if per and stage not in per[-1]:
            per[-1][stage] = t
    full = [r for r in per[20:] if len(r) == len(STAGES) + 1]  # past the warm-up
    print(f"service: total {result['total_ms']:.2f} ms, inference {result['infer_ms']:.2f} ms "
          f"(medians of {len(full)} requests, 1 client, stamps at each stage)")  # fmt: skip
    for k, name in enumerate(STAGES, start=1):
        ms = statistics.median((r[k] - r[k - 1]) * 1000 for r in full)
        print(f"  {ms:7.3f} ms  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=6, help="alternating blocks per client count")
    ap.add_argument("--clients", default="1,4", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--profile", action="store_true", help="the breakdown, under cProfile")
    ap.add_argument("--stages", action="store_true", help="the time between a request's stages")
    args = ap.parse_args()
    if args.profile or args.stages:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            run = profile if args.profile else stages
            run(build_tiny_causal_lm(tmp / "lm"), tmp / "data", args.requests)
        return
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model = build_tiny_causal_lm(tmp / "lm")
        options = ("--torch-threads", "1", "--log-level", "warning")
        with (
            local_service(model, None, tmp / "data", *options) as url,
            bare_service(tmp) as bare_url,
        ):
            # Alternate blocks of the two, so that the box's drift (other jobs, CPU clock)
            # weighs on both alike.
            got: dict[tuple[str, int], list[httpx.Headers]] = {}
            for _ in range(args.rounds):
                for c in args.clients:
                    for name, target in (("service", url), ("bare", bare_url)):
                        block = asyncio.run(collect(target, c, args.requests // args.rounds))
                        got.setdefault((name, c), []).extend(block)
    for c in args.clients:
        s, b = summarize(got["service", c]), summarize(got["bare", c])
        print(
            f"{c} client(s): queue {s['queue_ms']:.2f} ms, inference {s['infer_ms']:.2f} ms, "
            f"total {s['total_ms']:.2f} ms, total - inference {s['around_ms']:.2f} ms "
            f"(- queue: {s['own_ms']:.2f} ms); bare endpoint {b['total_ms']:.2f} ms; "
            f"ratio {s['around_ms'] / b['total_ms']:.2f} (without the queue "
            f"{s['own_ms'] / b['total_ms']:.2f})"
        )


if __name__ == "__main__":
    main()
