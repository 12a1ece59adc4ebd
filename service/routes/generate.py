"""`POST /v1/generate`: candidate next sentences (or whole responses) with raw token log-probs.
A thin route over `service.serving.generate`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from selfreward_vlm.core.schemas import GenerateRequest, GenerateResponse
from selfreward_vlm.service.routes.scoring import set_timing
from selfreward_vlm.service.serving import generate as serving
from selfreward_vlm.service.state import AppState, get_ready_state

router = APIRouter(prefix="/v1", tags=["generation"])


@router.post("/generate", response_model=GenerateResponse)
async def generate(
    req: GenerateRequest, response: Response, state: AppState = Depends(get_ready_state)
) -> GenerateResponse:
    """Generate `n` candidates after image + prompt + prefix.

    Diverse beam search is group beam search with the Hamming diversity penalty (the CSR
    paper's setting: n = 5 groups of 1 beam, penalty 3.0); `stop="sentence"` ends a candidate
    at the delimiter or EOS. `token_logprobs` are raw log-softmax values, so R_T of a candidate
    needs no second forward.
    """
    served = await serving.generate(state, req)
    set_timing(response, *served.works)
    return served.body
