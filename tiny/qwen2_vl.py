"""Tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL: dynamic resolution (8-px patches merged 2x2, so a
32x32 image is 4 image tokens and 64x48 is 12), `image_grid_thw`, 3-D M-RoPE positions, and the
real ChatML template with `<|vision_start|><|image_pad|><|vision_end|>`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfreward_vlm.tiny.common import TEXT_SIZES, build_bpe_tokenizer, finish

# Qwen2-VL-Instruct's template (image and text parts; video and vision ids left out).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
PATCH = 8
MERGE = 2
# The Qwen2.5-VL / Qwen3-VL vision tower (Qwen2-VL's names its sizes differently).
VISION: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 4,
    "patch_size": PATCH,
    "spatial_merge_size": MERGE,
    "out_hidden_size": TEXT_SIZES["hidden_size"],
}


def build_tokenizer() -> Any:
    """ChatML tokenizer: EOS `<|im_end|>`, pad `<|endoftext|>`, no BOS (as Qwen's)."""
    return build_bpe_tokenizer(
        SPECIALS,
        CHAT_TEMPLATE,
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk=None,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def _text_config(tokenizer: Any, interleaved: bool = False) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0}
    # head_dim 16 -> 8 rotary frequencies split over (temporal, height, width)
    rope["mrope_section"] = [2, 3, 3]
    if interleaved:
        rope["mrope_interleaved"] = True
    return {
        "vocab_size": len(tokenizer),
        **TEXT_SIZES,
        "rope_parameters": rope,
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }


def _processor(processor_cls: Any, tokenizer: Any, real: bool = False) -> Any:
    """Tiny: 8-px patches, at most 64x64 pixels. Real (benchmarks): Qwen's 14-px patches and
    up to 448x448 pixels, so a 448x448 image is its real 256 image tokens."""
    from transformers import Qwen2VLImageProcessor

    image_processor = Qwen2VLImageProcessor(
        patch_size=14 if real else PATCH,
        merge_size=MERGE,
        temporal_patch_size=2,
        min_pixels=56 * 56 if real else 32 * 32,
        max_pixels=448 * 448 if real else 64 * 64,
    )
    return _without_video(processor_cls, image_processor, tokenizer)


def _without_video(processor_cls: Any, image_processor: Any, tokenizer: Any) -> Any:
    """The processor with a video processor only if the class insists on one."""
    from transformers import Qwen2VLVideoProcessor

    video = Qwen2VLVideoProcessor(patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2)
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video,
        chat_template=CHAT_TEMPLATE,
    )


def _ids(tokenizer: Any) -> dict[str, Any]:
    return {
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }


def build_tiny_qwen2_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny `Qwen2VLForConditionalGeneration` + `Qwen2VLProcessor`."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    tokenizer = build_tokenizer()
    vision = {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": TEXT_SIZES["hidden_size"],
        "mlp_ratio": 2,
        "num_heads": 4,
        "patch_size": PATCH,
        "spatial_merge_size": MERGE,
    }
    config = Qwen2VLConfig(
        text_config=_text_config(tokenizer), vision_config=vision, **_ids(tokenizer)
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    return finish(model, _processor(Qwen2VLProcessor, tokenizer), tokenizer, out_dir)


def build_tiny_qwen2_5_vl(out_dir: str | Path, seed: int = 0, real: bool = False) -> Path:
    """Write a tiny `Qwen2_5_VLForConditionalGeneration` + `Qwen2_5_VLProcessor` (windowed
    vision attention: block 0 windowed, block 1 full); `real`: Qwen2.5-VL's token geometry
    (14-px patches, 112-px windows, 448x448 -> 256 image tokens) for benchmarks."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )

    tokenizer = build_tokenizer()
    vision = {**VISION, "window_size": 32, "fullatt_block_indexes": [1]}
    if real:
        vision.update(patch_size=14, window_size=112)
    config = Qwen2_5_VLConfig(
        text_config=_text_config(tokenizer), vision_config=vision, **_ids(tokenizer)
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    processor = _processor(Qwen2_5_VLProcessor, tokenizer, real)
    return finish(model, processor, tokenizer, out_dir)


def build_tiny_qwen3_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny `Qwen3VLForConditionalGeneration` + `Qwen3VLProcessor` (interleaved
    M-RoPE, DeepStack features injected into decoder layer 0)."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    tokenizer = build_tokenizer()
    text = _text_config(tokenizer, interleaved=True)
    text["head_dim"] = 16
    vision = {**VISION, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **_ids(tokenizer))
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    return finish(model, _processor(Qwen3VLProcessor, tokenizer), tokenizer, out_dir)
