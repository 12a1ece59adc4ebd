"""Tiny Idefics3 and SmolVLM: image splitting (a 64-px image becomes 32-px tiles with
`<row_i_col_j>` tags plus a `<global-img>` view), a pixel-shuffle connector (16 patches -> 4
tokens per tile), and each family's real chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfreward_vlm.tiny.common import TEXT_SIZES, VISION_SIZES, build_bpe_tokenizer, finish

_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}"
    "{% endif %}{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# Idefics3-8B-Llama3 starts with Llama-3's BOS text, SmolVLM with ChatML's.
IDEFICS3_TEMPLATE = "<|begin_of_text|>" + _TEMPLATE
SMOLVLM_TEMPLATE = "<|im_start|>" + _TEMPLATE
TILE = 32
IMAGE_SEQ_LEN = 4  # (32 / 8)^2 patches / scale_factor^2


def build_tokenizer(bos: str, template: str) -> Any:
    """Tokenizer with the image, fake-image, end-of-utterance and tile tags."""
    tags = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    return build_bpe_tokenizer(
        [*specials, *tags],
        template,
        bos=bos,
        eos="<end_of_utterance>",
        extra_special_tokens={
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "end_of_utterance_token": "<end_of_utterance>",
            "global_image_token": "<global-img>",
        },
        vocab_size=460,
    )


def _configs(tokenizer: Any, real: bool = False) -> dict[str, Any]:
    """`real`: SmolVLM's geometry (512-px tiles, 16-px patches, pixel shuffle by 4 -> 64
    tokens per tile)."""
    vision = {**VISION_SIZES, "image_size": TILE}
    if real:
        vision.update(image_size=512, patch_size=16)
    text = {
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        **TEXT_SIZES,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    return {
        "vision_config": vision,
        "text_config": text,
        "scale_factor": 4 if real else 2,
        "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
        "pad_token_id": tokenizer.pad_token_id,
    }


def build_tiny_idefics3(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny `Idefics3ForConditionalGeneration` + `Idefics3Processor`."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tokenizer = build_tokenizer("<|begin_of_text|>", IDEFICS3_TEMPLATE)
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=True,
        size={"longest_edge": 2 * TILE},
        max_image_size={"longest_edge": TILE},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=IDEFICS3_TEMPLATE,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(Idefics3Config(**_configs(tokenizer)))
    return finish(model, processor, tokenizer, out_dir)


def build_tiny_smolvlm(out_dir: str | Path, seed: int = 0, real: bool = False) -> Path:
    """Write a tiny `SmolVLMForConditionalGeneration` + `SmolVLMProcessor`; `real`: SmolVLM's
    token geometry (a 1024-px image -> 2x2 tiles of 512 px + a global view, 64 tokens each)
    for benchmarks."""
    import torch
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    tokenizer = build_tokenizer("<|im_start|>", SMOLVLM_TEMPLATE)
    tile = 512 if real else TILE
    image_processor = SmolVLMImageProcessor(
        do_image_splitting=True,
        size={"longest_edge": 2 * tile},
        max_image_size={"longest_edge": tile},
    )
    processor = SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=64 if real else IMAGE_SEQ_LEN,
        chat_template=SMOLVLM_TEMPLATE,
    )
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(SmolVLMConfig(**_configs(tokenizer, real)))
    return finish(model, processor, tokenizer, out_dir)
