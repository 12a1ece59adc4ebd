"""Idefics3 and SmolVLM: image splitting into tiles (`pixel_attention_mask` marks real pixels)
and a pixel-shuffle connector; the tiles' tokens are scattered in order; 1-D positions."""

from __future__ import annotations

from typing import Any, ClassVar

from selfreward_vlm.service.engine.families.base import Family


class Idefics3Family(Family):
    name: ClassVar[str] = "idefics3"
    model_types: ClassVar[tuple[str, ...]] = ("idefics3", "smolvlm")

    def feature_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {
            "pixel_values": inputs["pixel_values"],
            "pixel_attention_mask": inputs.get("pixel_attention_mask"),
        }
