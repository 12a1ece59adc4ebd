"""A raw prompt read as vLLM reads it: every token after the first gets its log-prob and its
top-k alternatives, and generation continues the token ids as they are (no chat template).

Both run in the scheduler, like every other request: the prompt's scores are one forward of
the model's own code (`engine.raw_text`), scheduled with the other scoring work; its
continuation is a generation over the prompt's ids (`GenerateItem.prompt_ids`), decoded in the
same steps as every other live generation. A log-likelihood request (`echo`, `max_tokens` 0 or
1) costs one forward: its one generated token comes from that forward's last position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from selfreward_vlm.core.schemas import Usage
from selfreward_vlm.service.engine.batcher import Work
from selfreward_vlm.service.engine.decoding import Generated, GenerateItem
from selfreward_vlm.service.engine.raw_text import TextScoreItem, TextScores
from selfreward_vlm.service.errors import InvalidRequestError
from selfreward_vlm.service.serving.chat_text import collapse_placeholders
from selfreward_vlm.service.serving.common import record, total_usage
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
    prompt: list[TokenScore]  # log-probs None where the prompt was not scored
    choices: list[Continuation]
    works: list[Work] = field(default_factory=list)  # the scheduler's, for the timing headers
    usage: Usage = field(default_factory=Usage)


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
    state: AppState,
    adapter: str,
    prompt: PromptIds,
    top_k: int,
    decoding: Decoding,
    *,
    image: Any = None,
    image_id: str | None = None,
    score_prompt: bool = True,
) -> TextResult:
    """Score `prompt` (unless `score_prompt` is false) and continue it `decoding.n` times."""
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
    batcher = state.batcher
    assert batcher is not None
    gen = _generate_item(adapter, prompt, top_k, decoding, image, image_id)
    works: list[Work] = []
    usages: list[Usage] = []
    scored = [TokenScore(t, None) for t in prompt.ids]
    generated: list[Generated] = []
    if score_prompt:
        one = gen is not None and gen.max_new_tokens == 1
        item = TextScoreItem(adapter, prompt.ids, prompt.inputs, top_k, gen if one else None)
        scores, work = await batcher.submit(item)
        works.append(work)
        usages.append(item.usage)
        scored = _prompt_scores(prompt.ids, scores)
        generated = scores.choices
    if gen is not None and not generated:
        generated, work = await batcher.submit(gen)
        works.append(work)
        usages.append(gen.usage)
    choices = [continuation(engine, g, decoding.stop) for g in generated]
    return TextResult(scored, choices, works, record(state, total_usage(*usages)))


def _generate_item(
    adapter: str,
    prompt: PromptIds,
    top_k: int,
    decoding: Decoding,
    image: Any,
    image_id: str | None,
) -> GenerateItem | None:
    """The engine's generation for `decoding` (None when nothing is generated): greedy at
    temperature 0, else sampled; it ends at EOS, a stop string or `max_tokens`."""
    if not decoding.max_tokens:
        return None
    greedy = decoding.temperature == 0
    return GenerateItem(
        adapter=adapter,
        prompt="",
        prompt_ids=prompt.ids,
        prompt_inputs=prompt.inputs,
        image_id=image_id,
        image=image,
        strategy="greedy" if greedy else "sample",
        n=decoding.n,
        temperature=1.0 if greedy else decoding.temperature,
        top_p=decoding.top_p,
        seed=decoding.seed,
        stop="eos",
        stop_strings=tuple(s for s in decoding.stop if s),
        max_new_tokens=decoding.max_tokens,
        top_k=top_k,
    )


def _prompt_scores(ids: list[int], scores: TextScores) -> list[TokenScore]:
    rest = zip(ids[1:], scores.logprobs, scores.top, strict=True)
    return [TokenScore(ids[0], None), *(TokenScore(t, lp, top) for t, lp, top in rest)]


def continuation(engine: Any, g: Generated, stops: Sequence[str]) -> Continuation:
    """A candidate as a completion choice: its text cut before the first stop string (OpenAI
    returns none of it); EOS and stop strings finish with 'stop'."""
    tops = g.top or [[] for _ in g.token_ids]
    tokens = [
        TokenScore(t, lp, top)
        for t, lp, top in zip(g.token_ids, g.token_logprobs, tops, strict=True)
    ]
    text = engine.decode(g.token_ids)
    if g.stop_reason == "length":
        return Continuation(tokens, text, "length")
    cut = [text.index(s) for s in stops if s and s in text]
    return Continuation(tokens, text[: min(cut)] if cut else text, "stop")
