"""Captions of the world's VLM (optionally with a LoRA adapter) and their CHAIR metrics: greedy
ones, and seeded samples (`sample`) for the properties greedy decoding hides.

Only this module reads ``eval_truth.json``: evaluation ground truth never reaches rewards,
search or training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from selfreward_vlm.world.chair import ChairMetrics, chair
from selfreward_vlm.world.spec import DEFAULT_PROMPT

EVAL_TRUTH_FILE = "eval_truth.json"
SPLITS_FILE = "splits.json"


def load_vlm(model_dir: str | Path, adapter_dir: str | Path | None = None) -> tuple[Any, Any]:
    """Load the VLM and its processor (CPU, float32, eval mode), with a PEFT adapter if given.

    Returns ``(model, processor)``: a ``LlavaForConditionalGeneration`` (or a ``PeftModel``
    around it) and a ``LlavaProcessor``.
    """
    model: Any = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(str(model_dir))
    if adapter_dir is not None:
        from peft import PeftModel  # only needed with an adapter

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, processor


def decode_generated(tokenizer: Any, ids: Sequence[int]) -> str:
    """Text of generated ids up to the first EOS. Other special tokens stay visible, so a
    generated ``<image>`` shows up (and counts as malformed) instead of vanishing."""
    eos = tokenizer.eos_token_id
    ids = list(ids)
    if eos in ids:
        ids = ids[: ids.index(eos)]
    return str(tokenizer.decode(ids, skip_special_tokens=False)).strip()


@dataclass(frozen=True)
class Sampling:
    """Sampled captions: `n` per image from the model's own distribution (temperature 1, no
    top-k or top-p cut by default), seeded. Greedy decoding takes each sentence's majority
    form, so a property the model gives a minority of its sentences (a disfluency in 15 % of
    them) never reaches a greedy caption; samples show it at the rate the model produces it.

    The seed starts one random stream for the whole set, batch after batch: a rerun gives the
    same samples, and two models draw the same numbers for the first batch; later batches'
    draws depend on how many steps the earlier ones took, so they are not paired across
    models."""

    n: int = 4
    temperature: float = 1.0
    seed: int = 0


@torch.inference_mode()
def caption_images(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    *,
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    sample: Sampling | None = None,
) -> list[str]:
    """Captions of already-loaded images with an already-loaded model: one greedy caption per
    image, or with `sample`, `sample.n` sampled captions per image (image by image: those of
    image i at ``[i * n, (i + 1) * n)``), the same on a rerun."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    tokenizer = processor.tokenizer
    options: dict[str, Any] = {"do_sample": False}
    if sample is not None:
        torch.manual_seed(sample.seed)  # one stream for the whole set, batch after batch
        options = {"do_sample": True, "temperature": sample.temperature, "top_k": 0,
                   "top_p": 1.0, "num_return_sequences": sample.n}  # fmt: skip
    captions: list[str] = []
    for start in range(0, len(images), batch_size):
        batch = list(images[start : start + batch_size])
        inputs = processor(
            text=[text] * len(batch), images=batch, return_tensors="pt", padding=True
        )
        out = model.generate(
            **inputs,
            **options,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        captions.extend(decode_generated(tokenizer, row.tolist()) for row in new_tokens)
    return captions


def greedy_captions(
    model_dir: str | Path,
    images_dir: str | Path,
    image_names: Sequence[str],
    adapter_dir: str | Path | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    prompt: str = DEFAULT_PROMPT,
) -> list[str]:
    """Greedy (batched, CPU) captions of ``images_dir / name`` for each name, in order."""
    model, processor = load_vlm(model_dir, adapter_dir)
    return caption_images(
        model,
        processor,
        open_images(images_dir, image_names),
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )


def open_images(images_dir: str | Path, image_names: Sequence[str]) -> list[Image.Image]:
    """``images_dir / name`` for each name, in order, as RGB images."""
    return [Image.open(Path(images_dir) / name).convert("RGB") for name in image_names]


def eval_set(world_dir: str | Path, limit: int | None = None) -> tuple[list[str], list[list[str]]]:
    """Evaluation image names and their ground-truth objects (``"red circle"``), in split order."""
    world = Path(world_dir)
    names: list[str] = json.loads((world / SPLITS_FILE).read_text())["eval"]
    truth: dict[str, list[str]] = json.loads((world / EVAL_TRUTH_FILE).read_text())
    names = names[:limit] if limit is not None else names
    return names, [truth[n] for n in names]


def chair_for_world(
    world_dir: str | Path, captions: Sequence[str], limit: int | None = None
) -> ChairMetrics:
    """CHAIR metrics of captions of the first ``len(captions)`` evaluation images (any method)."""
    _, truths = eval_set(world_dir, limit if limit is not None else len(captions))
    return chair(captions, truths)


def evaluate(
    world_dir: str | Path,
    model_dir: str | Path | None = None,
    adapter_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    prompt: str = DEFAULT_PROMPT,
) -> ChairMetrics:
    """Greedy-caption the evaluation images and score them with CHAIR.

    ``model_dir`` defaults to the world's own VLM (``world_dir/vlm``); ``adapter_dir`` is an
    optional PEFT adapter on it; ``limit`` keeps the first ``limit`` evaluation images.
    """
    world = Path(world_dir)
    names, truths = eval_set(world, limit)
    captions = greedy_captions(
        model_dir if model_dir is not None else world / "vlm",
        world / "images",
        names,
        adapter_dir=adapter_dir,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        prompt=prompt,
    )
    return chair(captions, truths)
