"""Scoring endpoints: /v1/logprobs, /v1/clip, /v1/reward, /v1/implicit-reward.

Thin handlers: validate what pydantic cannot (limits, adapter names, image ids), turn the request
into engine work items, await the batcher, and assemble the wire response with `core.rewards`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Response

from selfreward_vlm.core.rewards import (
    calibrated_reward,
    clip_relevance,
    implicit_reward,
    language_score,
)
from selfreward_vlm.core.schemas import (
    ClipRequest,
    ClipResponse,
    ClipScore,
    ImageRef,
    ImplicitReward,
    ImplicitRewardRequest,
    ImplicitRewardResponse,
    LogprobsRequest,
    LogprobsResponse,
    RewardRequest,
    RewardResponse,
    RewardScore,
    TokenLogprobs,
    Usage,
)
from selfreward_vlm.service.engine.batcher import ClipItem, Work
from selfreward_vlm.service.engine.lm import ScoredTokens, ScoreItem
from selfreward_vlm.service.errors import InvalidRequestError, ModelUnavailableError
from selfreward_vlm.service.state import AppState, get_ready_state

router = APIRouter(prefix="/v1", tags=["scoring"])


# ------------------------------------------------------------------ shared helpers


def check_items(state: AppState, items: list[Any], field: str) -> None:
    limit = state.settings.max_items
    if len(items) > limit:
        raise InvalidRequestError(f"{len(items)} {field} given; at most {limit}", field=field)


async def resolve_image(
    state: AppState, ref: ImageRef | None, for_policy: bool = True
) -> tuple[str | None, Any]:
    """(id, PIL image) of an image reference; (None, None) when there is none. Images for the
    policy need a VLM; CLIP (`for_policy=False`) takes them whatever the policy model is."""
    if ref is None:
        return None, None
    if for_policy and state.models is not None and state.models.engine.kind != "vlm":
        raise InvalidRequestError("this model is text-only; omit 'image'", field="image")
    return await anyio.to_thread.run_sync(state.images.resolve, ref, "image")


def total_usage(*usages: Usage) -> Usage:
    out = Usage()
    for u in usages:
        for name in Usage.model_fields:
            setattr(out, name, getattr(out, name) + getattr(u, name))
    return out


def set_timing(response: Response, *works: Work) -> None:
    """x-queue-time-ms / x-inference-time-ms / x-batch-size of the slowest work item."""
    response.headers["x-queue-time-ms"] = f"{max(w.queue_s for w in works) * 1000:.2f}"
    response.headers["x-inference-time-ms"] = f"{max(w.infer_s for w in works) * 1000:.2f}"
    response.headers["x-batch-size"] = str(max(w.batch_size for w in works))


def token_logprobs(state: AppState, text: str, scored: ScoredTokens) -> TokenLogprobs:
    engine = state.models.engine  # type: ignore[union-attr]
    lps = scored.token_logprobs
    return TokenLogprobs(
        text=text,
        token_ids=scored.token_ids,
        tokens=engine.tokenizer.convert_ids_to_tokens(scored.token_ids),
        token_logprobs=lps,
        sum_logprob=language_score(lps, "sum_logprob"),
        mean_logprob=language_score(lps, "mean_logprob"),
        num_tokens=len(lps),
    )


async def score(state: AppState, item: ScoreItem) -> tuple[list[ScoredTokens], Work]:
    state.models.engine.adapters.check(item.adapter)  # type: ignore[union-attr]
    return await state.batcher.submit(item)  # type: ignore[union-attr]


def record(state: AppState, usage: Usage) -> Usage:
    metrics = getattr(state, "metrics", None)
    if metrics is not None:
        metrics.add_usage(usage)
    return usage


# ------------------------------------------------------------------ endpoints


@router.post("/logprobs", response_model=LogprobsResponse)
async def logprobs(
    req: LogprobsRequest, response: Response, state: AppState = Depends(get_ready_state)
) -> LogprobsResponse:
    """Per-token log-probs of each continuation after image + prompt (+ prefix)."""
    check_items(state, req.continuations, "continuations")
    image_id, image = await resolve_image(state, req.image)
    item = ScoreItem(req.model, req.prompt, req.continuations, req.prefix, image_id, image)
    scored, work = await score(state, item)
    set_timing(response, work)
    results = [token_logprobs(state, t, s) for t, s in zip(req.continuations, scored, strict=True)]
    return LogprobsResponse(model=req.model, results=results, usage=record(state, item.usage))


async def clip_cosines(state: AppState, image_id: str | None, image: Any, texts: list[str]):
    if state.models is None or state.models.clip is None:
        raise ModelUnavailableError("this service was started without a CLIP model (--clip)")
    item = ClipItem(image_id, image, texts, Usage())
    results, work = await state.batcher.submit(item)  # type: ignore[union-attr]
    return results, work, item.usage


@router.post("/clip", response_model=ClipResponse)
async def clip(
    req: ClipRequest, response: Response, state: AppState = Depends(get_ready_state)
) -> ClipResponse:
    """CLIP cosine and relevance R_I = max(scale·cos, 0) of one image and many texts."""
    check_items(state, req.texts, "texts")
    image_id, image = await resolve_image(state, req.image, for_policy=False)
    results, work, usage = await clip_cosines(state, image_id, image, req.texts)
    set_timing(response, work)
    scores = [
        ClipScore(
            text=t,
            cosine=r.cosine,
            relevance=clip_relevance(r.cosine, req.scale),
            truncated=r.truncated,
        )
        for t, r in zip(req.texts, results, strict=True)
    ]
    return ClipResponse(results=scores, usage=record(state, usage))


@router.post("/reward", response_model=RewardResponse, response_model_by_alias=True)
async def reward(
    req: RewardRequest, response: Response, state: AppState = Depends(get_ready_state)
) -> RewardResponse:
    """Calibrated reward R = λ·R_I + (1−λ)·R_T of candidate sentences (CSR eq. 2-4)."""
    check_items(state, req.candidates, "candidates")
    image_id, image = await resolve_image(state, req.image)
    item = ScoreItem(req.model, req.prompt, req.candidates, req.prefix, image_id, image)
    texts = [c.strip() for c in req.candidates]
    (scored, w1), (cos, w2, clip_usage) = await asyncio.gather(
        score(state, item), clip_cosines(state, image_id, image, texts)
    )
    set_timing(response, w1, w2)
    results = []
    for text, s, c in zip(req.candidates, scored, cos, strict=True):
        lp = token_logprobs(state, text, s)
        r_t = language_score(s.token_logprobs, req.language_score)
        r_i = clip_relevance(c.cosine, req.scale)
        results.append(RewardScore(
            text=text, r_t=r_t, r_i=r_i, reward=calibrated_reward(r_i, r_t, req.lambda_),
            cosine=c.cosine, sum_logprob=lp.sum_logprob, mean_logprob=lp.mean_logprob,
            num_tokens=lp.num_tokens, truncated=c.truncated,
        ))  # fmt: skip
    return RewardResponse(
        model=req.model, lambda_=req.lambda_, language_score=req.language_score,
        results=results, usage=record(state, total_usage(item.usage, clip_usage)),
    )  # fmt: skip


@router.post("/implicit-reward", response_model=ImplicitRewardResponse)
async def implicit(
    req: ImplicitRewardRequest, response: Response, state: AppState = Depends(get_ready_state)
) -> ImplicitRewardResponse:
    """DPO implicit reward β·(log π_policy − log π_ref) as a sum and a token average (SBSPO)."""
    check_items(state, req.responses, "responses")
    engine = state.models.engine  # type: ignore[union-attr]
    engine.adapters.check(req.policy, field="policy")
    engine.adapters.check(req.reference, field="reference")
    image_id, image = await resolve_image(state, req.image)
    # The response ends the assistant turn, so its EOS is part of what the policy chose.
    items = [
        ScoreItem(name, req.prompt, req.responses, "", image_id, image, append_eos=True)
        for name in (req.policy, req.reference)
    ]
    (pol, w1), (ref, w2) = await asyncio.gather(*(score(state, it) for it in items))
    set_timing(response, w1, w2)
    results = []
    for text, p, r in zip(req.responses, pol, ref, strict=True):
        r_sum, r_avg = implicit_reward(p.token_logprobs, r.token_logprobs, req.beta)
        results.append(ImplicitReward(
            text=text, reward_sum=r_sum, reward_avg=r_avg,
            policy_logprob=sum(p.token_logprobs), reference_logprob=sum(r.token_logprobs),
            num_tokens=len(p.token_logprobs),
        ))  # fmt: skip
    usage = record(state, total_usage(items[0].usage, items[1].usage))
    return ImplicitRewardResponse(
        policy=req.policy, reference=req.reference, beta=req.beta, results=results, usage=usage
    )
