"""Generation through the engine: `n` candidates after image + prompt + prefix, with raw token
log-probs. `/v1/generate` and the chat completions API both come here, so they share the
engine's prefix and image caches and its batching."""

from __future__ import annotations

from typing import Any

from selfreward_vlm.core.schemas import Candidate, GenerateRequest, GenerateResponse
from selfreward_vlm.service.engine.decoding import Generated, GenerateItem
from selfreward_vlm.service.errors import InvalidRequestError
from selfreward_vlm.service.serving.common import Served, record, resolve_image
from selfreward_vlm.service.state import AppState


def validate(req: GenerateRequest, state: AppState) -> None:
    """Limits and the adapter name (what pydantic cannot check)."""
    limits = state.settings
    if req.n > limits.max_items:
        raise InvalidRequestError(f"n = {req.n}; at most {limits.max_items}", field="n")
    if req.max_new_tokens > limits.max_new_tokens:
        raise InvalidRequestError(
            f"max_new_tokens = {req.max_new_tokens}; at most {limits.max_new_tokens}",
            field="max_new_tokens",
        )
    if req.strategy == "diverse_beam":
        groups = req.num_beam_groups or req.n
        if groups > req.n or req.n % groups:
            raise InvalidRequestError(
                f"num_beam_groups ({groups}) must divide n ({req.n})", field="num_beam_groups"
            )
    state.models.engine.adapters.check(req.model)  # type: ignore[union-attr]


async def generate_raw(
    state: AppState, req: GenerateRequest, stop_strings: tuple[str, ...] = (), top_k: int = 0
) -> Served[list[Generated]]:
    """The engine's candidates for `req` (validated here), before their wire form; sampling
    and greedy may also end at `stop_strings` and keep `top_k` alternatives per token."""
    validate(req, state)
    image_id, image = await resolve_image(state, req.image)
    item = GenerateItem(
        adapter=req.model,
        prompt=req.prompt,
        prefix=req.prefix,
        image_id=image_id,
        image=image,
        strategy=req.strategy,
        n=req.n,
        num_beam_groups=req.num_beam_groups,
        diversity_penalty=req.diversity_penalty,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
        stop=req.stop,
        stop_text=req.stop_text,
        max_new_tokens=req.max_new_tokens,
        stop_strings=stop_strings,
        top_k=top_k,
    )
    generated, work = await state.batcher.submit(item)  # type: ignore[union-attr]
    item.usage.tokens_scored = sum(len(g.token_ids) for g in generated)
    return Served(generated, [work], record(state, item.usage))


async def generate(state: AppState, req: GenerateRequest) -> Served[GenerateResponse]:
    """Generate `n` candidates after image + prompt + prefix (see `routes.generate`)."""
    served = await generate_raw(state, req)
    engine = state.models.engine  # type: ignore[union-attr]
    beam = req.strategy in ("beam", "diverse_beam")
    body = GenerateResponse(
        model=req.model,
        candidates=[candidate(engine, g, beam) for g in served.body],
        usage=served.usage,
    )
    return Served(body, served.works, served.usage)


def candidate(engine: Any, g: Generated, beam: bool) -> Candidate:
    return Candidate(
        score=g.score if beam else None,
        text=engine.decode(g.token_ids),
        token_ids=g.token_ids,
        token_logprobs=g.token_logprobs,
        finished=g.stop_reason == "eos",
        stop_reason=g.stop_reason,  # type: ignore[arg-type]
    )
