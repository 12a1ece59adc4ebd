"""Pieces every tiny-model builder shares: a BPE tokenizer with a family's special tokens and chat
template, the output-head sharpening, and the text decoder sizes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_CORPUS = [
    "There is a red circle. There is a blue square. The cat sits on the mat.",
    "A dog runs in the park. The sky is blue and the grass is green.",
    "USER: Describe the image. ASSISTANT: There is a green triangle next to a yellow cross.",
    "The image shows a small house, a tree, and two people walking on the road.",
    "Objects: circle square triangle cross red green blue yellow white black large small.",
    "0 1 2 3 4 5 6 7 8 9 , ; : ! ? ' \" ( ) - + = / * % & @ # $",
]
_CHAT_WORDS = "user assistant model system User Assistant"

# Text decoder sizes shared by the families (a Llama/Qwen2/Gemma-shaped stack of 2 layers).
TEXT_SIZES: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}

# A ViT of 2 layers on 32-px images with 8-px patches (CLIP, SigLIP, Idefics3 towers).
VISION_SIZES: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}


# OpenAI CLIP's image normalisation (open_clip's and transformers' CLIP processors use the same);
# the miniature world's CLIP (`world.clip_model`) reads these too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_bpe_tokenizer(
    specials: Sequence[str],
    chat_template: str,
    *,
    bos: str | None = "<s>",
    eos: str = "</s>",
    pad: str = "<pad>",
    unk: str | None = "<unk>",
    extra_special_tokens: dict[str, str] | None = None,
    vocab_size: int = 400,
    chat_words: bool = True,
) -> Any:  # -> PreTrainedTokenizerFast
    """A byte-level BPE trained on a few sentences; `specials` become single special tokens.

    `extra_special_tokens` names attributes processors read (`image_token`, `boi_token`, ...).
    `chat_words`: also train on the role words of chat templates (off for the LLaVA-1.5
    tokenizer, kept as it was).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    named = [t for t in (unk, bos, eos, pad) if t]
    all_specials = list(dict.fromkeys([*named, *specials]))
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=all_specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*_CORPUS, *([_CHAT_WORDS] if chat_words else [])], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=unk,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens=extra_special_tokens or {},
    )
    fast.chat_template = chat_template
    return fast


def sharpen(model: Any) -> None:
    """Scale the output head so a random model is peaked rather than uniform.

    A randomly initialised LM spreads probability almost evenly, which makes every test
    that compares candidates (beam order, chosen vs rejected) a coin toss on float noise.
    A tied head is the input embedding too, so its scaling is left to the config's sizes.
    """
    import torch

    head = model.get_output_embeddings()
    if head is None or head.weight is model.get_input_embeddings().weight:
        return
    with torch.no_grad():
        head.weight.mul_(8.0)


def finish(model: Any, processor: Any, tokenizer: Any, out_dir: Any) -> Any:
    """Sharpen, then save model + processor to `out_dir`; returns its Path."""
    from pathlib import Path

    model.eval()
    sharpen(model)
    save(model, processor, Path(out_dir), tokenizer)
    return Path(out_dir)


def save(model: Any, processor: Any, out: Any, tokenizer: Any) -> None:
    """Write model + processor, generation config pointing at the tokenizer's EOS/pad."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
