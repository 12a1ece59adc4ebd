"""The miniature world of the end-to-end demo: synthetic images of coloured shapes, a tiny CLIP,
and a tiny LLaVA-style VLM fine-tuned on captions with a language prior that makes it
hallucinate "companion" objects.

Light to import (no torch): the heavy parts load on first use. Entry points::

    from selfreward_vlm.world.build import build_world        # or: from world import build_world
    from selfreward_vlm.world.evaluate import evaluate, greedy_captions
    from selfreward_vlm.world.chair import chair               # pure Python

``evaluate`` is not re-exported here: the package attribute ``world.evaluate`` is the submodule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfreward_vlm.world.chair import ChairMetrics, chair

if TYPE_CHECKING:
    from selfreward_vlm.world.build import BuiltWorld, WorldConfig, build_world

__all__ = ["BuiltWorld", "ChairMetrics", "WorldConfig", "build_world", "chair"]

_LAZY = {"BuiltWorld", "WorldConfig", "build_world"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from selfreward_vlm.world import build

        return getattr(build, name)
    raise AttributeError(f"module 'world' has no attribute {name!r}")
