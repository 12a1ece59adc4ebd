"""Tiny LLaVA family models: LLaVA-1.5 (one flat block of image tokens), LLaVA-NeXT (any-
resolution tiles, `image_sizes`, newline tokens) and LLaVA-OneVision, plus the text-only LM."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfreward_vlm.tiny.common import TEXT_SIZES, build_bpe_tokenizer, save, sharpen

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{{ item['text'] }}{% endfor %}{% endif %}"
    "{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class TinyVLMSpec:
    """Sizes of the tiny LLaVA; the defaults make a model that loads and runs in milliseconds.

    `image_size=336, patch_size=14` reproduces LLaVA-1.5's 576 image tokens for benchmarks.
    """

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 32
    vision_layers: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = 400
    seed: int = 0


def build_tokenizer(vocab_size: int = 400) -> Any:  # -> PreTrainedTokenizerFast
    """A byte-level BPE trained on a few sentences, with `<image>` and a chat template."""
    return build_bpe_tokenizer(
        ["<image>"],
        CHAT_TEMPLATE,
        extra_special_tokens={"image_token": "<image>"},
        vocab_size=vocab_size,
        chat_words=False,
    )


def build_tiny_vlm(out_dir: str | Path, spec: TinyVLMSpec | None = None) -> Path:
    """Write a tiny `LlavaForConditionalGeneration` + `LlavaProcessor` to `out_dir`."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    spec = spec or TinyVLMSpec()
    out = Path(out_dir)
    tokenizer = build_tokenizer(spec.vocab_size)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=4,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_hidden * 2,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config).eval()
    sharpen(model)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_causal_lm(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny text-only `LlamaForCausalLM` + tokenizer (with chat template)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    sharpen(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# Any-resolution grid of the tiny LLaVA-NeXT: 32-px tiles, up to 2x2 of them.
NEXT_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
REAL_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def build_tiny_llava_next(out_dir: str | Path, seed: int = 0, real: bool = False) -> Path:
    """Write a tiny `LlavaNextForConditionalGeneration` + `LlavaNextProcessor`: a 32-px base
    view plus any-resolution tiles on `NEXT_PINPOINTS`, with image-newline tokens; `real`:
    LLaVA-NeXT's geometry (336-px views, 14-px patches, its 5 grid pinpoints) for benchmarks."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    size, patch = (336, 14) if real else (32, 8)
    pinpoints = REAL_PINPOINTS if real else NEXT_PINPOINTS
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=size,
        patch_size=patch,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        **TEXT_SIZES,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    sharpen(model)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    save(model, processor, out, tokenizer)
    return out


# LLaVA-OneVision (Qwen2 chat format): "<|im_start|>user <image>\n{prompt}<|im_end|>\n..."
ONEVISION_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] if content['type'] == 'image' %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] if content['type'] == 'text' %}"
    "{{ content['text'] }}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_llava_onevision(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny `LlavaOnevisionForConditionalGeneration` + `LlavaOnevisionProcessor`:
    SigLIP tower (all patches, no CLS), any-resolution tiles, Qwen2 decoder."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    from selfreward_vlm.tiny.common import VISION_SIZES

    out = Path(out_dir)
    tokenizer = build_bpe_tokenizer(
        ["<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        ONEVISION_TEMPLATE,
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk=None,
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    text = {
        "model_type": "qwen2",
        "vocab_size": len(tokenizer),
        **TEXT_SIZES,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    vision = {**VISION_SIZES, "model_type": "siglip_vision_model", "vision_use_head": False}
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=NEXT_PINPOINTS,
        vision_aspect_ratio="anyres_max_9",
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    sharpen(model)
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": 32, "width": 32}, image_grid_pinpoints=NEXT_PINPOINTS
    )
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(),
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        chat_template=ONEVISION_TEMPLATE,
    )
    save(model, processor, out, tokenizer)
    return out
