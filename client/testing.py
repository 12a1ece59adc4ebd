"""A table-driven fake of the scoring service for testing pair-building methods offline.

`FakeScorer` answers `generate` / `clip` / `logprobs` / `implicit_reward` (the `AsyncScorer`
protocol the methods use) from hand-written tables and records every call, so a method's
selection can be checked against hand-computed numbers without a model:

- `tree[prefix]`: the diverse-beam candidates after `prefix`, as (text, token log-probs,
  finished); `cosine[text]`: CLIP cosine of a (stripped) sentence;
- `samples`: sampled responses, candidate i of a call with seed s is samples[(s + i) % len];
- `judge_text`: the greedy judge's answer; `judge_logprobs[(first shown response, label)]`;
- `implicit[text]`: (reward_sum, reward_avg).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from selfreward_vlm.core import defaults
from selfreward_vlm.core.schemas import (
    Candidate,
    ClipResponse,
    ClipScore,
    GenerateResponse,
    ImplicitReward,
    ImplicitRewardResponse,
    LogprobsResponse,
    TokenLogprobs,
    Usage,
)

_NO_USAGE = Usage.model_validate({})


def cand(text: str, logprobs: list[float], finished: bool = False) -> Candidate:
    """A candidate whose token ids are 0..len-1 (one id per log-prob)."""
    reason: Literal["eos", "sentence"] = "eos" if finished else "sentence"
    ids = list(range(len(logprobs)))
    return Candidate(
        text=text, token_ids=ids, token_logprobs=logprobs, finished=finished, stop_reason=reason
    )


@dataclass
class FakeScorer:
    """Answers generate/clip/logprobs/implicit_reward from hand-written tables; logs calls."""

    tree: dict[str, list[tuple[str, list[float], bool]]] = field(default_factory=dict)
    cosine: dict[str, float] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    judge_text: str = ""
    judge_logprobs: dict[tuple[str, str], float] = field(default_factory=dict)
    implicit: dict[str, tuple[float, float]] = field(default_factory=dict)
    prefixes: list[str] = field(default_factory=list)
    clip_calls: list[list[str]] = field(default_factory=list)
    generate_calls: list[dict[str, Any]] = field(default_factory=list)

    async def generate(
        self, prompt: str, *, image: Any = None, prefix: str = "", model: str = "base", **o: Any
    ) -> GenerateResponse:
        """greedy: the judge's answer; sample: `samples` by seed; else `tree[prefix]`."""
        self.generate_calls.append({"prompt": prompt, "prefix": prefix, "model": model, **o})
        if o["strategy"] == "greedy":
            cands = [cand(self.judge_text, [-0.1], True)]
        elif o["strategy"] == "sample":
            seed = o.get("seed") or 0
            cands = [cand(" " + self.samples[(seed + i) % len(self.samples)], [-1.0], True)
                     for i in range(o["n"])]  # fmt: skip
        else:
            self.prefixes.append(prefix)
            cands = [cand(t, lp, f) for t, lp, f in self.tree[prefix]]
        return GenerateResponse(model=model, candidates=cands, usage=_NO_USAGE)

    async def clip(
        self, image: Any, texts: Sequence[str], *, scale: float = defaults.CLIP_SCALE
    ) -> ClipResponse:
        self.clip_calls.append(list(texts))
        if not all(t == t.strip() and t for t in texts):
            raise ValueError(f"CLIP must get stripped, non-empty texts: {texts!r}")
        res = [
            ClipScore(text=t, cosine=self.cosine[t], relevance=max(scale * self.cosine[t], 0.0),
                      truncated=False)
            for t in texts
        ]  # fmt: skip
        return ClipResponse(results=res, usage=_NO_USAGE)

    async def logprobs(
        self, prompt: str, continuations: Sequence[str], *, image: Any = None, prefix: str = "",
        model: str = "base",
    ) -> LogprobsResponse:  # fmt: skip
        first = prompt.index("Response 1:\n") + len("Response 1:\n")
        shown_first = prompt[first:].split("\n", 1)[0]
        res = []
        for c in continuations:
            lp = self.judge_logprobs[(shown_first, c)]
            res.append(TokenLogprobs(text=c, token_ids=[1], tokens=[c], token_logprobs=[lp],
                                     sum_logprob=lp, mean_logprob=lp, num_tokens=1))  # fmt: skip
        return LogprobsResponse(model=model, results=res, usage=_NO_USAGE)

    async def implicit_reward(
        self, prompt: str, responses: Sequence[str], *, policy: str, reference: str = "base",
        beta: float = defaults.IMPLICIT_BETA, image: Any = None,
    ) -> ImplicitRewardResponse:  # fmt: skip
        res = [
            ImplicitReward(text=r, reward_sum=self.implicit[r][0], reward_avg=self.implicit[r][1],
                           policy_logprob=0.0, reference_logprob=0.0, num_tokens=3)
            for r in responses
        ]  # fmt: skip
        return ImplicitRewardResponse(
            policy=policy, reference=reference, beta=beta, results=res, usage=_NO_USAGE
        )
