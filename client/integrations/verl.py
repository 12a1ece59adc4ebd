"""verl custom reward function backed by the service.

verl calls `compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)`
once per response (the naive reward manager, in a worker thread), or
`compute_score(data_sources=..., solution_strs=..., ground_truths=..., extra_infos=...,
**reward_kwargs)` once per batch (`reward_model.reward_manager=batch`: use
`compute_score_batch`). Point verl at this file (`python -c "import
selfreward_vlm.client.integrations.verl as m; print(m.__file__)"` prints its path):

    custom_reward_function.path=/path/to/selfreward_vlm/client/integrations/verl.py
    custom_reward_function.name=compute_score            # or compute_score_batch
    +custom_reward_function.reward_kwargs.base_url=http://gpu-box:8000

The image and the user prompt come from `extra_info` (`image` or `images`: an image id, a
data:/http(s) URL, bytes, a `{"bytes": ...}` dict as parquet stores it, or a PIL image;
`prompt`: the user turn, required except for the clip reward). `ground_truth` is not used. A
failure raises, unless `on_error` gives the value to use instead (verl needs a number for every
response).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from selfreward_vlm.client._async import AsyncScoringClient
from selfreward_vlm.client.integrations import (
    TIMEOUT_S,
    ImageUploader,
    RewardKind,
    RewardSpec,
    run_sync,
    score_response,
)
from selfreward_vlm.core import defaults
from selfreward_vlm.core.integrations import Aggregation

DEFAULT_URL = "http://127.0.0.1:8000"
# Image ids by service URL, for the whole process: verl calls `compute_score` once per
# response, each call with a new client, and one image serves many responses.
_IMAGE_IDS: dict[str, dict[str, str]] = {}


def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: Any = None,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """The reward of one response (verl's `custom_reward_function`)."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info],
                               **kwargs)[0]  # fmt: skip


def compute_score_batch(
    data_sources: Sequence[str | None],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any] | None = None,
    extra_infos: Sequence[dict[str, Any] | None] | None = None,
    *,
    base_url: str | None = None,
    reward: RewardKind = "calibrated",
    aggregation: Aggregation = "mean",
    model: str = "base",
    policy: str = "base",
    reference: str = "base",
    beta: float = defaults.IMPLICIT_BETA,
    lam: float = defaults.LAMBDA,
    api_key: str | None = None,
    timeout: float = TIMEOUT_S,
    on_error: float | None = None,
    **_: Any,
) -> list[float]:
    """The rewards of a batch of responses, scored concurrently (verl's batch reward manager).

    `base_url` defaults to `$SELFREWARD_URL`, then http://127.0.0.1:8000; `api_key` to
    `$SELFREWARD_API_KEY`."""
    spec = RewardSpec(
        reward=reward, aggregation=aggregation, model=model, lam=lam, policy=policy,
        reference=reference, beta=beta,
    )  # fmt: skip
    infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    url = base_url or os.environ.get("SELFREWARD_URL", DEFAULT_URL)
    key = api_key or os.environ.get("SELFREWARD_API_KEY")
    return run_sync(_score_all(url, key, timeout, spec, solution_strs, infos, on_error))


async def _score_all(
    url: str,
    api_key: str | None,
    timeout: float,
    spec: RewardSpec,
    responses: Sequence[str],
    infos: Sequence[dict[str, Any] | None],
    on_error: float | None,
) -> list[float]:
    async with AsyncScoringClient(url, api_key=api_key, timeout=timeout) as client:
        uploader = ImageUploader(client, _IMAGE_IDS.setdefault(url, {}))

        async def one(response: str, info: dict[str, Any] | None) -> float:
            info = info or {}
            try:
                images = info.get("images")
                image = info.get("image", images[0] if images else None)
                ref = await uploader.ref(image)
                prompt = info.get("prompt")
                if prompt is None and spec.reward != "clip":  # CLIP scores the response alone
                    raise ValueError(
                        f"extra_info has no 'prompt' (the {spec.reward} reward is conditioned "
                        "on the user turn)"
                    )
                return await score_response(client, spec, str(prompt or ""), response, ref)
            except Exception:  # verl needs a number for every response: on_error, if given
                if on_error is None:
                    raise
                return on_error

        return list(await asyncio.gather(*(one(r, i) for r, i in zip(responses, infos,
                                                                     strict=True))))  # fmt: skip
