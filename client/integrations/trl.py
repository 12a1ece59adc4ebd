"""A TRL reward function backed by the service: `reward_funcs=[SelfRewardReward(url)]`.

TRL (`GRPOTrainer`, `RLOOTrainer`, `OnlineDPOTrainer`) calls each reward function as
`f(prompts=..., completions=..., completion_ids=..., **columns)`, where `columns` are the
dataset's other columns (`image` or `images` among them) plus `trainer_state`; an async
callable is awaited on TRL's own event loop, and `None` marks a row the function cannot score
(TRL turns it into NaN and warns, the run goes on). This class is that callable:

    from selfreward_vlm.client.integrations.trl import SelfRewardReward
    trainer = GRPOTrainer(model, reward_funcs=[SelfRewardReward("http://gpu-box:8000")], ...)

Prompts and completions may be plain strings or conversational messages; images come from
the `image`/`images` columns (PIL images, uploaded once per content hash), or from image parts
in the prompt messages. The reward: `calibrated` (CSR's R per sentence, mean or sum; the
default), `clip` (R_I per sentence), or `implicit` (policy vs reference adapter).
`SyncSelfRewardReward` is the same reward as a blocking callable, for trainers that do not
await reward functions (TRL's experimental `OnlineDPOTrainer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from selfreward_vlm.client._async import AsyncScoringClient
from selfreward_vlm.client.integrations import (
    TIMEOUT_S,
    ImageUploader,
    RewardKind,
    RewardSpec,
    images_in,
    run_sync,
    score_response,
    text_of,
)
from selfreward_vlm.core import defaults
from selfreward_vlm.core.integrations import Aggregation

logger = logging.getLogger("selfreward.trl")


class SelfRewardReward:
    """Async TRL reward function: `(prompts, completions, **kw) -> list[float | None]`."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        reward: RewardKind = "calibrated",
        aggregation: Aggregation = "mean",
        model: str = "base",
        policy: str = "base",
        reference: str = "base",
        beta: float = defaults.IMPLICIT_BETA,
        lam: float = defaults.LAMBDA,
        api_key: str | None = None,
        timeout: float = TIMEOUT_S,
        concurrency: int = 16,
        name: str | None = None,
    ) -> None:
        self.base_url, self.api_key, self.timeout = base_url, api_key, timeout
        self.spec = RewardSpec(
            reward=reward, aggregation=aggregation, model=model, lam=lam, policy=policy,
            reference=reference, beta=beta,
        )  # fmt: skip
        self.concurrency = concurrency
        # TRL names the logged metric after the function: rewards/<__name__>/mean
        self.__name__ = name or f"selfreward_{reward}"
        self._client: AsyncScoringClient | None = None
        self._uploader: ImageUploader | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._image_ids: dict[str, str] = {}  # outlives a client: uploaded once per content

    def _connect(self) -> tuple[AsyncScoringClient, ImageUploader]:
        """One client per event loop (an httpx.AsyncClient belongs to the loop it runs on)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._uploader is None or self._loop is not loop:
            self._client = AsyncScoringClient(
                self.base_url, api_key=self.api_key, timeout=self.timeout
            )
            self._uploader = ImageUploader(self._client, self._image_ids)
            self._loop = loop
        return self._client, self._uploader

    async def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        client, uploader = self._connect()
        images = _image_column(kwargs, len(prompts))
        gate = asyncio.Semaphore(self.concurrency)

        async def one(i: int) -> float | None:
            async with gate:
                try:
                    image = images[i] if images[i] is not None else _first(images_in(prompts[i]))
                    ref = await uploader.ref(image)
                    prompt, response = text_of(prompts[i]), text_of(completions[i])
                    return await score_response(client, self.spec, prompt, response, ref)
                except Exception as exc:  # any row's failure (an image type we cannot
                    # read, a service error) is that row's None: the training run goes on
                    logger.warning("row %d: no reward (%s: %s)", i, type(exc).__name__, exc)
                    return None

        return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))

    async def aclose(self) -> None:
        """Close the HTTP client (a later call opens a new one)."""
        if self._client is not None:
            await self._client.close()
        self._client = self._uploader = self._loop = None


def _image_column(kwargs: dict[str, Any], n: int) -> list[Any]:
    """Each row's image from TRL's `images` (a list per row: the first) or `image` column."""
    if kwargs.get("images") is not None:
        return [_first(row) if isinstance(row, (list, tuple)) else row for row in kwargs["images"]]
    if kwargs.get("image") is not None:
        return list(kwargs["image"])
    return [None] * n


def _first(items: Sequence[Any] | None) -> Any:
    return items[0] if items else None


class SyncSelfRewardReward:
    """The same reward as a plain (blocking) callable, for trainers that call their reward
    functions without awaiting them (TRL's experimental `OnlineDPOTrainer`)."""

    def __init__(self, base_url: str | Sequence[str], **kwargs: Any) -> None:
        self.reward = SelfRewardReward(base_url, **kwargs)
        self.__name__ = self.reward.__name__

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        return run_sync(self._call(prompts, completions, kwargs))

    async def _call(
        self, prompts: Sequence[Any], completions: Sequence[Any], kwargs: dict[str, Any]
    ) -> list[float | None]:
        try:  # each call runs on its own event loop: its client must close on it
            return await self.reward(prompts, completions, **kwargs)
        finally:
            await self.reward.aclose()
