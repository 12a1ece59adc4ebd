"""Shims that plug the service's rewards into the training stacks people already run.

- `trl`: a reward function for TRL's `GRPOTrainer` / `RLOOTrainer` / `OnlineDPOTrainer`
  (`reward_funcs=[SelfRewardReward(...)]`);
- `verl`: `compute_score(data_source, solution_str, ground_truth, extra_info)` and its batched
  form for verl's custom reward function.

No torch at import time (PIL is imported only when an image object has to be encoded). The
shared pieces below turn a prompt/completion in any of the stacks' shapes into the service's
calls, and score one response the way `/get_reward` does.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

from selfreward_vlm.client._async import AsyncScoringClient
from selfreward_vlm.core import defaults
from selfreward_vlm.core.integrations import (
    MAX_SENTENCES,
    Aggregation,
    aggregate,
    prefixes,
    split_sentences,
)
from selfreward_vlm.core.schemas import ImageRef

RewardKind = Literal["calibrated", "clip", "implicit"]
T = TypeVar("T")
# The trl and verl shims' default HTTP timeout, in seconds, for one scoring call.
TIMEOUT_S = 120.0


def run_sync(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code: on this thread when no event loop runs
    here (the usual case), else on a helper thread (never block a running loop on itself)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


@dataclass(frozen=True)
class RewardSpec:
    """Which reward a shim asks for, and its parameters (the service's defaults)."""

    reward: RewardKind = "calibrated"
    aggregation: Aggregation = "mean"
    model: str = "base"  # calibrated: the adapter whose log-probs give R_T
    lam: float = defaults.LAMBDA
    language_score: Literal["prob", "mean_logprob", "sum_logprob"] = "prob"
    policy: str = "base"  # implicit: policy vs reference adapters
    reference: str = "base"
    beta: float = defaults.IMPLICIT_BETA


def text_of(message: Any) -> str:
    """The text of a prompt or completion: a string, a message, or a list of messages (the
    user turns' text parts, joined)."""
    if message is None:
        return ""
    if isinstance(message, str):
        return message
    if isinstance(message, dict):
        content = message.get("content")
        if isinstance(content, str):
            return content
        parts = content or []
        return "".join(p.get("text") or "" for p in parts if p.get("type") == "text")
    if isinstance(message, list):
        users = [m for m in message if isinstance(m, dict) and m.get("role") == "user"]
        return "\n".join(text_of(m) for m in (users or message))
    raise TypeError(f"cannot read text out of {type(message).__name__}")


def images_in(message: Any) -> list[Any]:
    """Image objects embedded in conversational messages (`{"type": "image", "image": ...}`)."""
    found: list[Any] = []
    for m in message if isinstance(message, list) else []:
        content = m.get("content") if isinstance(m, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image" and part.get("image"):
                found.append(part["image"])
    return found


class ImageUploader:
    """Turns an image (PIL, bytes, an id, a data:/http URL) into what the service takes,
    uploading each distinct image once (keyed by a hash of its pixels or bytes)."""

    def __init__(self, client: AsyncScoringClient, known: dict[str, str] | None = None) -> None:
        self.client = client
        self._ids: dict[str, str] = {} if known is None else known  # pixel hash -> image id

    async def ref(self, image: Any) -> str | ImageRef | None:
        """An image id, or an `ImageRef` for a URL."""
        if image is None:
            return None
        if isinstance(image, dict) and ("bytes" in image or "path" in image):  # datasets Image
            if not image.get("bytes") and image.get("path"):  # stored as a file: read it
                image = Path(image["path"]).read_bytes()
            else:
                image = image.get("bytes")
        if isinstance(image, str):
            if image.split(":", 1)[0].lower() in ("data", "http", "https"):
                return ImageRef(url=image)
            return image  # an image id (a local path is the caller's business: read it)
        if isinstance(image, (bytes, bytearray)):
            key, load = "bytes:" + hashlib.sha256(image).hexdigest(), partial(bytes, image)
        else:
            key, load = _pixel_key(image), partial(_png, image)
        if key not in self._ids:  # outlives a client (the sync shim and verl open one a call)
            self._ids[key] = await self.client.upload_image(load())
        return self._ids[key]


def _pixel_key(image: Any) -> str:
    h = hashlib.sha256(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


async def score_response(
    client: AsyncScoringClient,
    spec: RewardSpec,
    prompt: str,
    response: str,
    image: str | ImageRef | None,
) -> float:
    """One response's reward, as `/get_reward` computes it: per sentence (each after the ones
    before it), then the mean or the sum; implicit: the token average or the sum."""
    if spec.reward == "implicit":
        out = await client.implicit_reward(
            prompt, [response], policy=spec.policy, reference=spec.reference, beta=spec.beta,
            image=image,
        )  # fmt: skip
        r = out.results[0]
        return r.reward_sum if spec.aggregation == "sum" else r.reward_avg
    if image is None:
        raise ValueError(f"the {spec.reward} reward needs an image")
    sentences = split_sentences(response)
    if not sentences:
        return 0.0
    if len(sentences) > MAX_SENTENCES:
        raise ValueError(f"the response has {len(sentences)} sentences; at most {MAX_SENTENCES}")
    if spec.reward == "clip":
        clip = await client.clip(image, [s.strip() for s in sentences])
        return aggregate([c.relevance for c in clip.results], spec.aggregation)
    calls = [
        client.reward(
            prompt,
            [s],
            image=image,
            prefix=p,
            model=spec.model,
            lam=spec.lam,
            language_score=spec.language_score,
        )
        for p, s in zip(prefixes(sentences), sentences, strict=True)
    ]
    answers = await asyncio.gather(*calls)
    return aggregate([a.results[0].reward for a in answers], spec.aggregation)
