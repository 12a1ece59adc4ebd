"""Tiny Gemma 3: a SigLIP tower whose 16 patches are average-pooled to 4 soft tokens between
`<start_of_image>` and `<end_of_image>`, attended bidirectionally; Gemma's real chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfreward_vlm.tiny.common import VISION_SIZES, build_bpe_tokenizer, save

# Gemma 3 instruct template (system prompt folded into the first user turn; images as
# <start_of_image>, which the processor expands to the full soft-token block).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% if messages[0]['content'] is string %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
    "{% else %}{% set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' %}{% endif %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
MM_TOKENS = 4


def build_tokenizer() -> Any:
    """Gemma-style specials: `<bos>`, `<end_of_turn>` (EOS of a turn), image block tokens."""
    return build_bpe_tokenizer(
        ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
         "<image_soft_token>"],
        CHAT_TEMPLATE,
        bos="<bos>",
        eos="<end_of_turn>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )  # fmt: skip


def build_tiny_gemma3(out_dir: str | Path, seed: int = 0, real: bool = False) -> Path:
    """Write a tiny `Gemma3ForConditionalGeneration` + `Gemma3Processor`; `real`: Gemma 3's
    token geometry (896-px images, 14-px patches pooled to 256 soft tokens) for benchmarks."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
    )

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 16,  # layer 0 slides (window shorter than a prompt), layer 1 is global
        "layer_types": ["sliding_attention", "full_attention"],
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {**VISION_SIZES, "vision_use_head": False}
    size, tokens = (896, 256) if real else (32, MM_TOKENS)
    if real:
        vision.update(image_size=896, patch_size=14)
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=tokens,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    image_processor = Gemma3ImageProcessor(size={"height": size, "width": size})
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=tokens,
        chat_template=CHAT_TEMPLATE,
    )
    save(model, processor, out, tokenizer)
    return out
