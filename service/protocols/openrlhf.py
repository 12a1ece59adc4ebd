"""OpenRLHF's remote reward model wire models (`POST /get_reward`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class OpenRLHFRewardRequest(BaseModel):
    """What OpenRLHF posts (older releases send `query` alone). OpenRLHF ≥ 0.10 splits a
    batch over every URL of `--reward.remote_url`, so one URL may get empty lists."""

    model_config = ConfigDict(extra="ignore")

    query: list[str] = Field(..., description="templated prompt + response")
    prompts: list[str] | None = Field(None, description="the templated prompts, same order")
    labels: list[Any] | None = Field(
        None,
        description="image id, data:/http(s) URL, or JSON {'image': ..., 'prompt': ...} "
        "(prompt: the user turn, when it cannot be read out of the template)",
    )


class OpenRLHFRewardResponse(BaseModel):
    rewards: list[float] = Field(description="the reward of each query, in input order")
    scores: list[float] = Field(
        description="1/(1+exp(-(reward-center)/scale)): a monotone map into (0, 1)"
    )
    extra_logs: dict[str, list[float]] = Field(description="r_i, r_t, num_sentences, ...")
