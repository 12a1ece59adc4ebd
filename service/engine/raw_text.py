"""A raw prompt scored as vLLM scores it: every token after the first gets its log-prob and its
top-k alternatives, from the model's OWN forward (`GenericFamily.full_logprobs`: any model, its
own positions, masks and image merge) over the prompt's token ids, as they are (no chat
template). What lm-evaluation-harness's log-likelihood requests (`echo`, `max_tokens` 0 or 1)
need: one forward, run by the scheduler between decode steps like other scoring work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from selfreward_vlm.core.schemas import Usage
from selfreward_vlm.service.engine.decoding import (
    Generated,
    GenerateItem,
    first_tokens,
    top_alternatives,
)
from selfreward_vlm.service.engine.families.generic import GenericFamily

if TYPE_CHECKING:
    from selfreward_vlm.service.engine.lm import LanguageEngine


@dataclass
class TextScoreItem:
    """A tokenized prompt to score under one adapter; `first`, when set, is a one-token
    continuation (its `max_new_tokens` is 1) drawn from the prompt's last position, which
    this forward has already computed."""

    adapter: str
    ids: list[int]
    inputs: dict[str, Any] = field(default_factory=dict)  # the processor's (pixels)
    top_k: int = 0
    first: GenerateItem | None = None
    usage: Usage = field(default_factory=Usage)


@dataclass
class TextScores:
    """Per prompt token after the first: its log-prob and the `top_k` best at its position,
    best first; and `first`'s candidates."""

    logprobs: list[float]
    top: list[list[tuple[int, float]]]
    choices: list[Generated] = field(default_factory=list)


def score_text(engine: LanguageEngine, item: TextScoreItem) -> TextScores:
    """Score `item.ids` with the model's own forward (under the engine's lock and the item's
    adapter)."""
    ids = item.ids
    with torch.inference_mode(), engine.lock, engine.adapters.active(item.adapter):
        logp = GenericFamily(engine.hf).full_logprobs(ids, item.inputs, len(ids))  # (T, V)
        item.usage.tokens_forwarded += len(ids)
        picked = logp[:-1].gather(-1, torch.tensor(ids[1:], device=logp.device)[:, None])
        top = top_alternatives(logp[:-1], item.top_k) if item.top_k else [[] for _ in ids[1:]]
        choices = first_tokens(engine, item.first, logp[-1:]) if item.first else []
    return TextScores(picked[:, 0].tolist(), top, choices)
