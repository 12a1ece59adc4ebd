"""OpenRLHF's remote reward model protocol: `POST /get_reward`, a translator onto the serving
layer (`serving.reward.response_reward`: the reward of one response in the operator's mode).

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

import json
import re
from typing import Any

from fastapi import APIRouter, Depends

from selfreward_vlm.core.integrations import SCORE_CENTER, SCORE_SCALE, split_sentences, unit_score
from selfreward_vlm.core.schemas import ImageRef
from selfreward_vlm.service.errors import InvalidRequestError, QueueFullError, ServiceError
from selfreward_vlm.service.protocols.openrlhf import (
    OpenRLHFRewardRequest,
    OpenRLHFRewardResponse,
)
from selfreward_vlm.service.serving.chat_text import response_after, split_templated, template_parts
from selfreward_vlm.service.serving.common import check_items
from selfreward_vlm.service.serving.reward import all_or_none, response_reward
from selfreward_vlm.service.state import AppState, get_ready_state

_IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")


router = APIRouter(tags=["openrlhf"])


@router.post("/get_reward", response_model=OpenRLHFRewardResponse)
async def get_reward(
    req: OpenRLHFRewardRequest, state: AppState = Depends(get_ready_state)
) -> OpenRLHFRewardResponse:
    """OpenRLHF remote reward model (`--remote_rm_url` / `--reward.remote_url`)."""
    n = len(req.query)
    check_items(state, req.query, "query")
    for name in ("prompts", "labels"):
        given = getattr(req, name)
        if given is not None and len(given) != n:
            raise InvalidRequestError(f"{len(given)} {name} for {n} queries", field=name)
    if n == 0:  # one URL's share of a batch split over several (OpenRLHF >= 0.10)
        return OpenRLHFRewardResponse(rewards=[], scores=[], extra_logs={})
    samples = await all_or_none([_sample(state, req, i) for i in range(n)])
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
        return await response_reward(state, image, user, response, f"labels.{i}")
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
