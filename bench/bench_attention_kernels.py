"""What a decode step's attention over an image prefix costs on this CPU, by kernel.

In a continuously batched step on the `llava-1.5-100m` row (`bench_concurrency.py`), each
search's 5 beams attend to their own ~620-token image + prompt prefix, held once per search
(`engine.ragged`): per layer and search, scores = q (12 heads x 5 rows) @ K^T and out = w @ V,
GEMMs of 5 rows over a prefix K and V of 1.9 MB each. Eight searches x 16 layers read about
490 MB of prefix KV a step, so the step's attention is bound by how fast these skinny GEMMs
read memory. This script measures that rate for the two products and for a streaming reduction
over the same tensors (what the memory gives a kernel that streams), on one torch thread, and
the same GEMMs when their operands are already in the cache. It also times the engine's own
`_attend_shared` over one step's worth of searches and layers.

`--ops` counts instead the PyTorch operator calls of one real decode step on the
`llava-1.5-100m` row (`bench_concurrency.py`'s model and searches) with 1, 8 and 16 searches
live, and how many of them the per-search attention and KV-buffer writes make: on a GPU, where
eager PyTorch spends a few µs of CPU on every call, these counts bound what batching can gain.

    .venv/bin/python bench/bench_attention_kernels.py [--prefix 620] [--searches 8]
    .venv/bin/python bench/bench_attention_kernels.py --ops [--searches 1,8,16]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from selfreward_vlm.service.engine import batcher, ragged
from selfreward_vlm.service.engine.ragged import _attend_shared

HEADS, HEAD_DIM, LAYERS, ROWS, SUFFIX = 12, 64, 16, 5, 12  # llava-1.5-100m's decoder, 5 beams


def best_of(f: Callable[[], Any], repeats: int = 3) -> float:
    f()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


def count_ops(searches: list[int]) -> None:
    """Operator calls of the 10th decode step of `n` searches started together, for each n."""
    import bench_concurrency as bc  # this folder's; `python bench/...` puts it on the path
    from transformers import AttentionInterface

    from selfreward_vlm.service.engine.loader import load_models
    from selfreward_vlm.service.settings import ServiceSettings

    def tagged(f: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            with record_function("per-search"):
                return f(*args, **kwargs)

        return run

    AttentionInterface.register(ragged.RAGGED_ATTENTION, tagged(ragged.ragged_attention))
    ragged.RaggedLayer.update = tagged(ragged.RaggedLayer.update)  # type: ignore[method-assign]
    step, seen = batcher.decode_step, 0

    def counting_step(engine: Any, gens: Any) -> Any:
        nonlocal seen
        seen += 1
        if seen != 10:
            return step(engine, gens)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = step(engine, gens)
        events = [e for e in prof.events() if e.name.startswith("aten::")]

        def per_search(e: Any) -> bool:
            while (e := e.cpu_parent) is not None:
                if e.name == "per-search":
                    return True
            return False

        inside = sum(per_search(e) for e in events)
        rows = sum(g.live_rows for g in gens)
        print(f"  {len(gens):2d} searches ({rows:3d} rows): {len(events):6,d} operator calls, "
              f"{inside:6,d} in the per-search attention and KV writes")  # fmt: skip
        return out

    batcher.decode_step = counting_step
    path, image = bc.build_row("llava-1.5-100m", Path(tempfile.mkdtemp()))
    settings = ServiceSettings(model=str(path), device="cpu", torch_threads=1,
                               max_live_rows=5 * max(searches))  # fmt: skip
    models = load_models(settings)
    print("one decode step on llava-1.5-100m (16 layers), by searches live:")
    for n in searches:
        models.engine.prefix_cache.clear()
        seen = 0
        asyncio.run(bc.run(models, settings, bc.items(n, image, 24), n > 1, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", type=int, default=620, help="prefix tokens (image + prompt)")
    ap.add_argument("--searches", help="searches in the step (default 8; --ops: 1,8,16)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ops", action="store_true", help="count operator calls per decode step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.ops:
        count_ops([int(n) for n in (args.searches or "1,8,16").split(",")])
        return
    args.searches = int(args.searches or 8)
    torch.manual_seed(0)
    n = args.searches * LAYERS  # one step: every search's prefix in every layer
    keys = [torch.randn(HEADS, args.prefix, HEAD_DIM) for _ in range(n)]
    values = [torch.randn(HEADS, args.prefix, HEAD_DIM) for _ in range(n)]
    q = torch.randn(HEADS, ROWS, HEAD_DIM)
    w = torch.softmax(torch.randn(HEADS, ROWS, args.prefix), -1)
    one = keys[0].numel() * 4
    print(f"{args.searches} searches x {LAYERS} layers, prefix {args.prefix} tokens: "
          f"K and V {one / 1e6:.2f} MB each per search and layer, "
          f"{2 * n * one / 1e6:.0f} MB a step; {args.threads} torch thread(s)")  # fmt: skip

    def rate(name: str, f: Callable[[], Any], nbytes: int) -> None:
        seconds = best_of(f)
        print(f"  {name:58s} {nbytes / seconds / 1e9:6.1f} GB/s  ({seconds * 1000:6.1f} ms)")

    rate("scores q @ K^T (5-row GEMM), K from memory",
         lambda: [q @ k.transpose(-1, -2) for k in keys], n * one)  # fmt: skip
    rate("out w @ V (5-row GEMM), V from memory", lambda: [w @ v for v in values], n * one)
    rate("a streaming reduction over K (K.sum())", lambda: [k.sum() for k in keys], n * one)
    hot = keys[0]
    rate("scores q @ K^T, the same K again and again (in cache)",
         lambda: [q @ hot.transpose(-1, -2) for _ in keys], n * one)  # fmt: skip
    gens = [
        (torch.randn(ROWS, HEADS, 1, HEAD_DIM), k[None], v[None],
         torch.randn(ROWS, HEADS, SUFFIX, HEAD_DIM), torch.randn(ROWS, HEADS, SUFFIX, HEAD_DIM))
        for k, v in zip(keys, values, strict=True)
    ]  # fmt: skip
    seconds = best_of(lambda: [_attend_shared(*g, None, None) for g in gens])
    print(
        f"  the engine's attention (`ragged._attend_shared`), one step: "
        f"{seconds * 1000:.1f} ms, {2 * n * one / seconds / 1e9:.1f} GB/s of prefix KV"
    )


if __name__ == "__main__":
    main()
