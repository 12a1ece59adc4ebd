"""Benchmark: CSR pair generation, naive vs optimized, per model family at its real token
geometry, and at a size where the decoder's forward dominates.

Rows (random weights; the vision towers and decoders are small except in `llava-1.5-100m`, but
the images are each family's real resolution, so prompts carry the real image-token counts):

| row | image | image tokens |
|---|---|---|
| llava-1.5 | 336x336, 14-px patches | 576 |
| llava-next | 672x672, any-res 2x2 tiles + base view, newlines | 2928 |
| qwen2.5-vl | 448x448, 14-px patches merged 2x2 | 256 |
| smolvlm | 1024x1024, 2x2 tiles of 512 px + global view | 320 |
| gemma3 | 896x896, pooled | 256 |
| llava-1.5-100m | LLaVA-1.5 geometry, a ~100M-parameter Llama decoder (768 x 16 layers) | 576 |

Each row runs the same CSR search against two services on loopback: `--naive` with a client
that re-scores every candidate from scratch (the published code's way), and the optimized
service (image-feature and prefix-KV caches, log-probs from generation). It reports time per
prompt, tokens forwarded, the amplification (forwarded / distinct tokens of the search tree;
1.0 is the limit) and naive/optimized ratios of wall time and of forwarded tokens. Where HTTP
and Python overheads dominate (tiny decoders) the wall ratio stays far below the token ratio;
at `llava-1.5-100m` the forward dominates and the wall ratio approaches the token ratio.

    .venv/bin/python bench/bench_families.py [--rows qwen2.5-vl,gemma3] [--prompts 2]
        [--steps 2] [--out bench/families.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_csr import PROMPT, run_search

from selfreward_vlm.client.methods.csr import CSRConfig
from selfreward_vlm.localserver import local_service
from selfreward_vlm.tiny import TinyVLMSpec, build_tiny_clip, build_tiny_vlm
from selfreward_vlm.tiny.gemma3 import build_tiny_gemma3
from selfreward_vlm.tiny.idefics3 import build_tiny_smolvlm
from selfreward_vlm.tiny.llava import build_tiny_llava_next
from selfreward_vlm.tiny.qwen2_vl import build_tiny_qwen2_5_vl

LLAVA_15 = TinyVLMSpec(image_size=336, patch_size=14, text_hidden=128, text_layers=4)
DECODER_100M = TinyVLMSpec(
    image_size=336, patch_size=14, text_hidden=768, text_layers=16, text_heads=12
)
ROWS: dict[str, tuple[Callable[[Path], Path], tuple[int, int]]] = {
    "llava-1.5": (lambda d: build_tiny_vlm(d, LLAVA_15), (336, 336)),
    "llava-next": (lambda d: build_tiny_llava_next(d, real=True), (672, 672)),
    "qwen2.5-vl": (lambda d: build_tiny_qwen2_5_vl(d, real=True), (448, 448)),
    "smolvlm": (lambda d: build_tiny_smolvlm(d, real=True), (1024, 1024)),
    "gemma3": (lambda d: build_tiny_gemma3(d, real=True), (896, 896)),
    "llava-1.5-100m": (lambda d: build_tiny_vlm(d, DECODER_100M), (336, 336)),
}


def pictures(n: int, size: tuple[int, int]) -> list[bytes]:
    out = []
    w, h = size
    for k in range(n):
        img = Image.new("RGB", size, (240, 240, 240))
        patch = Image.new("RGB", (w // 4, h // 4), (40 * k % 255, 200, 90))
        img.paste(patch, (w // 10 + k * w // 20, h // 5))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def prompt_tokens(model_dir: Path, png: bytes) -> tuple[int, int]:
    """(prompt tokens, image tokens) of the benchmark prompt on this model."""
    from transformers import AutoConfig, AutoProcessor

    proc = AutoProcessor.from_pretrained(model_dir)
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = proc(text=text, images=Image.open(io.BytesIO(png)))["input_ids"][0]
    config = AutoConfig.from_pretrained(model_dir)
    image_id = getattr(config, "image_token_id", None) or config.image_token_index
    return len(ids), sum(1 for i in ids if i == image_id)


def decoder_params(model_dir: Path) -> int:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    return sum(p.numel() for p in model.get_decoder().parameters())


def bench_row(name: str, root: Path, clip: Path, args: argparse.Namespace) -> dict[str, Any]:
    build, size = ROWS[name]
    model = build(root / name)
    pngs = pictures(args.prompts, size)
    n_prompt, n_image = prompt_tokens(model, pngs[0])
    cfg = CSRConfig(max_new_tokens=args.max_new_tokens, max_steps=args.steps)
    row: dict[str, Any] = {
        "prompt_tokens": n_prompt,
        "image_tokens": n_image,
        "decoder_params": decoder_params(model),
        "image_size": list(size),
    }
    rewards = {}
    for mode in ("naive", "optimized"):
        extra = ["--naive"] if mode == "naive" else []
        with local_service(model, clip, root / f"data-{name}-{mode}", *extra,
                           log_file=root / f"{name}-{mode}.log", timeout=900) as url:  # fmt: skip
            res = asyncio.run(run_search(url, pngs, mode == "naive", cfg))
        rewards[mode] = [r for pair in res["rewards"] for r in pair]
        distinct = n_prompt * args.prompts + res["generated"]
        row[mode] = {
            "seconds_per_prompt": res["seconds"] / args.prompts,
            "forwarded": res["forwarded"],
            "distinct": distinct,
            "amplification": res["forwarded"] / distinct,
        }
    naive, optimized = rewards["naive"], rewards["optimized"]
    row["same_pair_scores"] = len(naive) == len(optimized) and all(
        abs(a - b) <= 1e-3 * max(1.0, abs(a)) for a, b in zip(naive, optimized, strict=True)
    )
    row["wall_ratio"] = row["naive"]["seconds_per_prompt"] / row["optimized"]["seconds_per_prompt"]
    row["token_ratio"] = row["naive"]["forwarded"] / row["optimized"]["forwarded"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="sentences per response (max_steps)")
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("bench/families.json"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="selfreward-bench-families-"))
    clip = build_tiny_clip(root / "clip")
    report: dict[str, Any] = {"prompts": args.prompts, "steps": args.steps,
                              "max_new_tokens": args.max_new_tokens, "rows": {}}  # fmt: skip
    print(f"{'row':>15} {'tokens':>7} {'naive s/p':>9} {'opt s/p':>8} {'amp naive':>9} "
          f"{'amp opt':>7} {'wall x':>6} {'tokens x':>8}")  # fmt: skip
    for name in args.rows.split(","):
        row = bench_row(name, root, clip, args)
        report["rows"][name] = row
        print(f"{name:>15} {row['prompt_tokens']:>7} {row['naive']['seconds_per_prompt']:>9.2f} "
              f"{row['optimized']['seconds_per_prompt']:>8.2f} "
              f"{row['naive']['amplification']:>9.2f} {row['optimized']['amplification']:>7.2f} "
              f"{row['wall_ratio']:>6.1f} {row['token_ratio']:>8.1f}", flush=True)  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))  # after every row: partial results
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
