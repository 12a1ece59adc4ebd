"""OpenAI / vLLM-compatible routes, thin translators over the serving layer: `POST
/v1/completions` (`serving.completions`), `POST /v1/chat/completions` (`serving.chat`, the
engine's generation), `GET /v1/models`, and `POST /v1/score` (CLIP relevance,
`serving.scoring.clip`).

Errors on these routes leave in OpenAI's shape `{"error": {"message", "type", "param",
"code"}}` (the route class below catches them at this edge); the native routes keep theirs, and
so do the guards that answer before any route runs (401 bearer auth, 413 body size: ASGI
middleware, `service.http.auth`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute

from selfreward_vlm.core.schemas import ClipRequest, ImageRef
from selfreward_vlm.service.errors import InvalidRequestError, ServiceError
from selfreward_vlm.service.protocols.openai import (
    CompletionRequest,
    CompletionResponse,
    CompletionUsage,
    ModelList,
    OpenAIErrorResponse,
    ScoreData,
    ScoreMultiModal,
    ScoreRequest,
    ScoreResponse,
    ScoreSide,
    TextPart,
)
from selfreward_vlm.service.protocols.openai_chat import (
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from selfreward_vlm.service.routes.scoring import set_timing
from selfreward_vlm.service.serving import chat as serving_chat
from selfreward_vlm.service.serving import completions as serving_completions
from selfreward_vlm.service.serving import scoring
from selfreward_vlm.service.serving.common import check_items
from selfreward_vlm.service.serving.models import model_list
from selfreward_vlm.service.state import AppState, get_ready_state

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
    503: "service_unavailable_error",
}
_IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")


def openai_error(
    status: int, message: str, param: str | None, code: str | None, headers: Any = None
) -> JSONResponse:
    """OpenAI's error body. A native 422 (a value the service cannot serve) is OpenAI's 400."""
    status = 400 if status == 422 else status
    body = {"error": {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}  # fmt: skip
    return JSONResponse(body, status_code=status, headers=headers)


class OpenAIRoute(APIRoute):
    """Renders this router's errors (validation included) in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                errors = list(exc.errors())
                first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
                loc = _field_path(exc.body, [p for p in first["loc"] if p != "body"])
                return openai_error(400, f"{'.'.join(loc)}: {first['msg']}", ".".join(loc) or None,
                                    "invalid_request")  # fmt: skip
            except ServiceError as exc:
                headers = None
                if exc.retry_after is not None:  # 429 queue_full, 503 not_ready, store_unavailable
                    headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
                return openai_error(exc.status_code, exc.message, exc.field, exc.type, headers)

        return route


def _field_path(body: Any, loc: list[Any]) -> list[str]:
    """The request field a validation error names: its `loc` without pydantic's union tags
    (`stop.constrained-str`, `text_2.ScoreMultiModal...`), found by walking the body."""
    path, value = [], body
    for k, part in enumerate(loc):
        if isinstance(value, dict) and (part in value or k == len(loc) - 1):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            continue  # a union member's tag, not a field
        path.append(str(part))
    return path


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorResponse, "description": "Invalid request (OpenAI error shape)"},
    404: {"model": OpenAIErrorResponse, "description": "Unknown model, adapter or image"},
}
router = APIRouter(tags=["openai"], route_class=OpenAIRoute, responses=_ERRORS)


# ------------------------------------------------------------------ completions, chat, models


@router.post("/v1/completions", response_model=CompletionResponse, response_model_exclude_none=True)
async def completions(
    req: CompletionRequest, response: Response, state: AppState = Depends(get_ready_state)
) -> CompletionResponse:
    """Log-probs of a text (`echo=true, logprobs=k`, `max_tokens` 0 or more), or a completion
    of it, as vLLM answers (what lm-evaluation-harness's `local-completions` sends). How the
    prompt is read, `text` (vLLM) or `chat` (the model's chat template + an answer):
    `prompt_format`, see the request schema."""
    served = await serving_completions.completions(state, req)
    if served.works:
        set_timing(response, *served.works)
    return served.body


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    response_model_exclude_none=True,
    responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or with "
                     "stream: true server-sent events of ChatCompletionChunk"}},
)  # fmt: skip
async def chat_completions(
    req: ChatCompletionRequest, response: Response, state: AppState = Depends(get_ready_state)
) -> Any:
    """OpenAI's chat completions: text and `image_url` parts (one image), generated by the
    engine as `/v1/generate` generates; `stream: true` answers with server-sent events."""
    served = await serving_chat.chat(state, req)
    set_timing(response, *served.works)
    if not req.stream:
        return served.body.response
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    engine = state.models.engine  # type: ignore[union-attr]
    return StreamingResponse(
        serving_chat.stream(engine, served.body, include_usage),
        media_type="text/event-stream",
        headers=dict(response.headers),
    )


@router.get("/v1/models", response_model=ModelList)
async def models(state: AppState = Depends(get_ready_state)) -> ModelList:
    """The base model under each of its names, `base` and the adapters."""
    return model_list(state)


# ------------------------------------------------------------------ score


@router.post("/v1/score", response_model=ScoreResponse)
@router.post("/score", response_model=ScoreResponse)  # vLLM serves both (its examples: /score)
async def score(req: ScoreRequest, state: AppState = Depends(get_ready_state)) -> ScoreResponse:
    """vLLM's score API over CLIP: each (image, text) pair's relevance R_I = max(100·cos, 0)."""
    left, right = _items(req.text_1, "text_1"), _items(req.text_2, "text_2")
    if len(left) == 1:
        left = left * len(right)
    if len(left) != len(right):
        raise InvalidRequestError(
            f"text_1 has {len(left)} items and text_2 {len(right)}: give one, or as many",
            "text_2",
        )
    pairs = []
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        image, text = (a, b) if isinstance(a, ImageRef) else (b, a)
        if not isinstance(image, ImageRef) or isinstance(text, ImageRef):
            raise InvalidRequestError(
                f"pair {i}: CLIP relevance scores an image (image_url part) against a text",
                "text_2",
            )
        pairs.append((image, text))
    check_items(state, pairs, "text_2")
    by_image: dict[str, list[int]] = {}
    for i, (image, _) in enumerate(pairs):
        by_image.setdefault(image.model_dump_json(exclude_none=True), []).append(i)
    calls = [
        ClipRequest(image=pairs[idx[0]][0], texts=[str(pairs[i][1]) for i in idx])
        for idx in by_image.values()
    ]
    served = await asyncio.gather(*(scoring.clip(state, c) for c in calls))
    answers = [s.body for s in served]
    data: list[ScoreData] = []
    for idx, answer in zip(by_image.values(), answers, strict=True):
        data += [ScoreData(index=i, score=r.relevance) for i, r in zip(idx, answer.results,
                                                                         strict=True)]  # fmt: skip
    n_tokens = sum(a.usage.tokens_scored for a in answers)
    return ScoreResponse(
        model=req.model or state.settings.clip or "clip",
        data=sorted(data, key=lambda d: d.index),
        usage=CompletionUsage(prompt_tokens=n_tokens, total_tokens=n_tokens),
    )


def _items(side: ScoreSide, field: str) -> list[str | ImageRef]:
    """A score side as texts or images (an image_url part: data:/http(s) URL or image id)."""
    if isinstance(side, str):
        return [side]
    if isinstance(side, list):
        return list(side)
    assert isinstance(side, ScoreMultiModal)
    if len({part.type for part in side.content}) > 1:
        raise InvalidRequestError(
            "a side holds images or texts, not both (CLIP scores an image against a text)",
            f"{field}.content",
        )
    out: list[str | ImageRef] = []
    for part in side.content:
        if isinstance(part, TextPart):
            out.append(part.text)
        else:
            url = part.image_url.url.strip()
            out.append(ImageRef(id=url) if _IMAGE_ID.match(url) else ImageRef(url=url))
    return out
