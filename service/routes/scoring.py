"""Scoring endpoints: /v1/logprobs, /v1/clip, /v1/reward, /v1/implicit-reward.

Thin routes over `service.serving.scoring`: the serving function does the work, the route sets
the timing headers of the batcher work it awaited.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from selfreward_vlm.core.schemas import (
    ClipRequest,
    ClipResponse,
    ImplicitRewardRequest,
    ImplicitRewardResponse,
    LogprobsRequest,
    LogprobsResponse,
    RewardRequest,
    RewardResponse,
)
from selfreward_vlm.service.engine.batcher import Work
from selfreward_vlm.service.serving import scoring
from selfreward_vlm.service.state import AppState, get_ready_state

router = APIRouter(prefix="/v1", tags=["scoring"])


def set_timing(response: Response, *works: Work) -> None:
    """x-queue-time-ms / x-inference-time-ms / x-batch-size of the slowest work item."""
    response.headers["x-queue-time-ms"] = f"{max(w.queue_s for w in works) * 1000:.2f}"
    response.headers["x-inference-time-ms"] = f"{max(w.infer_s for w in works) * 1000:.2f}"
    response.headers["x-batch-size"] = str(max(w.batch_size for w in works))


@router.post("/logprobs", response_model=LogprobsResponse)
async def logprobs(
    req: LogprobsRequest, response: Response, state: AppState = Depends(get_ready_state)
) -> LogprobsResponse:
    """Per-token log-probs of each continuation after image + prompt (+ prefix)."""
    served = await scoring.logprobs(state, req)
    set_timing(response, *served.works)
    return served.body


@router.post("/clip", response_model=ClipResponse)
async def clip(
    req: ClipRequest, response: Response, state: AppState = Depends(get_ready_state)
) -> ClipResponse:
    """CLIP cosine and relevance R_I = max(scale·cos, 0) of one image and many texts."""
    served = await scoring.clip(state, req)
    set_timing(response, *served.works)
    return served.body


@router.post("/reward", response_model=RewardResponse, response_model_by_alias=True)
async def reward(
    req: RewardRequest, response: Response, state: AppState = Depends(get_ready_state)
) -> RewardResponse:
    """Calibrated reward R = λ·R_I + (1−λ)·R_T of candidate sentences (CSR eq. 2-4)."""
    served = await scoring.reward(state, req)
    set_timing(response, *served.works)
    return served.body


@router.post("/implicit-reward", response_model=ImplicitRewardResponse)
async def implicit(
    req: ImplicitRewardRequest, response: Response, state: AppState = Depends(get_ready_state)
) -> ImplicitRewardResponse:
    """DPO implicit reward β·(log π_policy − log π_ref) as a sum and a token average (SBSPO)."""
    served = await scoring.implicit(state, req)
    set_timing(response, *served.works)
    return served.body
