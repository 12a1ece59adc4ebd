"""Object HalBench as SBSPO reports it: CHAIR on 300 COCO images, one of 8 description prompts
per image (RLHF-V / RLAIF-V, followed by SBSPO §3.1 "to improve the evaluation stability").

Response-level hallucination rate = CHAIR_S, mention-level = CHAIR_I, with the same COCO
vocabulary and scoring as `chair_eval`. The prompts are RLAIF-V's (Yu et al. 2024, Table 6,
"The list of instructions for Object HalBench"); image k of the seeded sample gets prompt
k mod 8, so every prompt is used about equally and a rerun asks the same questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfreward_vlm.client.eval import coco
from selfreward_vlm.client.eval.chair_eval import run_caption_benchmark
from selfreward_vlm.client.eval.runner import write_summary

HALBENCH_PROMPTS: tuple[str, ...] = (
    "Provide a thorough description of the given image.",
    "What is this photo about? Please answer in great detail.",
    "Provide a thorough description of the given picture.",
    "Explain the narrative or story that the image seems to convey, detailing each part that "
    "contributes to it.",
    "Please provide a detailed description of the image. Describe the visual elements, colors, "
    "shapes, textures, and any objects or people present along with the overall mood or "
    "atmosphere portrayed in the image.",
    "Please provide a detailed description of the image, including its visual elements, such as "
    "colors, shapes, textures, objects, and people.",
    "Provide an intricate description of the image, capturing its visual elements, including "
    "colors, shapes, textures, objects, and any people present.",
    "Compose a detailed account of the image, encompassing its visual characteristics, like "
    "colors, shapes, textures, objects, and any human subjects, by paying careful attention to "
    "the specifics.",
)


def halbench_prompt(k: int) -> str:
    """The prompt of the k-th sampled image."""
    return HALBENCH_PROMPTS[k % len(HALBENCH_PROMPTS)]


def run_object_halbench(
    service: str | Sequence[str], annotations: str | Path, images_dir: str | Path,
    out: str | Path, *, captions_annotations: str | Path | None = None, limit: int | None = 300,
    seed: int = 0, model: str = "base", max_new_tokens: int = 512,
    metric_compat: str = "default", **options: Any,
) -> dict[str, Any]:  # fmt: skip
    """Object HalBench of `model` (see the module docstring); `options` as `run_chair`'s."""
    vocab = coco.vocabulary(metric_compat)
    images = coco.sample_images(
        coco.load_coco(annotations, captions_annotations, vocab).values(), limit, seed
    )
    settings = {"model": model, "prompts": "object-halbench-8", "seed": seed,
                "max_new_tokens": max_new_tokens, "annotations": Path(annotations).name,
                "captions_annotations": Path(captions_annotations).name
                if captions_annotations else None}  # fmt: skip
    summary = run_caption_benchmark(
        "object_halbench", service, images, images_dir, out, halbench_prompt, settings,
        metric_compat, model=model, max_new_tokens=max_new_tokens, **options,
    )  # fmt: skip
    m = summary["metrics"]
    m["response_rate"], m["mention_rate"] = m["chair_s"], m["chair_i"]
    write_summary(out, summary)
    return summary
