"""The OpenAI chat completions API (`POST /v1/chat/completions`) over the engine's generation.

The conversation becomes the engine's request: one user turn is `/v1/generate`'s prompt and
image as they are (the image first, as the service renders every user turn), so a chat answer
and a `/v1/generate` answer to the same prompt are the same tokens; a longer conversation (a
system prompt, earlier turns) is rendered with the model's own chat template and handed to the
engine as the user turn that renders to exactly that text. Generation runs through the
scheduler, the prefix and image caches, like every `/v1/generate` call; stop sequences end a
choice as soon as its text holds one, and `top_logprobs` are the alternatives at each decoding
step (`GenerateItem.stop_strings`, `top_k`).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio

from selfreward_vlm.core.schemas import GenerateRequest, ImageRef
from selfreward_vlm.service.engine.decoding import Generated
from selfreward_vlm.service.errors import InvalidRequestError
from selfreward_vlm.service.protocols.openai_chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChatUsage,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
    TokenLogprob,
    TopLogprob,
)
from selfreward_vlm.service.serving.chat_text import template_parts
from selfreward_vlm.service.serving.common import Served, resolve_image
from selfreward_vlm.service.serving.generate import generate_raw
from selfreward_vlm.service.serving.models import adapter_of
from selfreward_vlm.service.serving.text import Continuation, TokenScore, continuation, encode
from selfreward_vlm.service.state import AppState

DEFAULT_MAX_TOKENS = 256
_IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Conversation:
    """What the engine takes: the user turn that renders to the conversation, and its image."""

    prompt: str
    image: ImageRef | None
    image_field: str = "image"


@dataclass
class ChatResult:
    """The response, and each choice's token ids (what a stream's chunks are cut from)."""

    response: ChatCompletionResponse
    token_ids: list[list[int]]


async def chat(state: AppState, req: ChatCompletionRequest) -> Served[ChatResult]:
    """Answer a conversation: `n` choices, with log-probs when asked."""
    max_tokens = _validate(state, req)
    adapter = adapter_of(state, req.model)
    engine = state.models.engine  # type: ignore[union-attr]
    conv = conversation(engine, req.messages)
    image_id, image = await resolve_image(state, conv.image, field=conv.image_field)
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    temperature = 1.0 if req.temperature is None else req.temperature
    greedy = temperature == 0
    native = GenerateRequest(
        model=adapter,
        prompt=conv.prompt,
        image=ImageRef(id=image_id) if image_id else None,
        strategy="greedy" if greedy else "sample",
        n=req.n,
        temperature=temperature or 1.0,  # unused when greedy
        top_p=req.top_p or 1.0,
        seed=req.seed,
        stop="eos",
        max_new_tokens=max_tokens,
    )
    top_k = (req.top_logprobs or 0) if req.logprobs else 0
    served = await generate_raw(state, native, stop_strings=tuple(stops), top_k=top_k)
    rendered = engine.render_prompt(conv.prompt, image is not None)
    add = engine.special_tokens(rendered).get("add_special_tokens", True)
    prompt = await anyio.to_thread.run_sync(encode, engine, rendered, None, image, add)
    answers = [_answer(engine, g, stops) for g in served.body]
    completion = sum(len(a.tokens) for a in answers)
    body = ChatCompletionResponse(
        model=req.model,
        choices=[
            ChatChoice(
                index=i,
                message=AssistantMessage(content=a.text),
                finish_reason=a.finish_reason,  # type: ignore[arg-type]
                logprobs=_logprobs(engine, a.tokens) if req.logprobs else None,
            )
            for i, a in enumerate(answers)
        ],
        usage=ChatUsage(
            prompt_tokens=len(prompt.ids),
            completion_tokens=completion,
            total_tokens=len(prompt.ids) + completion,
        ),
    )
    ids = [[t.token_id for t in a.tokens] for a in answers]
    return Served(ChatResult(body, ids), served.works, served.usage)


def _validate(state: AppState, req: ChatCompletionRequest) -> int:
    """The number of tokens to generate; 400s for what the engine cannot serve."""
    limits = state.settings
    if req.n > limits.max_items:
        raise InvalidRequestError(f"n = {req.n}; at most {limits.max_items}", field="n")
    if req.top_logprobs and not req.logprobs:
        raise InvalidRequestError("top_logprobs needs logprobs: true", field="top_logprobs")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise InvalidRequestError("stop: up to 4 non-empty sequences", field="stop")
    name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    asked = req.max_completion_tokens or req.max_tokens
    if asked is None:
        return min(DEFAULT_MAX_TOKENS, limits.max_new_tokens)
    if asked > limits.max_new_tokens:
        raise InvalidRequestError(f"{name} = {asked}; at most {limits.max_new_tokens}", name)
    return asked


def _answer(engine: Any, g: Generated, stops: list[str]) -> Continuation:
    """The answer cut before the first stop sequence (`serving.text.continuation`), and only
    the tokens that the cut text still shows in full or in part (OpenAI returns none of it)."""
    answer = continuation(engine, g, stops)
    if stops and len(answer.text) < len(engine.decode(g.token_ids)):  # no stops: nothing cut
        keep = 0
        while keep < len(answer.tokens) and len(engine.decode(g.token_ids[:keep])) < len(
            answer.text
        ):
            keep += 1
        answer.tokens = answer.tokens[:keep]
    return answer


def _logprobs(engine: Any, tokens: list[TokenScore]) -> ChoiceLogprobs:
    tok = engine.tokenizer

    def entry(token_id: int, lp: float) -> TopLogprob:
        text = tok.decode([token_id], skip_special_tokens=False)
        return TopLogprob(token=text, logprob=lp, bytes=list(text.encode("utf-8")))

    content = []
    for t in tokens:
        chosen = entry(t.token_id, t.logprob or 0.0)
        top = [entry(i, lp) for i, lp in t.top]
        content.append(TokenLogprob(**chosen.model_dump(), top_logprobs=top))
    return ChoiceLogprobs(content=content)


# ------------------------------------------------------------------ the conversation


def conversation(engine: Any, messages: list[ChatMessage]) -> Conversation:
    """The engine's user turn and image for `messages` (400 naming the message otherwise)."""
    image: ImageRef | None = None
    image_field = "image"
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for i, m in enumerate(messages):
        parts: list[dict[str, Any]] = []
        content = m.content if isinstance(m.content, list) else [m.content or ""]
        for j, part in enumerate(content):
            field = f"messages.{i}.content" + ("" if isinstance(m.content, str) else f".{j}")
            if isinstance(part, str):
                parts.append({"type": "text", "text": part})
            elif part.type == "text":
                parts.append({"type": "text", "text": part.text})
            else:
                if m.role != "user":
                    raise InvalidRequestError("images go in user messages", field=field)
                if image is not None:
                    raise InvalidRequestError("one image per request", field=field)
                if engine.kind != "vlm":
                    raise InvalidRequestError("this model is text-only; omit images", field)
                image, image_field = _image_ref(part.image_url.url, field), f"{field}.image_url"
                parts.append({"type": "image"})
        turns.append(({"developer": "system"}.get(m.role, m.role), parts))
    if turns[-1][0] != "user":
        raise InvalidRequestError(
            "the last message must be the user's (the answer is the assistant's next turn)",
            field=f"messages.{len(turns) - 1}.role",
        )
    if len(turns) == 1:  # one user turn: /v1/generate's prompt, the image first
        text = "\n".join(p["text"] for p in turns[0][1] if p["type"] == "text")
        return Conversation(text, image, image_field)
    return Conversation(_as_user_turn(engine, turns, image is not None), image, image_field)


def _image_ref(url: str, field: str) -> ImageRef:
    url = url.strip()
    if _IMAGE_ID.match(url):
        return ImageRef(id=url)
    if url.split(":", 1)[0].lower() in ("data", "http", "https"):
        return ImageRef(url=url)
    raise InvalidRequestError(
        "image_url.url must be a data: URI, an http(s) URL or an image id", field=f"{field}.url"
    )


def _as_user_turn(
    engine: Any, turns: list[tuple[str, list[dict[str, Any]]]], with_image: bool
) -> str:
    """The text X whose rendering as one user turn (`engine.render_prompt(X)`) is exactly the
    model's own rendering of the whole conversation."""
    messages = []
    for role, parts in turns:
        if engine.kind == "vlm":
            messages.append({"role": role, "content": parts})
        else:
            messages.append({"role": role, "content": "\n".join(p["text"] for p in parts)})
    owner = engine.processor if engine.kind == "vlm" else engine.tokenizer
    if not getattr(owner, "chat_template", None):
        raise InvalidRequestError(
            "this model has no chat template: send one user message", field="messages"
        )
    try:
        full = str(owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    except Exception as e:  # the template's own checks (roles, order) raise
        raise InvalidRequestError(f"the model's chat template refused: {e}", "messages") from None
    head, tail = template_parts(engine, with_image)
    turn = full[len(head) : len(full) - len(tail)] if len(full) >= len(head) + len(tail) else ""
    if (
        not (full.startswith(head) and full.endswith(tail))
        or engine.render_prompt(turn, with_image) != full
    ):
        raise InvalidRequestError(
            "this conversation does not render as one user turn of this model's chat template "
            "(e.g. a system prompt where the template writes a default one, or the image "
            "outside the first user message's start): send one user message",
            field="messages",
        )
    return turn


# ------------------------------------------------------------------ streaming


async def stream(engine: Any, result: ChatResult, include_usage: bool) -> AsyncIterator[str]:
    """The answer as OpenAI streams it: per choice a role chunk, one chunk per token (its text
    and, if asked, its log-probs), a finish chunk; then (if asked) a usage chunk, and
    `data: [DONE]`. The engine generates whole answers: the chunks follow the generation."""
    served = result.response
    base = {"id": served.id, "created": served.created, "model": served.model}

    def event(choices: list[ChunkChoice], usage: ChatUsage | None = None) -> str:
        chunk = ChatCompletionChunk(**base, choices=choices, usage=usage)
        return f"data: {json.dumps(chunk.model_dump(exclude_none=True))}\n\n"

    for c, ids in zip(served.choices, result.token_ids, strict=True):
        yield event([ChunkChoice(index=c.index, delta=DeltaMessage(role="assistant", content=""))])
        entries = c.logprobs.content if c.logprobs is not None else None
        for i, piece in enumerate(_pieces(engine, ids, c.message.content or "")):
            lps = ChoiceLogprobs(content=[entries[i]]) if entries else None
            yield event(
                [ChunkChoice(index=c.index, delta=DeltaMessage(content=piece), logprobs=lps)]
            )
        yield event(
            [ChunkChoice(index=c.index, delta=DeltaMessage(), finish_reason=c.finish_reason)]
        )
    if include_usage:
        yield event([], served.usage)
    yield "data: [DONE]\n\n"


def _pieces(engine: Any, ids: list[int], content: str) -> list[str]:
    """One text piece per token, joining to `content`: the text each token completes (a
    token ending inside a multi-byte character waits for the next one)."""
    pieces, shown = [], 0
    for i in range(len(ids)):
        text = engine.decode(ids[: i + 1]).rstrip("\ufffd")[: len(content)]
        end = len(text) if content.startswith(text) else shown
        end = len(content) if i == len(ids) - 1 else max(end, shown)
        pieces.append(content[shown:end])
        shown = end
    return pieces
