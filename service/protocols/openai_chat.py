"""OpenAI chat completions wire models (`POST /v1/chat/completions`), as OpenAI and vLLM
send them: messages with text and `image_url` content parts, sampling options, log-probs,
server-sent-event chunks for `stream: true`. Unknown fields are ignored."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from selfreward_vlm.core.schemas import DEFAULT_MAX_ITEMS, DEFAULT_MAX_NEW_TOKENS
from selfreward_vlm.service.protocols.openai import ContentPart


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _images_from_users(schema: dict[str, Any]) -> None:
    """Only a user message may hold an image part (`serving.chat.conversation`)."""
    text_parts = {"items": {"properties": {"type": {"const": "text"}}}}
    schema["anyOf"] = [
        {"properties": {"role": {"const": "user"}}},
        {"properties": {"content": text_parts}},
    ]


class ChatMessage(_Wire):
    """A message; images go in user messages (one image per request)."""

    model_config = ConfigDict(json_schema_extra=_images_from_users)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Wire):
    include_usage: bool = False


_MAX_NEW: dict[str, Any] = {"maximum": DEFAULT_MAX_NEW_TOKENS}  # settings.max_new_tokens


def _top_logprobs_need_logprobs(schema: dict[str, Any]) -> None:
    schema["anyOf"] = [
        {"properties": {"top_logprobs": {"enum": [0, None]}}},
        {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
    ]


class ChatCompletionRequest(_Wire):
    """OpenAI's chat request. At most one image per request (the engine's unit of work); the
    conversation is rendered with the model's own chat template, and the last message is the
    user's. `top_logprobs` above 0 needs `logprobs: true`."""

    model_config = ConfigDict(json_schema_extra=_top_logprobs_need_logprobs)

    model: str = Field(
        description="the served model's name (--model or --served-model-name), 'base', or an "
        "adapter name"
    )
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(
        None, ge=1, description="deprecated name of the next", json_schema_extra=_MAX_NEW
    )
    max_completion_tokens: int | None = Field(
        None,
        ge=1,
        description=f"default: 256; at most the max_new_tokens setting ({DEFAULT_MAX_NEW_TOKENS}"
        " by default)",
        json_schema_extra=_MAX_NEW,
    )
    temperature: float | None = Field(1.0, ge=0, le=2, description="0 = greedy")
    top_p: float | None = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, description="choice i samples with seed + i")
    n: int = Field(
        1,
        ge=1,
        description=f"at most max_items ({DEFAULT_MAX_ITEMS} by default)",
        json_schema_extra={"maximum": DEFAULT_MAX_ITEMS},
    )
    stop: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)]
        | None
    ) = Field(None, description="up to 4 non-empty sequences; not returned")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20, description="needs logprobs: true")
    stream: bool = False
    stream_options: StreamOptions | None = None


class TopLogprob(_Wire):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Wire):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(_Wire):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatChoice(_Wire):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatUsage(_Wire):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def _chat_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletionResponse(_Wire):
    id: str = Field(default_factory=_chat_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage
    system_fingerprint: str | None = None


class DeltaMessage(_Wire):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Wire):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(_Wire):
    """One server-sent event of a streamed answer (`data: {...}`, then `data: [DONE]`)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: ChatUsage | None = None
    system_fingerprint: str | None = None
