"""Gemma 3: SigLIP features average-pooled to a fixed block of soft tokens that attend to each
other bidirectionally. The prefix forward passes `token_type_ids` (1 on image tokens), so the
model builds its own bidirectional block mask; text after the prefix is plainly causal, which
the decoder stack does by default (sliding-window layers included)."""

from __future__ import annotations

from typing import ClassVar

from selfreward_vlm.service.engine.families.base import Family


class Gemma3Family(Family):
    name: ClassVar[str] = "gemma3"
    model_types: ClassVar[tuple[str, ...]] = ("gemma3",)
