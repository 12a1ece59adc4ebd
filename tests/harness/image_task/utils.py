"""The image task's hooks for lmms-eval: each item's image is a plain square of its color,
drawn here (no image files, no download)."""

from __future__ import annotations

from typing import Any

from PIL import Image


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), tuple(doc["color"]))]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: Any = None) -> str:
    return str(doc["question"])
