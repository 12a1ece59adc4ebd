"""OpenAI chat completions wire models (`POST /v1/chat/completions`), as OpenAI and vLLM
send them: messages with text and `image_url` content parts, sampling options, log-probs,
server-sent-event chunks for `stream: true`. Unknown fields are ignored."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from selfreward_vlm.service.protocols.openai import ImageUrl


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Wire):
    type: Literal["text"]
    text: str


class ImagePart(_Wire):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = TextPart | ImagePart


class ChatMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Wire):
    include_usage: bool = False


class ChatCompletionRequest(_Wire):
    """OpenAI's chat request. At most one image per request (the engine's unit of work); the
    conversation is rendered with the model's own chat template."""

    model: str = Field(
        description="the served model's name (--model or --served-model-name), 'base', or an "
        "adapter name"
    )
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="deprecated name of the next")
    max_completion_tokens: int | None = Field(None, ge=1, description="default: 256")
    temperature: float | None = Field(1.0, ge=0, le=2, description="0 = greedy")
    top_p: float | None = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, description="choice i samples with seed + i")
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = Field(None, description="up to 4 sequences; not returned")
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
