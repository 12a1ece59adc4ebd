"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: dynamic resolution (`image_grid_thw`), 3-D M-RoPE.

Image tokens get (temporal, height, width) positions, so after an image the next text position
is `max(position) + 1`, fewer than the token count: the prefix state carries that offset
(`rope_delta`), and every text token after it sits at `length + rope_delta` in all three axes,
exactly what the model's `compute_3d_position_ids` gives during its own generation. Qwen3-VL's
DeepStack features ride along inside the cached encoder output.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from selfreward_vlm.service.engine.families.base import Family


class QwenVLFamily(Family):
    name: ClassVar[str] = "qwen_vl"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

    def feature_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}

    def forward_kwargs(self, inputs: dict[str, Any], ids: torch.Tensor) -> dict[str, Any]:
        """Explicit M-RoPE positions from the model's own `get_rope_index` (so the model's
        stateful `rope_deltas` attribute is neither read nor trusted)."""
        types = self.token_type_inputs(inputs, ids.shape[-1]).get("mm_token_type_ids")
        if types is None:  # a processor that does not return them: image tokens are type 1
            types = (ids == self.inner.config.image_token_id).long()
        grid = inputs["image_grid_thw"].to(ids.device)
        positions, _ = self.inner.get_rope_index(
            ids, mm_token_type_ids=types.to(ids.device), image_grid_thw=grid
        )
        return {"position_ids": positions, "image_grid_thw": grid}

    def rope_delta(self, ids: torch.Tensor, inputs: dict[str, Any], kwargs: dict[str, Any]) -> int:
        return int(kwargs["position_ids"].max()) + 1 - ids.shape[-1]
