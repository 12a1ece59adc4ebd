"""What a scoring request pays around its forward, against a bare FastAPI endpoint.

One (or 4) client(s) send `/v1/logprobs` (tiny text model, 3 continuations) to an idle service
on loopback, one request after another, and read the service's own timing headers:
`x-queue-time-ms` (waiting for the model worker), `x-inference-time-ms` (the forward) and
`x-total-time-ms` (arrival to response). The baseline is a bare FastAPI app on uvicorn that
parses the same body into the same pydantic model and answers the same response shape without
a model: its `x-total-time-ms` is what HTTP + FastAPI + pydantic cost by themselves.

Prints, per client count: median queue time, median (total - inference), the bare endpoint's
median total, and their ratio; the goal is queue < 0.2 ms and (total - inference) <= 1.5x bare.

    .venv/bin/python bench/bench_request_overhead.py [--requests 300] [--clients 1,4]
"""

from __future__ import annotations

import argparse
import asyncio
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", default="1,4", type=lambda s: [int(x) for x in s.split(",")])
    args = ap.parse_args()
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
