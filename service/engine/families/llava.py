"""LLaVA-1.5 (one flat block of image tokens), LLaVA-NeXT and LLaVA-OneVision (any-resolution
tiles packed with image-newline tokens, `image_sizes`): 1-D positions, causal mask."""

from __future__ import annotations

from typing import Any, ClassVar

from selfreward_vlm.service.engine.families.base import Family


class LlavaFamily(Family):
    name: ClassVar[str] = "llava"
    model_types: ClassVar[tuple[str, ...]] = ("llava",)

    def feature_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        cfg = self.inner.config
        kwargs = {
            "pixel_values": inputs["pixel_values"],
            "vision_feature_layer": cfg.vision_feature_layer,
            "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
        }
        if "image_sizes" in inputs:
            kwargs["image_sizes"] = inputs["image_sizes"]
        return kwargs


class LlavaNextFamily(LlavaFamily):
    """`get_image_features` packs the tiles (base view, then the grid with newlines) itself."""

    name: ClassVar[str] = "llava_next"
    model_types: ClassVar[tuple[str, ...]] = ("llava_next", "llava_onevision")

    def feature_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        kwargs = super().feature_kwargs(inputs)
        if "batch_num_images" in inputs:  # OneVision: images per prompt, to split the tiles
            kwargs["batch_num_images"] = inputs["batch_num_images"]
        return kwargs
