"""OpenRLHF's remote reward model wire models (`POST /get_reward`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from selfreward_vlm.core.schemas import DATA_URI_PATTERN, DEFAULT_MAX_ITEMS
from selfreward_vlm.service.protocols import UP_TO_MAX_ITEMS, same_lengths

# A label's image: none (""), an image id, or a data:image/...;base64, URI (http(s) URLs where
# the operator allows them).
_IMAGE = f"^$|^[0-9a-f]{{64}}$|{DATA_URI_PATTERN}"
_LABEL = {
    "anyOf": [
        {"type": "null"},
        {"type": "string", "pattern": _IMAGE},
        {
            "type": "string",
            "pattern": r"^\s*\{",
            "contentMediaType": "application/json",
            "description": 'a JSON object {"image": ..., "prompt": ...} as text',
        },
        {
            "type": "object",
            "properties": {
                "image": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": _IMAGE}]},
                "prompt": {"type": ["string", "null"], "description": "the user turn"},
            },
        },
    ]
}


def _same_lengths(schema: dict[str, Any]) -> None:
    schema["anyOf"] = same_lengths(("query", "prompts", "labels"), UP_TO_MAX_ITEMS)


class OpenRLHFRewardRequest(BaseModel):
    """What OpenRLHF posts (older releases send `query` alone). OpenRLHF ≥ 0.10 splits a
    batch over every URL of `--reward.remote_url`, so one URL may get empty lists.

    `prompts` and `labels`, when given, hold one item per query (the schema lists the lengths
    up to max_items: JSON Schema cannot compare them)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=_same_lengths)

    query: list[str] = Field(
        ...,
        description=f"templated prompt + response (at most max_items, {DEFAULT_MAX_ITEMS} by "
        "default)",
        json_schema_extra={"maxItems": DEFAULT_MAX_ITEMS},
    )
    prompts: list[str] | None = Field(
        None, description="the templated prompts, one per query, same order"
    )
    labels: list[Annotated[Any, WithJsonSchema(_LABEL)]] | None = Field(
        None,
        description="one per query: an image id, a data: URI (http(s) URLs where allowed), or "
        "a JSON object {'image': ..., 'prompt': ...} (or its text; prompt: the user turn, when "
        "it cannot be read out of the template)",
    )


class OpenRLHFRewardResponse(BaseModel):
    rewards: list[float] = Field(description="the reward of each query, in input order")
    scores: list[float] = Field(
        description="1/(1+exp(-(reward-center)/scale)): a monotone map into (0, 1)"
    )
    extra_logs: dict[str, list[float]] = Field(description="r_i, r_t, num_sentences, ...")
