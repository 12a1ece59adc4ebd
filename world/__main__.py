"""``python -m world build --out DIR [--seed 0] [--quick]``: build a world, then report the base
VLM's greedy CHAIR metrics on its evaluation images."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m world", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build (or resume) a world and evaluate its VLM")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--quick", action="store_true", help="small world for smoke tests")
    build.add_argument("--no-eval", action="store_true", help="skip the CHAIR evaluation")
    args = parser.parse_args(argv)

    from selfreward_vlm.world.build import MANIFEST_FILE, build_world
    from selfreward_vlm.world.evaluate import evaluate

    start = time.perf_counter()
    world = build_world(args.out, seed=args.seed, quick=args.quick)
    print(f"[world] built {world.root} in {time.perf_counter() - start:.0f} s")
    for name in ("images", "clip", "vlm", "prompts.jsonl", "splits.json", "eval_truth.json"):
        print(f"  {world.root / name}")
    print(f"  CLIP held-out: {json.dumps(world.manifest['stages']['clip'].get('heldout', {}))}")
    if not args.no_eval:
        start = time.perf_counter()
        metrics = evaluate(world.root)
        seconds = time.perf_counter() - start
        print(f"[world] base VLM, greedy, eval set ({seconds:.0f} s): {metrics.summary()}")
        world.manifest["base_eval"] = {**metrics.as_dict(), "seconds": round(seconds, 1)}
        (world.root / MANIFEST_FILE).write_text(json.dumps(world.manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
