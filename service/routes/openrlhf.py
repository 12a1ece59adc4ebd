"""OpenRLHF's remote reward model protocol: `POST /get_reward`, a translator onto the serving
layer's scoring functions (`serving.scoring`).

OpenRLHF (`openrlhf/utils/agent.py`, `SingleTurnAgentExecutor`) posts
`{"query": [...], "prompts": [...], "labels": [...]}`, where `query` is
`tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)`: the chat-templated
prompt with its image placeholders expanded, then the response and its EOS. It reads
`rewards`, `scores` (what `--dynamic_filtering_reward_range` filters on) and `extra_logs`.

Per sample: the response is `query` minus the prompt, matched on token ids (runs of the image
placeholder collapsed, so expanded and unexpanded prompts both match); the image comes from the
label (an image id, a data:/http(s) URL, or a JSON object `{"image": ..., "prompt": ...}`); the
user turn is the label's `prompt`, or is read out of the templated prompt by inverting the
model's own chat template. The operator picks the reward (`--openrlhf-reward`): calibrated
(CSR's R per sentence), CLIP only (R_I per sentence), or implicit (policy vs reference).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

from fastapi import APIRouter, Depends

from selfreward_vlm.core.integrations import (
    SCORE_CENTER,
    SCORE_SCALE,
    aggregate,
    prefixes,
    split_sentences,
    unit_score,
)
from selfreward_vlm.core.schemas import (
    ClipRequest,
    ImageRef,
    ImplicitRewardRequest,
    RewardRequest,
)
from selfreward_vlm.service.chat_text import response_after, split_templated, template_parts
from selfreward_vlm.service.errors import (
    InvalidRequestError,
    QueueFullError,
    ServiceError,
)
from selfreward_vlm.service.protocols.openrlhf import (
    OpenRLHFRewardRequest,
    OpenRLHFRewardResponse,
)
from selfreward_vlm.service.serving import scoring
from selfreward_vlm.service.state import AppState, get_ready_state

T = TypeVar("T")
_IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")


class RewardBusyError(QueueFullError):
    """The queue stayed full for the whole wait bound: 503 + Retry-After (OpenRLHF retries
    five times, one second apart)."""

    status_code = 503


router = APIRouter(tags=["openrlhf"])


@router.post("/get_reward", response_model=OpenRLHFRewardResponse)
async def get_reward(
    req: OpenRLHFRewardRequest, state: AppState = Depends(get_ready_state)
) -> OpenRLHFRewardResponse:
    """OpenRLHF remote reward model (`--remote_rm_url` / `--reward.remote_url`)."""
    n = len(req.query)
    scoring.check_items(state, req.query, "query")
    for name in ("prompts", "labels"):
        given = getattr(req, name)
        if given is not None and len(given) != n:
            raise InvalidRequestError(f"{len(given)} {name} for {n} queries", field=name)
    if n == 0:  # one URL's share of a batch split over several (OpenRLHF >= 0.10)
        return OpenRLHFRewardResponse(rewards=[], scores=[], extra_logs={})
    samples = await _all_or_none([_sample(state, req, i) for i in range(n)])
    settings = state.settings
    mode = settings.openrlhf_reward
    center, scale = settings.openrlhf_score_center, settings.openrlhf_score_scale
    center = SCORE_CENTER[mode] if center is None else center
    scale = SCORE_SCALE[mode] if scale is None else scale
    rewards = [s.pop("reward") for s in samples]
    return OpenRLHFRewardResponse(
        rewards=rewards,
        scores=[unit_score(r, center, scale) for r in rewards],
        extra_logs={key: [s[key] for s in samples] for key in samples[0]},
    )


# ------------------------------------------------------------------ one sample


async def _sample(state: AppState, req: OpenRLHFRewardRequest, i: int) -> dict[str, float]:
    label = req.labels[i] if req.labels is not None else None
    image, user = parse_label(label, f"labels.{i}")
    templated = req.prompts[i] if req.prompts is not None else None
    try:
        response = split_query(state, req.query[i], templated, i)
        if user is None:
            user = user_turn(state, templated, req.query[i], image is not None, i)
        return await _score(state, image, user, response, f"labels.{i}")
    except QueueFullError:
        raise
    except ServiceError as exc:
        if exc.field and exc.field.startswith("image"):
            exc.field = f"labels.{i}"
        exc.message = f"sample {i}: {exc.message}"
        raise


def parse_label(label: Any, field: str) -> tuple[ImageRef | None, str | None]:
    """(image, user prompt) from a label: an image id, a URL, or `{"image", "prompt"}` (as an
    object or as its JSON text)."""
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            label = json.loads(label)
        except json.JSONDecodeError as e:
            raise InvalidRequestError(f"label is not valid JSON: {e}", field=field) from None
    prompt = None
    if isinstance(label, dict):
        prompt = label.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidRequestError("label 'prompt' must be a string", field=f"{field}.prompt")
        label = label.get("image")
    if label is None or label == "":
        return None, prompt
    if not isinstance(label, str):
        raise InvalidRequestError("label 'image' must be a string", field=field)
    text = label.strip()
    if _IMAGE_ID.match(text):
        return ImageRef(id=text), prompt
    if text.split(":", 1)[0].lower() in ("data", "http", "https"):
        return ImageRef(url=text), prompt
    raise InvalidRequestError(
        "label must be an image id (sha256 from POST /v1/images), a data: or http(s) URL, or "
        'a JSON object {"image": ..., "prompt": ...}',
        field=field,
    )


def split_query(state: AppState, query: str, prompt: str | None, i: int) -> str:
    """The response: `query` minus `prompt`, on token ids; special tokens (EOS) dropped."""
    engine = state.models.engine  # type: ignore[union-attr]
    if prompt is None:  # an older OpenRLHF: query only; the template's tail marks the turn
        tail = template_parts(engine, False)[1]
        at = query.find(tail) if tail else -1
        if at < 0:
            raise InvalidRequestError(
                "no 'prompts' given and the chat template's assistant tag is not in the query",
                field=f"query.{i}",
            )
        prompt = query[: at + len(tail)]
    response = response_after(engine, query, prompt)
    if response is None:
        raise InvalidRequestError(
            "the query does not start with the prompt's tokens", field=f"prompts.{i}"
        )
    check_response(state, response, f"query.{i}")
    return response


def check_response(state: AppState, response: str, field: str) -> None:
    """Refuse a response too long to score, before its sentences' prefixes are built: their
    total size grows with the square of its length (and each sentence is one scoring call)."""
    settings = state.settings
    tokenizer = state.models.engine.tokenizer  # type: ignore[union-attr]
    tokens = len(tokenizer(response, add_special_tokens=False)["input_ids"])
    if tokens > settings.max_text_tokens:
        raise InvalidRequestError(
            f"the response is {tokens} tokens; at most {settings.max_text_tokens}", field=field
        )
    count = len(split_sentences(response))
    if count > settings.max_items and settings.openrlhf_reward != "implicit":
        raise InvalidRequestError(
            f"the response has {count} sentences; at most {settings.max_items}", field=field
        )


def user_turn(state: AppState, templated: str | None, query: str, with_image: bool, i: int) -> str:
    """The user's text, read out of the templated prompt (or, without one, the query)."""
    engine = state.models.engine  # type: ignore[union-attr]
    parts = split_templated(engine, templated if templated is not None else query, with_image)
    if parts is None or (templated is not None and parts[1].strip()):
        raise InvalidRequestError(
            "cannot read the user turn out of the prompt with this model's chat template; put "
            'it in the label as {"image": ..., "prompt": "..."}',
            field=f"prompts.{i}",
        )
    return parts[0]


async def _score(
    state: AppState, image: ImageRef | None, user: str, response: str, field: str
) -> dict[str, float]:
    """One sample's reward and logs, by the native handlers, in the operator's mode."""
    settings = state.settings
    mode, how = settings.openrlhf_reward, settings.openrlhf_aggregation
    sentences = split_sentences(response)
    if mode == "implicit":
        image_id, _ = await scoring.resolve_image(state, image)
        req = ImplicitRewardRequest(
            policy=settings.openrlhf_policy, reference=settings.openrlhf_reference,
            beta=settings.openrlhf_beta, image=ImageRef(id=image_id) if image_id else None,
            prompt=user, responses=[response],
        )  # fmt: skip
        res = await _patiently(state, lambda: scoring.implicit(state, req))
        r = res.body.results[0]
        return {
            "reward": r.reward_sum if how == "sum" else r.reward_avg,
            "policy_logprob": r.policy_logprob,
            "reference_logprob": r.reference_logprob,
            "num_tokens": float(r.num_tokens),
            "num_sentences": float(len(sentences)),
        }
    if image is None:
        raise InvalidRequestError(f"the {mode} reward needs an image in the label", field=field)
    image_id, _ = await scoring.resolve_image(state, image, for_policy=mode == "calibrated")
    ref = ImageRef(id=image_id)
    if not sentences:  # the mode's own keys: every sample's extra_logs share them
        logs = {"reward": 0.0, "r_i": 0.0, "num_sentences": 0.0}
        return logs if mode == "clip" else {**logs, "r_t": 0.0}
    if mode == "clip":
        creq = ClipRequest(image=ref, texts=[s.strip() for s in sentences])
        clip = await _patiently(state, lambda: scoring.clip(state, creq))
        r_i = [c.relevance for c in clip.body.results]
        return {"reward": aggregate(r_i, how), "r_i": aggregate(r_i, how),
                "num_sentences": float(len(sentences))}  # fmt: skip
    calls = [
        RewardRequest(
            image=ref, prompt=user, prefix=p, candidates=[s], model=settings.openrlhf_policy
        )
        for p, s in zip(prefixes(sentences), sentences, strict=True)
    ]
    results = await _all_or_none(
        [_patiently(state, partial(scoring.reward, state, c)) for c in calls]
    )
    scores = [res.body.results[0] for res in results]
    return {
        "reward": aggregate([s.reward for s in scores], how),
        "r_i": aggregate([s.r_i for s in scores], how),
        "r_t": aggregate([s.r_t for s in scores], how),
        "num_sentences": float(len(sentences)),
    }


async def _all_or_none(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """`asyncio.gather`, but the first failure cancels the other calls: the request has failed,
    their scoring would only take the GPU from the next one."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def _patiently(state: AppState, call: Callable[[], Awaitable[T]]) -> T:
    """Run `call`, retrying while the queue is full, up to the operator's bound; then 503."""
    deadline = time.monotonic() + state.settings.openrlhf_queue_wait_s
    delay = 0.05
    while True:
        try:
            return await call()
        except QueueFullError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RewardBusyError(
                    f"the scoring queue stayed full for {state.settings.openrlhf_queue_wait_s:g}"
                    f" s ({exc.message})",
                    retry_after=1.0,
                ) from None
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)
