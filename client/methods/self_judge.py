"""Self-rewarding baseline (Yuan et al., as the CSR paper runs it: appendix A.1, Table 3).

Per prompt: sample 2 responses from the policy (seeds `seed`, `seed + 1`); ask the model itself,
with the image and CSR's Table 3 judge prompt, which is closer to the image; chosen = its pick.

The paper lets the judge generate and parses "response 1"/"response 2" from its text
(`judge="generate"` here: greedy, then a regex; an answer naming neither gives no pair). A small
model rarely answers in format, so the default `judge="logprobs"` reads the decision from the
judge's log-probs of the two answers (`choices`) after the prompt via `/v1/logprobs`: never
unparseable, and the margin is recorded. `both_orders` also asks with the responses swapped and
adds the log-probs, cancelling the judge's position bias (off by default: the paper asks once).
If the two samples are identical or empty, up to `attempts` fresh seed pairs are tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from selfreward_vlm.client.methods.base import (
    AsyncScorer,
    MethodResult,
    PromptItem,
    RunContext,
    check_config,
    config_params,
    make_pair,
)
from selfreward_vlm.client.methods.sbspo import sample_responses
from selfreward_vlm.core.schemas import ResponseScore
from selfreward_vlm.core.selection import judge_pick, parse_judge_output

METHOD = "self-judge"

JUDGE_PROMPT = (
    "Now you act as a judge, helping me determine which of the two texts I provide is closer "
    "to the given image and has fewer errors.\n"
    "*****\n"
    "Response 1:\n{response_1}\n\n"
    "Response 2:\n{response_2}\n"
    "*****\n"
    "Please strictly follow the following format requirements when outputting, and don't have "
    "any other unnecessary words.\n\n"
    "Output Format:\nresponse 1 or response 2."
)


@dataclass(frozen=True)
class SelfJudgeConfig:
    """Self-judge settings (sampling as SBSPO's; the judge reads CSR Table 3)."""

    seed: int = 0
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    judge: Literal["logprobs", "generate"] = "logprobs"
    choices: tuple[str, str] = ("Response 1", "Response 2")
    both_orders: bool = False
    judge_max_new_tokens: int = 16
    attempts: int = 3
    preset: str | None = None

    def __post_init__(self) -> None:
        check_config(self, {"judge": Literal["logprobs", "generate"]})
        if len(self.choices) != 2 or self.attempts < 1:
            raise ValueError("need exactly 2 choices and attempts >= 1")


def judge_prompt(response_1: str, response_2: str) -> str:
    """CSR Table 3 with the two responses filled in."""
    return JUDGE_PROMPT.format(response_1=response_1, response_2=response_2)


async def _two_samples(
    client: AsyncScorer, item: PromptItem, ctx: RunContext, cfg: SelfJudgeConfig,
    stats: dict[str, float],
) -> list[str] | None:  # fmt: skip
    for attempt in range(cfg.attempts):
        texts = await sample_responses(
            client, item, ctx, 2, cfg.seed + 2 * attempt, cfg.temperature, cfg.top_p,
            cfg.max_new_tokens, stats,
        )  # fmt: skip
        if all(texts) and texts[0] != texts[1]:
            return texts
    return None


async def _label_logprobs(
    client: AsyncScorer, item: PromptItem, ctx: RunContext, cfg: SelfJudgeConfig, a: str, b: str
) -> tuple[float, float]:
    """The judge's log-probs of answering choices[0] / choices[1] for responses (a, b)."""
    out = await client.logprobs(
        judge_prompt(a, b), list(cfg.choices), image=item.image_id, model=ctx.model
    )
    return out.results[0].sum_logprob, out.results[1].sum_logprob


async def _judge(
    client: AsyncScorer, item: PromptItem, ctx: RunContext, cfg: SelfJudgeConfig, texts: list[str]
) -> tuple[int, tuple[float, float]] | None:
    """(index of the pick, (score of response 1, score of response 2)), None if unparseable."""
    if cfg.judge == "generate":
        resp = await client.generate(
            judge_prompt(*texts), image=item.image_id, model=ctx.model, strategy="greedy",
            n=1, stop="eos", max_new_tokens=cfg.judge_max_new_tokens,
        )  # fmt: skip
        pick = parse_judge_output(resp.candidates[0].text)
        return None if pick is None else (pick, (float(pick == 0), float(pick == 1)))
    s1, s2 = await _label_logprobs(client, item, ctx, cfg, texts[0], texts[1])
    if cfg.both_orders:
        t2, t1 = await _label_logprobs(client, item, ctx, cfg, texts[1], texts[0])
        s1, s2 = s1 + t1, s2 + t2
    return judge_pick(s1, s2), (s1, s2)


async def self_judge(
    client: AsyncScorer, item: PromptItem, ctx: RunContext | None = None,
    config: SelfJudgeConfig | None = None,
) -> MethodResult:  # fmt: skip
    """The self-rewarding baseline for one prompt: at most one pair."""
    ctx, cfg = ctx or RunContext(), config or SelfJudgeConfig()
    stats: dict[str, float] = {}
    texts = await _two_samples(client, item, ctx, cfg, stats)
    if texts is None:
        why = f"no 2 distinct non-empty samples in {cfg.attempts} tries"
        return MethodResult(skipped=why, stats=stats)
    verdict = await _judge(client, item, ctx, cfg, texts)
    if verdict is None:
        return MethodResult(skipped="judge answer names neither response", stats=stats)
    pick, scores = verdict
    other = 1 - pick

    def score(i: int) -> ResponseScore:
        return ResponseScore(reward=scores[i], extra={"position": float(i + 1)})

    margin = scores[pick] - scores[other]
    pair = make_pair(
        METHOD, item, ctx, (texts[pick], score(pick)), (texts[other], score(other)),
        config_params(cfg),
    )  # fmt: skip
    return MethodResult(pairs=[pair], stats=stats | {"margin": margin})
