"""Model families: one small module per VLM architecture behind one interface (`Family`),
picked by `config.model_type`, and the generic path for any other image-text-to-text model.

| family     | model types                           | what differs                              |
|------------|---------------------------------------|-------------------------------------------|
| llava      | llava                                 | one flat block of image tokens            |
| llava_next | llava_next, llava_onevision           | any-res tiles, `image_sizes`, newlines    |
| qwen_vl    | qwen2_vl, qwen2_5_vl, qwen3_vl        | `image_grid_thw`, 3-D M-RoPE, rope delta  |
| idefics3   | idefics3, smolvlm                     | image splitting, pixel shuffle            |
| gemma3     | gemma3                                | bidirectional image block                 |
| generic    | anything else AutoModelForImageTextToText loads | the model's own full forward    |
"""

from __future__ import annotations

from typing import Any

from selfreward_vlm.service.engine.families.base import Family, Prompt, UnsupportedModelError
from selfreward_vlm.service.engine.families.gemma3 import Gemma3Family
from selfreward_vlm.service.engine.families.generic import GenericFamily
from selfreward_vlm.service.engine.families.idefics3 import Idefics3Family
from selfreward_vlm.service.engine.families.llava import LlavaFamily, LlavaNextFamily
from selfreward_vlm.service.engine.families.qwen_vl import QwenVLFamily

FAST_FAMILIES: tuple[type[Family], ...] = (
    LlavaFamily,
    LlavaNextFamily,
    QwenVLFamily,
    Idefics3Family,
    Gemma3Family,
)
FAST_MODEL_TYPES = {t: cls for cls in FAST_FAMILIES for t in cls.model_types}

__all__ = [
    "FAST_MODEL_TYPES",
    "Family",
    "GenericFamily",
    "Prompt",
    "UnsupportedModelError",
    "check_supported",
    "pick_family",
]


class TextFamily(Family):
    """A text-only causal LM: the decoder stack, 1-D positions, no images."""

    name = "text"


# Decoder-only models whose scoring needs more than "prompt, then causal text": refused by name.
UNSUPPORTED: dict[str, str] = {
    "paligemma": "a prefix-LM: the prompt attends bidirectionally and a scored response must be "
    "marked as suffix (token_type_ids=1), which neither path does",
    "mllama": "its per-token cross_attention_mask (1, T, images, tiles) must be extended over "
    "prefix and continuation with the last prompt row (as its generate does), which neither "
    "path does: the generic path only extends (1, T) inputs",
}


def check_supported(config: Any) -> None:
    """Raise `UnsupportedModelError` naming what the service cannot score correctly."""
    model_type = getattr(config, "model_type", "?")
    if model_type in UNSUPPORTED:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported: {UNSUPPORTED[model_type]}"
        )
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(config, "is_encoder_decoder", False) or getattr(text, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"model_type {model_type!r} is an encoder-decoder model: the service scores "
            "continuations of a decoder-only model (log p(token | image, prompt, prefix)); "
            "encoder-decoder VLMs are not supported"
        )


def pick_family(model: Any, kind: str, path: str = "auto") -> Family:
    """The family module for `model` (`path="generic"` forces the generic path)."""
    check_supported(model.config)
    if kind != "vlm":
        return TextFamily(model)
    if path == "generic":
        return GenericFamily(model)
    cls = FAST_MODEL_TYPES.get(model.config.model_type, GenericFamily)
    return cls(model)
