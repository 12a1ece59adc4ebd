"""OpenAI / vLLM wire models for `/v1/completions`, `/v1/score` (CLIP) and `/v1/models`
(chat completions: `protocols.openai_chat`).

Shapes follow vLLM's OpenAI-compatible server (`entrypoints/openai/protocol.py`): unknown
fields are ignored as vLLM ignores sampling options it does not use, and errors have OpenAI's
shape `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from selfreward_vlm.core.schemas import DEFAULT_MAX_ITEMS, DEFAULT_MAX_NEW_TOKENS, ImageRef
from selfreward_vlm.service.protocols import IMAGE_URL_PATTERN, OnlyFalse


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- errors


class OpenAIErrorDetail(_Wire):
    message: str
    type: str = Field(description="invalid_request_error, not_found_error, ...")
    param: str | None = Field(None, description="the request field at fault")
    code: str | None = Field(None, description="the service's own error type")


class OpenAIErrorResponse(_Wire):
    error: OpenAIErrorDetail


# --------------------------------------------------------------------------- completions


PromptFormat = Literal["auto", "text", "chat"]
_MAX_ITEMS: dict[str, Any] = {"maxItems": DEFAULT_MAX_ITEMS}  # settings.max_items
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
Prompts = Annotated[list[str], Field(min_length=1, json_schema_extra=_MAX_ITEMS)]
TokenIdPrompts = Annotated[list[TokenIds], Field(min_length=1, json_schema_extra=_MAX_ITEMS)]


def _completion_schema(schema: dict[str, Any]) -> None:
    """What `serving.completions` checks across fields: with `max_tokens` 0 or null nothing
    is generated, so `echo` must be true and `n` 1."""
    schema["anyOf"] = [
        {"not": {"required": ["max_tokens"]}},
        {"properties": {"max_tokens": {"type": "integer", "minimum": 1}}},
        {"required": ["echo"], "properties": {"echo": {"const": True}, "n": {"const": 1}}},
    ]


class CompletionRequest(_Wire):
    """The completions API, as vLLM serves it: scoring (`echo=true, logprobs=k`, `max_tokens` 0
    or more) and generation from a raw prompt.

    How the prompt is read (`prompt_format`, a selfreward extension):
    - `text` (vLLM's reading): a text prompt is tokenized with the model's special tokens
      (`add_special_tokens`), a token-id prompt is taken as given; every token after the first
      gets its log-prob, and `logprobs: k` the real top-k alternatives;
    - `chat`: the model's chat-templated text (`apply_chat_template(..., add_generation_prompt
      =True)`) followed by an answer: only the answer's tokens (and generated ones) get
      log-probs, the template's are context (null), as `/v1/logprobs` scores the answer;
    - `auto` (default): `chat` when the prompt fits the model's chat template, else `text`.

    `image` (also an extension, in the OpenAI client's `extra_body`) is the prompt's image: the
    text holds the model's image placeholder where it goes.

    `max_tokens` 0 or null scores without generating: then `echo` must be true and `n` 1.
    Token ids are at least 0 and below the model's vocabulary size (`GET /info`).
    """

    model_config = ConfigDict(json_schema_extra=_completion_schema)

    model: str = Field(
        description="the served model's name (--model or --served-model-name), 'base', or an "
        "adapter name"
    )
    prompt: str | Prompts | TokenIds | TokenIdPrompts = Field(
        description="a text, a list of texts, one token-id list, or a list of token-id lists "
        f"(at most max_items prompts, {DEFAULT_MAX_ITEMS} by default)"
    )
    echo: bool = False
    max_tokens: (
        Annotated[int, Field(ge=0, json_schema_extra={"maximum": DEFAULT_MAX_NEW_TOKENS})] | None
    ) = Field(
        16,
        description="tokens to generate after the prompt (at most the max_new_tokens setting, "
        f"{DEFAULT_MAX_NEW_TOKENS} by default); 0 or null: score only",
    )
    temperature: float | None = Field(1.0, ge=0, description="0 = greedy")
    top_p: float | None = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, description="choice i samples with seed + i")
    stop: str | list[str] | None = Field(None, description="generation ends before these")
    logprobs: int | None = Field(None, ge=0, le=20)
    prompt_logprobs: int | None = Field(None, ge=0, le=20, description="vLLM extension")
    n: int = Field(
        1,
        ge=1,
        description="choices per prompt (1 when max_tokens is 0; at most max_items)",
        json_schema_extra={"maximum": DEFAULT_MAX_ITEMS},
    )
    add_special_tokens: bool = Field(
        True, description="vLLM extension: a text prompt's tokens include the tokenizer's "
        "special tokens (BOS), as vLLM tokenizes it; token-id prompts are taken as they are",
    )  # fmt: skip
    stream: Annotated[Literal[False], OnlyFalse] = Field(
        False, description="not supported here (/v1/chat/completions streams)"
    )
    prompt_format: PromptFormat = Field(
        "auto", description="selfreward extension: how the prompt is read (see above)"
    )
    image: ImageRef | None = Field(None, description="selfreward extension: the prompt's image")


class CompletionLogprobs(_Wire):
    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class PromptTokenLogprob(_Wire):
    logprob: float
    rank: int | None = None
    decoded_token: str


class CompletionChoice(_Wire):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["length", "stop"] | None = "length"
    stop_reason: str | None = None
    prompt_logprobs: list[dict[str, PromptTokenLogprob] | None] | None = None


class CompletionUsage(_Wire):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionResponse(_Wire):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


# --------------------------------------------------------------------------- score


class ImageUrl(_Wire):
    url: str = Field(
        description="an image id (sha256 from POST /v1/images), a data:image/...;base64, URI, "
        "or an http(s) URL where the operator allows them (--allow-image-urls)",
        json_schema_extra={"pattern": IMAGE_URL_PATTERN},
    )


class TextPart(_Wire):
    type: Literal["text"]
    text: str


class ImagePart(_Wire):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ScoreMultiModal(_Wire):
    content: list[ContentPart] = Field(
        ..., min_length=1, json_schema_extra=_MAX_ITEMS, description="all images or all texts"
    )


ScoreSide = str | Prompts | ScoreMultiModal


def _side(kind: str) -> dict[str, Any]:
    """A score side of texts (a string, a list of strings, or `text` parts) or of images
    (`image_url` parts)."""
    parts = {"type": "object", "properties": {"content": {
        "items": {"properties": {"type": {"const": kind}}}}}}  # fmt: skip
    return {"anyOf": [{"type": ["string", "array"]}, parts]} if kind == "text" else parts


def _score_schema(schema: dict[str, Any]) -> None:
    """What `routes.openai_compat.score` checks across the two sides: one holds texts and the
    other images. (That `text_1` has one item or as many as `text_2` is in the description
    only: JSON Schema cannot compare lengths, and listing them is more than Schemathesis's
    generator takes.)"""
    schema["anyOf"] = [
        {"properties": {"text_1": _side("text"), "text_2": _side("image_url")}},
        {"properties": {"text_1": _side("image_url"), "text_2": _side("text")}},
    ]


class ScoreRequest(_Wire):
    """vLLM's score request: `text_1` against each `text_2` (1:N) or pairwise (N:N). One side
    holds images (`image_url` content parts), the other texts (a string, a list of them, or
    `text` content parts); the score is CLIP relevance R_I = max(100·cos, 0). `text_1` has
    one item (scored against each of `text_2`) or as many as `text_2`; at most max_items
    pairs."""

    model_config = ConfigDict(json_schema_extra=_score_schema)

    model: str | None = None
    text_1: ScoreSide
    text_2: ScoreSide


class ScoreData(_Wire):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(_Wire):
    id: str = Field(default_factory=lambda: f"score-{uuid.uuid4().hex}")
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ScoreData]
    usage: CompletionUsage


# --------------------------------------------------------------------------- models


class ModelCard(_Wire):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "selfreward"
    root: str | None = Field(None, description="the base model (--model)")
    parent: str | None = Field(None, description="an adapter's base model")


class ModelList(_Wire):
    object: Literal["list"] = "list"
    data: list[ModelCard]
