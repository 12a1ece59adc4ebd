"""What every pair-building method shares: its input, its output, pair ids, and the protocol of
the client it needs (so tests can hand it a fake scorer with hand-chosen numbers)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, get_args

from selfreward_vlm.client._base import ImageLike
from selfreward_vlm.core import defaults
from selfreward_vlm.core.schemas import (
    ClipResponse,
    GenerateResponse,
    ImplicitRewardResponse,
    LogprobsResponse,
    PreferencePair,
    ResponseScore,
)


class AsyncScorer(Protocol):
    """The part of AsyncScoringClient the methods use."""

    async def generate(
        self, prompt: str, *, image: ImageLike = None, prefix: str = "", model: str = "base",
        **options: Any,
    ) -> GenerateResponse: ...  # fmt: skip

    async def clip(
        self, image: ImageLike, texts: Sequence[str], *, scale: float = defaults.CLIP_SCALE
    ) -> ClipResponse: ...

    async def logprobs(
        self, prompt: str, continuations: Sequence[str], *, image: ImageLike = None,
        prefix: str = "", model: str = "base",
    ) -> LogprobsResponse: ...  # fmt: skip

    async def implicit_reward(
        self, prompt: str, responses: Sequence[str], *, policy: str, reference: str = "base",
        beta: float = defaults.IMPLICIT_BETA, image: ImageLike = None,
    ) -> ImplicitRewardResponse: ...  # fmt: skip


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a run: its id, the user text and the uploaded image's id (None: text only)."""

    id: str
    prompt: str
    image_id: str | None = None


@dataclass(frozen=True)
class RunContext:
    """Who generates and scores: the policy adapter, the reference adapter, the iteration."""

    model: str = "base"
    reference: str = "base"
    iteration: int = 0
    max_text_tokens: int | None = None  # the service's token limit (GET /info), when known


@dataclass
class MethodResult:
    """A prompt's pairs, or why it has none (`skipped`), plus numbers about the search."""

    pairs: list[PreferencePair] = field(default_factory=list)
    skipped: str | None = None
    stats: dict[str, float] = field(default_factory=dict)


def tally(stats: dict[str, float], resp: GenerateResponse) -> None:
    """Add a generate call's work to `stats`: the service's usage counters, and `tree_tokens`,
    the distinct token prefixes among its candidates (forwarded ÷ tree tokens → 1.0 is ideal)."""
    stats["generate_calls"] = stats.get("generate_calls", 0.0) + 1
    for key in ("tokens_forwarded", "tokens_scored", "tokens_cached", "image_cache_hits"):
        stats[key] = stats.get(key, 0.0) + float(getattr(resp.usage, key))
    trie: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    for c in resp.candidates:
        node = 0
        for token in c.token_ids:
            node = trie.setdefault((node, token), len(trie) + 1)
    stats["tree_tokens"] = stats.get("tree_tokens", 0.0) + len(trie)


def pair_id(method: str, prompt_id: str, iteration: int, chosen: str, rejected: str) -> str:
    """Deterministic pair id: a rerun produces the same id, so store upserts dedupe it."""
    parts = [method, prompt_id, str(iteration), chosen, rejected]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def config_params(config: Any, **extra: Any) -> dict[str, Any]:
    """A frozen config dataclass as the JSON-able `params` of a pair."""
    params = dataclasses.asdict(config)
    params.update(extra)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def make_pair(
    method: str,
    item: PromptItem,
    ctx: RunContext,
    chosen: tuple[str, ResponseScore],
    rejected: tuple[str, ResponseScore],
    params: dict[str, Any],
    reference: str | None = None,
) -> PreferencePair:
    """A PreferencePair with provenance; `reference` only where the method used one."""
    return PreferencePair(
        id=pair_id(method, item.id, ctx.iteration, chosen[0], rejected[0]),
        prompt_id=item.id,
        prompt=item.prompt,
        chosen=chosen[0],
        rejected=rejected[0],
        images=[item.image_id] if item.image_id else [],
        method=method,
        params=params,
        model=ctx.model,
        reference=reference,
        iteration=ctx.iteration,
        chosen_score=chosen[1],
        rejected_score=rejected[1],
    )


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for no values (so a summary can tell 'none' from 0)."""
    return math.fsum(values) / len(values) if values else math.nan


async def clip_cosines(
    client: AsyncScorer, image: ImageLike, texts: Sequence[str], scale: float, batch: int
) -> dict[str, tuple[float, float]]:
    """{text: (cosine, relevance)} for distinct non-empty texts, `batch` texts per request (the
    service caps items per request)."""
    distinct = [t for t in dict.fromkeys(texts) if t]
    out: dict[str, tuple[float, float]] = {}
    for i in range(0, len(distinct), batch):
        chunk = distinct[i : i + batch]
        resp = await client.clip(image, chunk, scale=scale)
        for text, res in zip(chunk, resp.results, strict=True):
            out[text] = (res.cosine, res.relevance)
    return out


def check_config(config: Any, choices: dict[str, Any], unit: tuple[str, ...] = ()) -> None:
    """Validate a config early (a typo'd option must fail before a long run starts):
    `choices` maps field -> Literal type; `unit` fields must lie in [0, 1]; every int field
    named num_* / keep_* / max_* must be >= 0 (or None)."""
    for name, literal in choices.items():
        value = getattr(config, name)
        if value not in get_args(literal):
            raise ValueError(f"{name} must be one of {list(get_args(literal))}, got {value!r}")
    for name in unit:
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {getattr(config, name)}")
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name.startswith(("num_", "keep_", "max_")) and isinstance(value, int) and value < 0:
            raise ValueError(f"{f.name} must be >= 0, got {value}")
