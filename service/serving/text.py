"""A raw prompt read as vLLM reads it: every token after the first gets its log-prob and its
top-k alternatives, and generation continues the token ids as they are (no chat template).

The engine scores continuations after a chat-templated user turn, and only the chosen tokens'
log-probs; here the model's OWN forward (`GenericFamily.full_logprobs`: any model, its own
positions, masks and image merge) runs over the prompt's token ids, under the engine's lock and
the request's adapter, on a worker thread. A log-likelihood request (`max_tokens` 0 or 1) costs
one forward. Generation from a text prompt keeps the model's own KV cache between tokens; from
a prompt with an image it re-runs the model's whole forward for each token (whose positions
only the model's code knows), correct for every family.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import torch

from selfreward_vlm.service.chat_text import collapse_placeholders
from selfreward_vlm.service.deadlines import DeadlineExceededError, current_deadline
from selfreward_vlm.service.engine.families.base import cache_keyword
from selfreward_vlm.service.engine.families.generic import GenericFamily
from selfreward_vlm.service.errors import InvalidRequestError
from selfreward_vlm.service.state import AppState


@dataclass
class TokenScore:
    """One token, its log-prob (None for the first prompt token) and the top-k alternatives
    at its position, best first."""

    token_id: int
    logprob: float | None
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Decoding:
    """How to continue a prompt: `max_tokens` tokens, greedy at temperature 0, else sampled
    (nucleus `top_p`, choice i seeded with `seed + i`); ends at EOS or a stop string."""

    max_tokens: int = 0
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()


@dataclass
class Continuation:
    tokens: list[TokenScore]
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length"


@dataclass
class TextResult:
    prompt: list[TokenScore]
    choices: list[Continuation]


@dataclass
class PromptIds:
    """A prompt as the model takes it: token ids (image placeholders expanded) and the
    processor's other outputs (pixels)."""

    ids: list[int]
    inputs: dict[str, Any] = field(default_factory=dict)


def encode(
    engine: Any, text: str | None, ids: list[int] | None, image: Any, add_special: bool
) -> PromptIds:
    """The token ids of a text prompt (tokenized with special tokens if `add_special`) or a
    token-id prompt (as given); with an image, the processor expands its placeholder."""
    tok = engine.tokenizer
    if image is None:
        if ids is None:
            ids = list(tok(text, add_special_tokens=add_special)["input_ids"])
        if engine.image_token_id is not None and engine.image_token_id in ids:
            raise InvalidRequestError(
                "the prompt holds the image placeholder but no image was given", field="image"
            )
        return PromptIds(ids)
    if ids is not None:  # the client's ids: decode, let the processor expand the placeholder
        text, add_special = tok.decode(ids, skip_special_tokens=False), False
    placeholder = tok.convert_ids_to_tokens(engine.image_token_id)
    text = collapse_placeholders(engine, str(text))
    if placeholder not in text:
        raise InvalidRequestError(
            f"with an image, the prompt must hold the model's image placeholder {placeholder!r}",
            field="prompt",
        )
    try:
        out = engine.processor(
            text=text, images=image, return_tensors="pt", add_special_tokens=add_special
        )
    except ValueError as e:  # the processor's own check (placeholders vs images)
        raise InvalidRequestError(f"the processor refused the prompt: {e}", "prompt") from None
    inputs = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}
    return PromptIds(out["input_ids"][0].tolist(), inputs)


async def run(
    state: AppState, adapter: str, prompt: PromptIds, top_k: int, decoding: Decoding
) -> TextResult:
    """Score `prompt` and continue it (blocking model work on a worker thread)."""
    engine = state.models.engine  # type: ignore[union-attr]
    limit = state.settings.max_text_tokens
    if len(prompt.ids) + decoding.max_tokens > limit:
        field = "max_tokens" if decoding.max_tokens else "prompt"
        raise InvalidRequestError(
            f"the prompt is {len(prompt.ids)} tokens; with max_tokens {decoding.max_tokens} "
            f"that is over the limit of {limit}",
            field=field,
        )
    if not prompt.ids:
        raise InvalidRequestError("the prompt has no tokens", field="prompt")
    engine.adapters.check(adapter)
    stop = _Stop(current_deadline.get())
    try:
        return await anyio.to_thread.run_sync(_run, engine, adapter, prompt, top_k, decoding, stop)
    except BaseException:
        stop.abandoned.set()  # cancelled (client gone, deadline): the thread stops at its next step
        raise


@dataclass
class _Stop:
    """Why a generation stops early: its request was abandoned, or its deadline passed."""

    deadline: float | None
    abandoned: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.abandoned.is_set():
            raise DeadlineExceededError("the request was abandoned during generation")
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            raise DeadlineExceededError("the deadline passed during generation")


def _run(
    engine: Any, adapter: str, prompt: PromptIds, top_k: int, decoding: Decoding, stop: _Stop
) -> TextResult:
    model = GenericFamily(engine.hf)
    ids = prompt.ids
    with torch.inference_mode(), engine.lock, engine.adapters.active(adapter):
        logp = model.full_logprobs(ids, prompt.inputs, len(ids))  # (T, V)
        scored = [TokenScore(ids[0], None)]
        scored += [_score(logp[i - 1], ids[i], top_k) for i in range(1, len(ids))]
        choices = []
        for c in range(decoding.n if decoding.max_tokens else 0):
            choices.append(_continue(engine, model, prompt, logp[-1], top_k, decoding, c, stop))
    return TextResult(scored, choices)


def _score(logp: torch.Tensor, token: int, k: int) -> TokenScore:
    """(V,) log-probs at a position -> the token's log-prob and the top k."""
    top: list[tuple[int, float]] = []
    if k > 0:
        values, index = logp.topk(min(k, logp.shape[-1]))
        top = list(zip(index.tolist(), values.tolist(), strict=True))
    return TokenScore(token, float(logp[token]), top)


def _continue(
    engine: Any,
    model: GenericFamily,
    prompt: PromptIds,
    logp: torch.Tensor,
    top_k: int,
    decoding: Decoding,
    choice: int,
    stop: _Stop,
) -> Continuation:
    seed = None if decoding.seed is None else decoding.seed + choice
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    ids, out, cache = list(prompt.ids), [], None
    for step in range(decoding.max_tokens):
        token = _pick(engine, logp, decoding, gen)
        out.append(_score(logp, token, top_k))
        text = engine.tokenizer.decode([t.token_id for t in out], skip_special_tokens=True)
        if token == engine.eos_token_id:
            return Continuation(out, text, "stop")
        cut = [text.index(s) for s in decoding.stop if s and s in text]
        if cut:
            return Continuation(out, text[: min(cut)], "stop")
        if step + 1 < decoding.max_tokens:
            stop.check()  # the engine's lock is held: never for a request nobody waits for
            ids.append(token)
            logp, cache = _next(engine, model, prompt, ids, cache)
    text = engine.tokenizer.decode([t.token_id for t in out], skip_special_tokens=True)
    return Continuation(out, text, "length")


def _next(
    engine: Any, model: GenericFamily, prompt: PromptIds, ids: list[int], cache: Any
) -> tuple[torch.Tensor, Any]:
    """(V,) log-probs after `ids`, and the KV cache to extend next time. A text prompt's KV
    is kept between tokens (the model's own forward with its own cache); a prompt with an image
    re-runs the model's whole forward, whose positions only the model's code knows."""
    if prompt.inputs:
        return model.full_logprobs(ids, prompt.inputs, len(prompt.ids))[-1], None
    hf, kw = engine.hf, cache_keyword(engine.hf)
    if cache is None:  # this choice's first step: the prompt and its tokens so far
        cache = hf(input_ids=torch.tensor([ids[:-1]], device=hf.device), use_cache=True)
        cache = cache.past_key_values
    out = hf(input_ids=torch.tensor([ids[-1:]], device=hf.device), use_cache=True, **{kw: cache})
    return torch.log_softmax(out.logits[0, -1].float(), dim=-1), out.past_key_values


def _pick(engine: Any, logp: torch.Tensor, d: Decoding, gen: torch.Generator | None) -> int:
    """The next token: argmax at temperature 0, else a draw from softmax(logp / T) within the
    top-p nucleus; placeholder tokens (image, pad) are never generated, as in the engine."""
    scores = logp.clone()
    for tok in engine.never_generate:
        scores[tok] = float("-inf")
    if d.temperature == 0:
        return int(scores.argmax())
    probs = torch.softmax(scores.double().cpu() / d.temperature, dim=-1)
    if d.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        cut = int((sorted_p.cumsum(0) < d.top_p).sum()) + 1
        probs = torch.zeros_like(probs).scatter(0, order[:cut], sorted_p[:cut])
    return int(torch.multinomial(probs, 1, generator=gen))
