"""Benchmark: CSR pair generation, naive vs optimized, on LLaVA-1.5 token geometry.

Runs the same CSR search twice in one run, against two services on loopback:

- naive: the service with `--naive` (no image/prefix/CLIP caches, no batching) and a client that
  re-scores every candidate with its own `/v1/logprobs` request (image + prompt + prefix +
  candidate from scratch), as the published CSR code does;
- optimized: caches, micro-batching, and R_T taken from the candidates' own generation
  log-probs.

Prints forwarded-token amplification (tokens forwarded / distinct tokens of the search tree),
wall time per prompt, and `/v1/reward` throughput under 1, 8 and 32 concurrent clients with
batching on and off. Model: random weights, 336-px images with 14-px patches (576 image tokens),
a ~40-token prompt, 5 candidates per step, 20-token sentences.

    .venv/bin/python bench/bench_csr.py [--prompts 6] [--steps 3] [--out bench/results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from selfreward_vlm.client import AsyncScoringClient
from selfreward_vlm.client.methods.base import PromptItem, RunContext
from selfreward_vlm.client.methods.csr import CSRConfig, csr
from selfreward_vlm.client.rescoring import RescoringClient
from selfreward_vlm.localserver import local_service
from selfreward_vlm.tiny import TinyVLMSpec, build_tiny_clip, build_tiny_vlm

PROMPT = (
    "Describe this image in detail: name every object you can see, its colour, its shape, "
    "where it is in the picture, and how the objects relate to each other. Be precise."
)


class UsageMeter(httpx.AsyncBaseTransport):
    """Wraps a transport and adds up `usage` of every response, per endpoint."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.forwarded = 0
        self.generated = 0  # tokens of generated candidates: the nodes of the search tree

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        if response.status_code == 200 and request.url.path.startswith("/v1/"):
            data = json.loads(body)
            self.forwarded += data.get("usage", {}).get("tokens_forwarded", 0)
            if request.url.path == "/v1/generate":
                self.generated += sum(len(c["token_ids"]) for c in data["candidates"])
        return httpx.Response(response.status_code, headers=response.headers, content=body)


def images(n: int) -> list[bytes]:
    out = []
    for k in range(n):
        img = Image.new("RGB", (336, 336), (240, 240, 240))
        img.paste(Image.new("RGB", (80, 80), (40 * k % 255, 200, 90)), (30 + 20 * k, 60))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


async def run_search(url: str, pngs: list[bytes], naive: bool, cfg: CSRConfig) -> dict[str, Any]:
    meter = UsageMeter()
    async with AsyncScoringClient(url, transport=meter, timeout=600) as client:
        ids = [await client.upload_image(p) for p in pngs]
        scorer: Any = RescoringClient(client) if naive else client
        started = time.perf_counter()
        results = []
        for k, image_id in enumerate(ids):  # one prompt at a time: latency per prompt
            results.append(await csr(scorer, PromptItem(str(k), PROMPT, image_id), RunContext(),
                                     cfg))  # fmt: skip
        seconds = time.perf_counter() - started
    rewards = [(p.chosen_score.reward, p.rejected_score.reward)
               for r in results for p in r.pairs]  # fmt: skip
    return {"seconds": seconds, "forwarded": meter.forwarded, "generated": meter.generated,
            "rewards": rewards}  # fmt: skip


async def throughput(url: str, png: bytes, clients: int, seconds: float = 4.0) -> float:
    """Requests per second of /v1/reward (5 candidates each) with `clients` concurrent callers."""
    async with AsyncScoringClient(url, timeout=600, max_retries=0) as client:
        image_id = await client.upload_image(png)
        done = 0
        stop = time.perf_counter() + seconds

        async def caller(k: int) -> None:
            nonlocal done
            while time.perf_counter() < stop:
                cands = [
                    f"A red circle number {k}.",
                    "A blue square.",
                    "Two cats.",
                    "The sky is blue.",
                    "A green tree.",
                ]
                await client.reward(PROMPT, cands, image=image_id, prefix=f"Caller {k} says")
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(clients)))
        return done / (time.perf_counter() - t0)


def prompt_tokens(model_dir: Path) -> int:
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(model_dir)
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
        add_generation_prompt=True,
    )
    img = Image.open(io.BytesIO(images(1)[0]))
    return len(proc(text=text, images=img)["input_ids"][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3, help="sentences per response (max_steps)")
    ap.add_argument("--throughput-seconds", type=float, default=4.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results.json"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="selfreward-bench-"))
    spec = TinyVLMSpec(image_size=336, patch_size=14, text_hidden=128, text_layers=4)
    vlm, clip = build_tiny_vlm(root / "vlm", spec), build_tiny_clip(root / "clip")
    n_prompt = prompt_tokens(vlm)
    cfg = CSRConfig(max_new_tokens=20, max_steps=args.steps)
    pngs = images(args.prompts)
    report: dict[str, Any] = {
        "prompt_tokens": n_prompt,
        "prompts": args.prompts,
        "steps": args.steps,
        "config": "CSRConfig(max_new_tokens=20)",
    }
    for mode in ("naive", "optimized"):
        extra = ["--naive"] if mode == "naive" else []
        with local_service(vlm, clip, root / f"data-{mode}", *extra,
                           log_file=root / f"{mode}.log") as url:  # fmt: skip
            res = asyncio.run(run_search(url, pngs, mode == "naive", cfg))
        distinct = n_prompt * args.prompts + res["generated"]
        res["amplification"] = res["forwarded"] / distinct
        res["seconds_per_prompt"] = res["seconds"] / args.prompts
        report[mode] = res
        print(f"{mode:>9}: {res['seconds_per_prompt']:.2f} s/prompt, forwarded "
              f"{res['forwarded']} tokens for {distinct} distinct → amplification "
              f"{res['amplification']:.2f}")  # fmt: skip
    report["speedup"] = report["naive"]["seconds"] / report["optimized"]["seconds"]
    pairs = zip(report["naive"]["rewards"], report["optimized"]["rewards"], strict=True)
    same = all(abs(a - b) < 1e-3 for x, y in pairs for a, b in zip(x, y, strict=True))
    report["same_pairs_scores"] = same
    print(f"  speed-up: {report['speedup']:.1f}x  (scores identical: {same})")
    report["throughput"] = {}
    for batching in ("on", "off"):
        env = {} if batching == "on" else {"SELFREWARD_MAX_BATCH_SIZE": "1"}
        with local_service(vlm, clip, root / f"data-tp-{batching}", env=env) as url:
            for n in (1, 8, 32):
                rps = asyncio.run(throughput(url, pngs[0], n, args.throughput_seconds))
                report["throughput"][f"{batching}-{n}"] = rps
                print(f"  /v1/reward, batching {batching:>3}, {n:>2} clients: {rps:7.1f} req/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
