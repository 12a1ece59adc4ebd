"""How often the CSR search's sentence candidates are malformed, by decoding strategy.

On a `--full` world (its SFT captions carry a disfluency in 15 % of the sentences), the
world's VLM proposes first-sentence candidates for the first `--prompts` prompt images, as the
CSR search asks the service for them (`/v1/generate`, 5 candidates, a sentence each, at most
12 tokens), under three strategies: diverse beam search with the search's diversity penalty
(3.0), the same without the penalty, and sampling at temperature 1. Prints the share of
candidates the evaluator counts as malformed under each.

    .venv/bin/python bench/candidate_form.py runs/demo-full/seed0/world-seed0-disfluent0.15
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from selfreward_vlm.client import ScoringClient
from selfreward_vlm.localserver import local_service
from selfreward_vlm.world.chair import is_malformed

STRATEGIES: dict[str, dict[str, Any]] = {
    "diverse beam, diversity penalty 3.0 (the CSR search's)": {
        "strategy": "diverse_beam", "num_beam_groups": 5, "diversity_penalty": 3.0},
    "diverse beam, no diversity penalty": {
        "strategy": "diverse_beam", "num_beam_groups": 5, "diversity_penalty": 0.0},
    "sampling, temperature 1": {"strategy": "sample", "temperature": 1.0, "seed": 0},
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("world", type=Path, help="a built world (selfreward world, demo --full)")
    ap.add_argument("--prompts", type=int, default=40, help="prompt images to propose for")
    args = ap.parse_args()
    prompts = [json.loads(line) for line in (args.world / "prompts.jsonl").read_text().splitlines()]
    prompts = prompts[: args.prompts]
    with local_service(args.world / "vlm", args.world / "clip", tempfile.mkdtemp(),
                       "--torch-threads", "1") as url, ScoringClient(url) as client:  # fmt: skip
        images = [client.upload_image(args.world / "images" / p["image"]) for p in prompts]
        for label, options in STRATEGIES.items():
            texts = [
                c.text.strip()
                for p, image in zip(prompts, images, strict=True)
                for c in client.generate(
                    p["prompt"],
                    image=image,
                    n=5,
                    stop="sentence",
                    stop_text=".",
                    max_new_tokens=12,
                    **options,
                ).candidates
            ]
            texts = [t for t in texts if t]  # an empty candidate is the end of the response
            bad = sum(map(is_malformed, texts))
            print(f"{label}: {bad} of {len(texts)} candidates malformed ({bad / len(texts):.2f})")


if __name__ == "__main__":
    main()
