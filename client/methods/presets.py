"""The presets' old path: they live in `core.presets` (the trainer reads them too)."""

from selfreward_vlm.core.presets import (
    PRESET_NAMES,
    PRESETS,
    Preset,
    get_preset,
    method_for_preset,
    method_options,
    train_options,
)

__all__ = [
    "PRESETS",
    "PRESET_NAMES",
    "Preset",
    "get_preset",
    "method_for_preset",
    "method_options",
    "train_options",
]
