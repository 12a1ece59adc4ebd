"""The reward of one whole response, in the operator's OpenRLHF mode (`--openrlhf-reward`):
calibrated (CSR's R per sentence, each scored after the sentences before it), CLIP only (R_I
per sentence), or implicit (policy vs reference over the response and its EOS), aggregated
by mean or sum. Scored by `serving.scoring`'s functions, waiting out a full queue up to
`openrlhf_queue_wait_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

from selfreward_vlm.core.integrations import aggregate, prefixes, split_sentences
from selfreward_vlm.core.schemas import (
    ClipRequest,
    ImageRef,
    ImplicitRewardRequest,
    RewardRequest,
)
from selfreward_vlm.service.errors import InvalidRequestError, QueueFullError
from selfreward_vlm.service.serving import scoring
from selfreward_vlm.service.state import AppState

T = TypeVar("T")


class RewardBusyError(QueueFullError):
    """The queue stayed full for the whole wait bound: 503 + Retry-After (OpenRLHF retries
    five times, one second apart)."""

    status_code = 503


async def response_reward(
    state: AppState, image: ImageRef | None, user: str, response: str, field: str
) -> dict[str, float]:
    """One response's reward and logs (`reward` plus the mode's own keys), in the operator's
    mode; `field` names the request field an image error is reported on."""
    settings = state.settings
    mode, how = settings.openrlhf_reward, settings.openrlhf_aggregation
    sentences = split_sentences(response)
    if mode == "implicit":
        image_id, _ = await scoring.resolve_image(state, image)
        req = ImplicitRewardRequest(
            policy=settings.openrlhf_policy, reference=settings.openrlhf_reference,
            beta=settings.openrlhf_beta, image=ImageRef(id=image_id) if image_id else None,
            prompt=user, responses=[response],
        )  # fmt: skip
        res = await patiently(state, lambda: scoring.implicit(state, req))
        r = res.body.results[0]
        return {
            "reward": r.reward_sum if how == "sum" else r.reward_avg,
            "policy_logprob": r.policy_logprob,
            "reference_logprob": r.reference_logprob,
            "num_tokens": float(r.num_tokens),
            "num_sentences": float(len(sentences)),
        }
    if image is None:
        raise InvalidRequestError(f"the {mode} reward needs an image in the label", field=field)
    image_id, _ = await scoring.resolve_image(state, image, for_policy=mode == "calibrated")
    ref = ImageRef(id=image_id)
    if not sentences:  # the mode's own keys: every sample's extra_logs share them
        logs = {"reward": 0.0, "r_i": 0.0, "num_sentences": 0.0}
        return logs if mode == "clip" else {**logs, "r_t": 0.0}
    if mode == "clip":
        creq = ClipRequest(image=ref, texts=[s.strip() for s in sentences])
        clip = await patiently(state, lambda: scoring.clip(state, creq))
        r_i = [c.relevance for c in clip.body.results]
        return {"reward": aggregate(r_i, how), "r_i": aggregate(r_i, how),
                "num_sentences": float(len(sentences))}  # fmt: skip
    calls = [
        RewardRequest(
            image=ref, prompt=user, prefix=p, candidates=[s], model=settings.openrlhf_policy
        )
        for p, s in zip(prefixes(sentences), sentences, strict=True)
    ]
    results = await all_or_none(
        [patiently(state, partial(scoring.reward, state, c)) for c in calls]
    )
    scores = [res.body.results[0] for res in results]
    return {
        "reward": aggregate([s.reward for s in scores], how),
        "r_i": aggregate([s.r_i for s in scores], how),
        "r_t": aggregate([s.r_t for s in scores], how),
        "num_sentences": float(len(sentences)),
    }


async def all_or_none(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """`asyncio.gather`, but the first failure cancels the other calls: the request has failed,
    their scoring would only take the GPU from the next one."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def patiently(state: AppState, call: Callable[[], Awaitable[T]]) -> T:
    """Run `call`, retrying while the queue is full, up to the operator's bound; then 503."""
    deadline = time.monotonic() + state.settings.openrlhf_queue_wait_s
    delay = 0.05
    while True:
        try:
            return await call()
        except QueueFullError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RewardBusyError(
                    f"the scoring queue stayed full for {state.settings.openrlhf_queue_wait_s:g}"
                    f" s ({exc.message})",
                    retry_after=1.0,
                ) from None
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)
