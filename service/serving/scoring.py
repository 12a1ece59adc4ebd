"""Scoring: per-token log-probs, CLIP relevance, the calibrated reward (CSR) and the DPO
implicit reward (SBSPO). Each function validates what pydantic cannot (limits, adapter names,
image ids), turns the request into engine work items, awaits the batcher and assembles the
native response with `core.rewards`."""

from __future__ import annotations

import asyncio
from typing import Any

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
from selfreward_vlm.service.errors import ModelUnavailableError
from selfreward_vlm.service.serving.common import (
    Served,
    check_items,
    record,
    resolve_image,
    total_usage,
)
from selfreward_vlm.service.state import AppState


def token_logprobs(state: AppState, text: str, scored: ScoredTokens) -> TokenLogprobs:
    """The wire form of one scored continuation."""
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
    """Queue one scoring item (its adapter checked first); its results and work."""
    state.models.engine.adapters.check(item.adapter)  # type: ignore[union-attr]
    return await state.batcher.submit(item)  # type: ignore[union-attr]


async def clip_cosines(
    state: AppState, image_id: str | None, image: Any, texts: list[str]
) -> tuple[list[Any], Work, Usage]:
    """CLIP cosines of one image and many texts (501 without a CLIP model)."""
    if state.models is None or state.models.clip is None:
        raise ModelUnavailableError("this service was started without a CLIP model (--clip)")
    item = ClipItem(image_id, image, texts, Usage())
    results, work = await state.batcher.submit(item)  # type: ignore[union-attr]
    return results, work, item.usage


async def logprobs(state: AppState, req: LogprobsRequest) -> Served[LogprobsResponse]:
    """Per-token log-probs of each continuation after image + prompt (+ prefix)."""
    check_items(state, req.continuations, "continuations")
    image_id, image = await resolve_image(state, req.image)
    item = ScoreItem(req.model, req.prompt, req.continuations, req.prefix, image_id, image)
    scored, work = await score(state, item)
    results = [token_logprobs(state, t, s) for t, s in zip(req.continuations, scored, strict=True)]
    body = LogprobsResponse(model=req.model, results=results, usage=record(state, item.usage))
    return Served(body, [work])


async def clip(state: AppState, req: ClipRequest) -> Served[ClipResponse]:
    """CLIP cosine and relevance R_I = max(scale·cos, 0) of one image and many texts."""
    check_items(state, req.texts, "texts")
    image_id, image = await resolve_image(state, req.image, for_policy=False)
    results, work, usage = await clip_cosines(state, image_id, image, req.texts)
    scores = [
        ClipScore(
            text=t,
            cosine=r.cosine,
            relevance=clip_relevance(r.cosine, req.scale),
            truncated=r.truncated,
        )
        for t, r in zip(req.texts, results, strict=True)
    ]
    return Served(ClipResponse(results=scores, usage=record(state, usage)), [work])


async def reward(state: AppState, req: RewardRequest) -> Served[RewardResponse]:
    """Calibrated reward R = λ·R_I + (1−λ)·R_T of candidate sentences (CSR eq. 2-4)."""
    check_items(state, req.candidates, "candidates")
    image_id, image = await resolve_image(state, req.image)
    item = ScoreItem(req.model, req.prompt, req.candidates, req.prefix, image_id, image)
    texts = [c.strip() for c in req.candidates]
    (scored, w1), (cos, w2, clip_usage) = await asyncio.gather(
        score(state, item), clip_cosines(state, image_id, image, texts)
    )
    results = []
    for text, s, c in zip(req.candidates, scored, cos, strict=True):
        lp = token_logprobs(state, text, s)
        r_t = language_score(s.token_logprobs, req.language_score)
        r_i = clip_relevance(c.cosine, req.scale)
        results.append(
            RewardScore(
                text=text,
                r_t=r_t,
                r_i=r_i,
                reward=calibrated_reward(r_i, r_t, req.lambda_),
                cosine=c.cosine,
                sum_logprob=lp.sum_logprob,
                mean_logprob=lp.mean_logprob,
                num_tokens=lp.num_tokens,
                truncated=c.truncated,
            )
        )
    body = RewardResponse(
        model=req.model,
        lambda_=req.lambda_,
        language_score=req.language_score,
        results=results,
        usage=record(state, total_usage(item.usage, clip_usage)),
    )
    return Served(body, [w1, w2])


async def implicit(state: AppState, req: ImplicitRewardRequest) -> Served[ImplicitRewardResponse]:
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
    results = []
    for text, p, r in zip(req.responses, pol, ref, strict=True):
        r_sum, r_avg = implicit_reward(p.token_logprobs, r.token_logprobs, req.beta)
        results.append(
            ImplicitReward(
                text=text,
                reward_sum=r_sum,
                reward_avg=r_avg,
                policy_logprob=sum(p.token_logprobs),
                reference_logprob=sum(r.token_logprobs),
                num_tokens=len(p.token_logprobs),
            )
        )
    usage = record(state, total_usage(items[0].usage, items[1].usage))
    body = ImplicitRewardResponse(
        policy=req.policy, reference=req.reference, beta=req.beta, results=results, usage=usage
    )
    return Served(body, [w1, w2])
