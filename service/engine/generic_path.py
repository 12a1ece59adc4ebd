"""Scoring and generation on the generic path: the model's own full forward, every time.

`prompt + prefix + continuation` goes through `model(input_ids, **processor outputs)` as one
sequence per continuation, and a generation step re-runs it with the tokens so far. Slower than
a family's fast path (no KV reuse), never wrong: the model's code builds its own positions,
masks and image merges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from selfreward_vlm.service.errors import InvalidRequestError

if TYPE_CHECKING:
    from selfreward_vlm.service.engine.lm import LanguageEngine, ScoredTokens, ScoreItem


def generic_score(engine: LanguageEngine, item: ScoreItem) -> list[ScoredTokens]:
    """Token log-probs of each continuation from one full forward per continuation."""
    from selfreward_vlm.service.engine.lm import ScoredTokens

    prompt = engine.encode_prompt(item.prompt, item.image_id, item.image)
    ids = prompt.ids + engine.encode_text(item.prefix)
    engine.check_no_image_tokens(ids[len(prompt.ids) :], "prefix")
    inputs = engine.pixel_inputs(prompt, item.image) if prompt.has_image else {}
    results = []
    for i, text in enumerate(item.continuations):
        cont = engine.encode_text(text) + ([engine.eos_token_id] if item.append_eos else [])
        engine.check_no_image_tokens(cont, f"continuations[{i}]")
        if len(ids) + len(cont) > engine.settings.max_text_tokens:
            raise InvalidRequestError(
                f"prompt + prefix + continuation is {len(ids) + len(cont)} tokens, over the "
                f"limit of {engine.settings.max_text_tokens}",
                field=f"continuations[{i}]",
            )
        logp = engine.family.full_logprobs(ids + cont, inputs, len(prompt.ids))  # type: ignore[attr-defined]
        rows = logp[len(ids) - 1 : len(ids) - 1 + len(cont)]
        picked = rows.gather(-1, torch.tensor(cont, device=rows.device)[:, None])[:, 0]
        results.append(ScoredTokens(cont, picked.tolist()))
        item.usage.tokens_scored += len(cont)
        item.usage.tokens_forwarded += len(ids) + len(cont)
        if prompt.has_image:
            item.usage.image_encodes += 1
    return results


class GenericRows:
    """Decoding rows for `decoding`: each step re-runs the full forward of every row."""

    def __init__(
        self,
        engine: LanguageEngine,
        ids: list[int],
        inputs: dict[str, Any],
        prompt_len: int,
        usage: Any,
    ):
        self.engine, self.usage = engine, usage
        self.prompt_len = prompt_len  # the processor's tokens (per-token inputs cover these)
        self.inputs = inputs
        self.cacheable = False
        self.rows: list[list[int]] = [list(ids)]

    def first(self) -> torch.Tensor:
        """(1, V) next-token log-probs after the prompt + prefix."""
        return self._forward(self.rows[0])[None]

    def step(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
        """Reorder rows to `parents`, append `tokens`; returns next-token log-probs (R, V)."""
        self.rows = [[*self.rows[p], t] for p, t in zip(parents, tokens, strict=True)]
        return torch.stack([self._forward(row) for row in self.rows])

    def remember(self, row: int, ids: list[int], next_logprobs: torch.Tensor) -> None:
        """Nothing is cached on the generic path."""

    def _forward(self, row: list[int]) -> torch.Tensor:
        logp = self.engine.family.full_logprobs(row, self.inputs, self.prompt_len)  # type: ignore[attr-defined]
        self.usage.tokens_forwarded += len(row)
        return logp[-1]
