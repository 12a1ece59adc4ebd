"""`POST /v1/generate`: candidate next sentences (or whole responses) with raw token log-probs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from selfreward_vlm.core.schemas import Candidate, GenerateRequest, GenerateResponse
from selfreward_vlm.service.engine.decoding import Generated, GenerateItem
from selfreward_vlm.service.errors import InvalidRequestError
from selfreward_vlm.service.routes.scoring import record, resolve_image, set_timing
from selfreward_vlm.service.state import AppState, get_ready_state

router = APIRouter(prefix="/v1", tags=["generation"])


def _validate(req: GenerateRequest, state: AppState) -> None:
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
    _validate(req, state)
    image_id, image = await resolve_image(state, req.image)
    item = GenerateItem(
        adapter=req.model, prompt=req.prompt, prefix=req.prefix, image_id=image_id, image=image,
        strategy=req.strategy, n=req.n, num_beam_groups=req.num_beam_groups,
        diversity_penalty=req.diversity_penalty, temperature=req.temperature, top_p=req.top_p,
        seed=req.seed, stop=req.stop, stop_text=req.stop_text, max_new_tokens=req.max_new_tokens,
    )  # fmt: skip
    generated, work = await state.batcher.submit(item)  # type: ignore[union-attr]
    set_timing(response, work)
    item.usage.tokens_scored = sum(len(g.token_ids) for g in generated)
    engine = state.models.engine  # type: ignore[union-attr]
    return GenerateResponse(
        model=req.model,
        candidates=[
            _candidate(engine, g, req.strategy in ("beam", "diverse_beam")) for g in generated
        ],
        usage=record(state, item.usage),
    )


def _candidate(engine, g: Generated, beam: bool) -> Candidate:
    return Candidate(
        score=g.score if beam else None,
        text=engine.decode(g.token_ids),
        token_ids=g.token_ids,
        token_logprobs=g.token_logprobs,
        finished=g.stop_reason == "eos",
        stop_reason=g.stop_reason,  # type: ignore[arg-type]
    )
