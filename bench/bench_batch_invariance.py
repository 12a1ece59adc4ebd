"""How often does batching change a search's tokens? Alone vs together, many searches.

A GEMM over 40 rows may sum in another order than over 5 (the kernel's blocking depends on the
row count), so a row's log-probs can differ in the last bits with its neighbours; where two
candidates tie to within that, the search can take the other one. This script measures it:
N searches (diverse beam, beam, sampling and greedy, different prompts and prefixes) run alone
(`decoding.generate`), then together in groups of `--group` (`ragged.decode_step`), and it
counts the searches whose candidates' token ids differ and the largest log-prob difference
among those that agree.

    .venv/bin/python bench/bench_batch_invariance.py [--model tiny|smollm2] [--searches 1000]
        [--group 16] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from selfreward_vlm.service.engine import ragged
from selfreward_vlm.service.engine.decoding import GenerateItem, Generation, generate
from selfreward_vlm.service.engine.loader import load_models
from selfreward_vlm.service.settings import ServiceSettings
from selfreward_vlm.tiny import build_tiny_causal_lm
from selfreward_vlm.tiny.smollm2 import build_smollm2

ROOT = Path(__file__).resolve().parent.parent
WORDS = [
    "red",
    "blue",
    "small",
    "large",
    "circle",
    "square",
    "dog",
    "cat",
    "tree",
    "house",
    "boat",
    "car",
    "river",
    "sky",
]


def make_items(n: int, max_new_tokens: int, seed: int = 0) -> list[GenerateItem]:
    rnd = random.Random(seed)
    out = []
    for k in range(n):
        prompt = "Describe " + " ".join(rnd.choices(WORDS, k=rnd.randint(1, 8))) + "."
        prefix = " ".join(rnd.choices(WORDS, k=rnd.randint(0, 6)))
        strategy = rnd.choice(["diverse_beam", "diverse_beam", "beam", "sample", "greedy"])
        out.append(GenerateItem("base", prompt, prefix=prefix, strategy=strategy,
                                n=5 if strategy != "beam" else 4, seed=k, stop="eos",
                                max_new_tokens=max_new_tokens))  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["tiny", "smollm2"])
    ap.add_argument("--searches", type=int, default=1000)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "smollm2":
            path = build_smollm2(ROOT / ".cache" / "models" / "smollm2-135m-instruct")
        else:
            path = build_tiny_causal_lm(Path(tmp) / "lm")
        engine = load_models(ServiceSettings(model=str(path), device="cpu")).engine
        engine.prefix_cache = type(engine.prefix_cache)(0, 0)  # no cache: every search alike
        items = make_items(args.searches, args.max_new_tokens)
        t0 = time.perf_counter()
        alone = [generate(engine, it) for it in items]
        together = []
        with torch.inference_mode(), engine.lock:
            for start in range(0, len(items), args.group):
                gens = [
                    Generation(engine, it, batched=True) for it in items[start : start + args.group]
                ]
                while any(g.pending for g in gens):
                    live = [g for g in gens if g.pending]
                    for g, logp in zip(live, ragged.decode_step(engine, live), strict=True):
                        g.advance(logp)
                together += [g.result for g in gens]
    differ, worst, tokens = 0, 0.0, 0
    for a, b in zip(alone, together, strict=True):
        assert b is not None
        if [c.token_ids for c in a] != [c.token_ids for c in b]:
            differ += 1
            continue
        for x, y in zip(a, b, strict=True):
            tokens += len(x.token_ids)
            diffs = [abs(p - q) for p, q in zip(x.token_logprobs, y.token_logprobs, strict=True)]
            worst = max([worst, *diffs])
    result = {"model": args.model, "searches": len(items), "group": args.group,
              "max_new_tokens": args.max_new_tokens, "searches_with_other_tokens": differ,
              "max_logprob_diff_when_equal": worst, "tokens_compared": tokens,
              "seconds": time.perf_counter() - t0}  # fmt: skip
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
