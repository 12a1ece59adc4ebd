"""Tokenization rules the service and the trainer share, so that their token ids agree (pure:
the tokenizer is passed in, nothing here imports transformers)."""

from __future__ import annotations

from typing import Any


def special_tokens_kwargs(tokenizer: Any, text: str) -> dict[str, Any]:
    """Tokenizer kwargs for a rendered prompt, by transformers' own rule
    (`ProcessorMixin.apply_chat_template(tokenize=True)`): a prompt that already starts with
    BOS (Gemma 3, Idefics3 templates) gets no second one. The service and the trainer's
    collator both tokenize prompts through this, so their token ids agree."""
    bos = tokenizer.bos_token
    return {"add_special_tokens": False} if bos and text.startswith(bos) else {}
