"""The tiny VLM's word-level tokenizer, image processor and LLaVA-1.5-style processor.

The tokenizer is a ``tokenizers`` WordLevel model: one token per world word, ``"."`` its own token
(the service ends a candidate sentence at ``"."``), and a WordPiece decoder whose clean-up glues
``"."``/``"?"`` to the previous word, so ``decode(encode(caption)) == caption``.
No special token is added automatically: ``add_special_tokens=True`` and ``False`` give the same
ids, so callers that tokenize prompts either way (TRL's collator does it without) agree.
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

from selfreward_vlm.tiny.common import CLIP_MEAN, CLIP_STD
from selfreward_vlm.world.scenes import IMAGE_SIZE
from selfreward_vlm.world.spec import world_words

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, IMAGE)
PATCH_SIZE = 8
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # CLS dropped ("default" feature strategy)

# LLaVA-1.5 style: "USER: <image>\n{prompt} ASSISTANT: {answer}</s>"; content may be a string or
# a list of {"type": "image"} / {"type": "text"} parts. The assistant turn ends with </s> so the
# model learns to stop; {% generation %} marks the assistant tokens for TRL's assistant masks.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT: ' }}{% generation %}"
    "{%- for part in parts if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{{ '</s>' }}{% endgeneration %}{{ ' ' }}"
    "{%- else -%}"
    "{%- if message['role'] == 'user' -%}{{ 'USER: ' }}{%- endif -%}"
    "{%- for part in parts if part['type'] == 'image' -%}{{ '<image>\n' }}{%- endfor -%}"
    "{%- for part in parts if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{{ ' ' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer: special tokens first (``<pad>`` = 0), then the world's words."""
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *world_words()])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    # WordPiece's clean-up turns "circle ." into "circle."; no token carries the "##" prefix.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",  # batched generation
        model_max_length=512,
        clean_up_tokenization_spaces=False,  # the decoder already did it
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_image_processor() -> CLIPImageProcessor:
    """64×64 in, 64×64 out: resize and crop are identities for the world's images, and the
    normalisation is the tiny CLIP's, so the vision tower sees what it was trained on."""
    return CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def build_processor() -> LlavaProcessor:
    """The LLaVA processor: ``<image>`` expands to :data:`NUM_IMAGE_TOKENS` image tokens."""
    return LlavaProcessor(
        image_processor=build_image_processor(),
        tokenizer=build_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped again by the "default" strategy
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )


def user_messages(prompt: str) -> list[dict[str, Any]]:
    """A one-image chat for ``apply_chat_template``."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
