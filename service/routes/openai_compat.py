"""OpenAI / vLLM-compatible scoring: `POST /v1/completions` (echo + log-probs) and `POST /v1/score`
(CLIP relevance), thin translators onto the native `/v1/logprobs` and `/v1/clip` handlers.

Errors on these routes leave in OpenAI's shape `{"error": {"message", "type", "param",
"code"}}` (the route class below catches them at this edge); the native routes keep theirs, and
so do the guards that answer before any route runs (401 bearer auth, 413 body size: ASGI
middleware, `service.auth`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from selfreward_vlm.core.schemas import ClipRequest, ImageRef, LogprobsRequest, TokenLogprobs
from selfreward_vlm.service.chat_text import split_templated
from selfreward_vlm.service.errors import InvalidRequestError, QueueFullError, ServiceError
from selfreward_vlm.service.protocols.openai import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionUsage,
    OpenAIErrorResponse,
    PromptTokenLogprob,
    ScoreData,
    ScoreMultiModal,
    ScoreRequest,
    ScoreResponse,
    ScoreSide,
)
from selfreward_vlm.service.routes import scoring
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
                loc = [str(p) for p in first["loc"] if p != "body"]
                return openai_error(400, f"{'.'.join(loc)}: {first['msg']}", ".".join(loc) or None,
                                    "invalid_request")  # fmt: skip
            except ServiceError as exc:
                headers = None
                if isinstance(exc, QueueFullError):
                    headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
                return openai_error(exc.status_code, exc.message, exc.field, exc.type, headers)

        return route


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorResponse, "description": "Invalid request (OpenAI error shape)"},
    404: {"model": OpenAIErrorResponse, "description": "Unknown adapter or image"},
}
router = APIRouter(tags=["openai"], route_class=OpenAIRoute, responses=_ERRORS)


# ------------------------------------------------------------------ completions


@router.post("/v1/completions", response_model=CompletionResponse, response_model_exclude_none=True)
async def completions(
    req: CompletionRequest, state: AppState = Depends(get_ready_state)
) -> CompletionResponse:
    """Log-probs of a given text, as vLLM answers `echo=true, max_tokens=0, logprobs=k`.

    The prompt is the model's chat-templated text plus the assistant text; the assistant text's
    tokens get their log-probs (from `/v1/logprobs`), the template's tokens are context and get
    null (vLLM's first token is null likewise). `top_logprobs` holds the token itself only.
    """
    if req.stream:
        raise InvalidRequestError("stream is not supported on this scoring route", "stream")
    if req.max_tokens:
        raise InvalidRequestError(
            "this route scores text: use echo=true with max_tokens=0 (generation: /v1/generate)",
            "max_tokens",
        )
    if not req.echo:
        raise InvalidRequestError("echo must be true (max_tokens=0 returns only the echo)", "echo")
    if req.n != 1:  # scoring is deterministic: n copies would say nothing more
        raise InvalidRequestError("n must be 1 on this scoring route", "n")
    prompts = _prompts(state, req.prompt)
    scoring.check_items(state, prompts, "prompt")
    image_id = None
    if req.image is not None:
        image_id, _ = await scoring.resolve_image(state, req.image)
    choices = await asyncio.gather(
        *(_choice(state, req, i, text, ids, image_id) for i, (text, ids) in enumerate(prompts))
    )
    n_tokens = sum(len(c.logprobs.tokens) for c in choices if c.logprobs is not None)
    return CompletionResponse(
        model=req.model,
        choices=list(choices),
        usage=CompletionUsage(prompt_tokens=n_tokens, total_tokens=n_tokens),
    )


def _prompts(
    state: AppState, prompt: str | list[str] | list[int] | list[list[int]]
) -> list[tuple[str, list[int] | None]]:
    """`prompt` as (text, the client's token ids or None): token-id prompts are decoded with
    their special tokens, and keep their ids for the echo."""
    tok = state.models.engine.tokenizer  # type: ignore[union-attr]
    if isinstance(prompt, str):
        return [(prompt, None)]
    ids = [t for p in prompt for t in (p if isinstance(p, list) else [p]) if isinstance(t, int)]
    if any(not 0 <= t < len(tok) for t in ids):  # the tokenizer would overflow or misread
        raise InvalidRequestError(f"token ids must lie in [0, {len(tok)})", field="prompt")
    if prompt and all(isinstance(t, int) for t in prompt):
        one = [t for t in prompt if isinstance(t, int)]
        return [(tok.decode(one, skip_special_tokens=False), one)]
    out: list[tuple[str, list[int] | None]] = []
    for p in prompt:  # texts, or token-id lists (validation refuses a mixed list)
        if isinstance(p, str):
            out.append((p, None))
        else:
            one = p if isinstance(p, list) else [p]
            out.append((tok.decode(one, skip_special_tokens=False), one))
    return out


async def _choice(
    state: AppState,
    req: CompletionRequest,
    index: int,
    text: str,
    submitted: list[int] | None,
    image_id: str | None,
) -> CompletionChoice:
    engine = state.models.engine  # type: ignore[union-attr]
    parts = split_templated(engine, text, image_id is not None)
    if parts is None:
        raise InvalidRequestError(
            "the prompt must be this model's chat-templated text (apply_chat_template with "
            "add_generation_prompt) followed by the text to score",
            "prompt" if isinstance(req.prompt, str) else f"prompt.{index}",
        )
    user, assistant = parts
    native = LogprobsRequest(
        model=req.model, prompt=user, continuations=[assistant],
        image=ImageRef(id=image_id) if image_id else None,
    )  # fmt: skip
    scored: TokenLogprobs = (await scoring.logprobs(native, Response(), state)).results[0]
    context = _context_ids(engine.tokenizer, req, text, assistant, submitted, scored.token_ids)
    ids = [*context, *scored.token_ids]
    lps: list[float | None] = [None] * len(context) + list(scored.token_logprobs)
    tokens = [engine.tokenizer.decode([t], skip_special_tokens=False) for t in ids]
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    logprobs = None
    if req.logprobs is not None:
        top = [None if lp is None else {t: lp} for t, lp in zip(tokens, lps, strict=True)]
        logprobs = CompletionLogprobs(
            text_offset=offsets, token_logprobs=lps, tokens=tokens, top_logprobs=top
        )
    prompt_lps = None
    if req.prompt_logprobs is not None:
        prompt_lps = [
            None if lp is None else {str(i): PromptTokenLogprob(logprob=lp, decoded_token=t)}
            for i, t, lp in zip(ids, tokens, lps, strict=True)
        ]
    return CompletionChoice(index=index, text=text, logprobs=logprobs, prompt_logprobs=prompt_lps)


def _context_ids(
    tok: Any,
    req: CompletionRequest,
    text: str,
    assistant: str,
    submitted: list[int] | None,
    answer: list[int],
) -> list[int]:
    """The echoed tokens before the answer's: the client's own (its token ids, or its text
    tokenized as vLLM does, `add_special_tokens` honoured), so the echo has one entry per
    submitted token (expanded image placeholders included). Where the client's tokens cross
    the assistant text's start differently from the answer's, its context text's tokens."""
    add = req.add_special_tokens and submitted is None  # token ids are taken as they are
    if submitted is None:
        submitted = list(tok(text, add_special_tokens=add)["input_ids"])
    if submitted[len(submitted) - len(answer) :] == answer:
        return submitted[: len(submitted) - len(answer)]
    context = text[: len(text) - len(assistant)]
    return list(tok(context, add_special_tokens=add)["input_ids"])


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
    scoring.check_items(state, pairs, "text_2")
    by_image: dict[str, list[int]] = {}
    for i, (image, _) in enumerate(pairs):
        by_image.setdefault(image.model_dump_json(exclude_none=True), []).append(i)
    calls = [
        ClipRequest(image=pairs[idx[0]][0], texts=[str(pairs[i][1]) for i in idx])
        for idx in by_image.values()
    ]
    answers = await asyncio.gather(*(scoring.clip(c, Response(), state) for c in calls))
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
    """A score side as texts and images (an image_url part: data:/http(s) URL or image id)."""
    if isinstance(side, str):
        return [side]
    if isinstance(side, list):
        return list(side)
    out: list[str | ImageRef] = []
    assert isinstance(side, ScoreMultiModal)
    for k, part in enumerate(side.content):
        if part.type == "text":
            out.append(part.text or "")
        elif part.image_url is None:
            raise InvalidRequestError("image_url part without image_url", f"{field}.content.{k}")
        else:
            url = part.image_url.url.strip()
            out.append(ImageRef(id=url) if _IMAGE_ID.match(url) else ImageRef(url=url))
    return out
