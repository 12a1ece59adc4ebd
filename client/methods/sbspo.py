"""SBSPO: self-bootstrapped pairs from the DPO implicit reward and the reward union (SBSPO §2.4).

Per prompt: sample m = 10 responses from the policy with seeds 0..9 (one `/v1/generate` call,
strategy `sample`, n = m, seed = 0: candidate i samples with seed i; temperature 0.7, top-p 1.0,
until EOS); score each with `/v1/implicit-reward`, policy adapter vs reference adapter, β = 0.1,
as a sum (eq. 2) and as a token average (eq. 3); rank by each, descending; chosen set A = top
⌈λm⌉ of either ranking, rejected set R = bottom ⌈λm⌉ of either (eq. 5), λ = 0.3 (the union
fraction); every chosen × rejected combination of distinct texts is a pair.

Decisions:
- Identical sample texts are merged before ranking (`dedupe`, default on; the first seed keeps
  it), and m becomes the number of distinct texts, so k = ⌈λ·m_distinct⌉. A small or sharpened
  model often repeats itself at T = 0.7; ranking copies would fill the top-k with one text, and
  a copy could land in both sets. Empty responses are dropped too.
- A response in both A and R (top of one ranking, bottom of the other) stays in both under eq. 5
  (`overlap="keep"`, the default and the `paper` preset): it is paired with every other
  response of the other set, never with itself. `overlap="drop"` (ours) removes it from both
  and clamps k = ⌈λm⌉ to ⌊m/2⌋ (`core.selection.union_size`); it can remove the best response
  of each ranking. Each pair's `params` records m, k, the unclamped k, the responses in both
  sets (`overlap_count`) and those dropped.
- `selection="sum" | "avg"` ranks by one reward alone: SBSPO Table 2's two other strategies,
  so its length ablation can be rerun.
- Policy = reference is refused (`SamePolicyError`): every implicit reward is then exactly 0,
  and the union would pick pairs by sample index. SBSPO starts from an already aligned policy
  (the paper's M1′, e.g. a CSR or DPO adapter) scored against its reference.
- Each pair's `reward` is the sum reward; `extra` holds the average reward, both ranks (1 =
  best), the log-probs and the seed. A chosen response beats every rejected one under at least
  one of the two rewards (not necessarily both: that is the point of the union).
"""

from __future__ import annotations

from dataclasses import dataclass

from selfreward_vlm.client.methods.base import (
    AsyncScorer,
    MethodResult,
    PromptItem,
    RunContext,
    check_config,
    config_params,
    make_pair,
    tally,
)
from selfreward_vlm.core import defaults
from selfreward_vlm.core.schemas import ImplicitReward, ResponseScore
from selfreward_vlm.core.selection import (
    OverlapRule,
    SelectionRule,
    first_occurrences,
    rank_desc,
    reward_union,
    union_pairs,
    union_size,
)

METHOD = "sbspo"


class SamePolicyError(ValueError):
    """SBSPO was asked to score a policy against itself (every implicit reward would be 0)."""


def check_policy(policy: str, reference: str) -> None:
    """Refuse policy == reference: β·log(π/π_ref) is then 0 for every response, and the reward
    union would pick chosen and rejected by sample index."""
    if policy == reference:
        raise SamePolicyError(
            f"sbspo needs a policy that differs from its reference (both are {policy!r}): "
            "every implicit reward would be 0. Start from an aligned adapter (the SBSPO "
            "paper's M1', e.g. a CSR or DPO adapter: --model NAME) scored against the model "
            "it was trained from (--reference base)"
        )


@dataclass(frozen=True)
class SBSPOConfig:
    """SBSPO settings; defaults are the paper's (m = 10, λ = 0.3, β = 0.1, eq. 5 as written)."""

    num_samples: int = 10  # m
    seed: int = 0  # sample i uses seed + i
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    beta: float = defaults.IMPLICIT_BETA
    union_fraction: float = 0.3  # the paper's λ: top/bottom ⌈λm⌉ of each ranking
    selection: SelectionRule = "union"  # eq. 5; "sum" / "avg": one ranking (Table 2)
    overlap: OverlapRule = "keep"  # eq. 5 keeps a response in both sets; "drop" is ours
    dedupe: bool = True
    preset: str | None = None

    def __post_init__(self) -> None:
        check_config(self, {"selection": SelectionRule, "overlap": OverlapRule})
        union_size(self.num_samples, self.union_fraction)  # raises unless 0 <= λ < 0.5
        if self.num_samples < 2:
            raise ValueError("num_samples must be >= 2")


async def sample_responses(
    client: AsyncScorer, item: PromptItem, ctx: RunContext, n: int, seed: int,
    temperature: float, top_p: float, max_new_tokens: int, stats: dict[str, float],
) -> list[str]:  # fmt: skip
    """n whole responses from the policy, sample i drawn with seed + i; stripped."""
    resp = await client.generate(
        item.prompt, image=item.image_id, model=ctx.model, strategy="sample", n=n, seed=seed,
        temperature=temperature, top_p=top_p, stop="eos", max_new_tokens=max_new_tokens,
    )  # fmt: skip
    tally(stats, resp)
    return [c.text.strip() for c in resp.candidates]


def _score(r: ImplicitReward, seed: int, rank_sum: int, rank_avg: int) -> ResponseScore:
    return ResponseScore(
        reward=r.reward_sum,
        extra={
            "reward_sum": r.reward_sum, "reward_avg": r.reward_avg,
            "policy_logprob": r.policy_logprob, "reference_logprob": r.reference_logprob,
            "num_tokens": float(r.num_tokens), "rank_sum": float(rank_sum),
            "rank_avg": float(rank_avg), "seed": float(seed),
        },
    )  # fmt: skip


async def sbspo(
    client: AsyncScorer, item: PromptItem, ctx: RunContext | None = None,
    config: SBSPOConfig | None = None,
) -> MethodResult:  # fmt: skip
    """SBSPO for one prompt: every chosen × rejected pair of the reward union."""
    ctx, cfg = ctx or RunContext(), config or SBSPOConfig()
    check_policy(ctx.model, ctx.reference)
    stats: dict[str, float] = {}
    texts = await sample_responses(
        client, item, ctx, cfg.num_samples, cfg.seed, cfg.temperature, cfg.top_p,
        cfg.max_new_tokens, stats,
    )  # fmt: skip
    keep = first_occurrences(texts) if cfg.dedupe else list(range(len(texts)))
    keep = [i for i in keep if texts[i]]
    stats |= {"samples": float(len(texts)), "distinct": float(len(keep))}
    if len(keep) < 2:
        return MethodResult(skipped=f"fewer than 2 distinct samples ({len(keep)})", stats=stats)
    kept = [texts[i] for i in keep]
    scored = await client.implicit_reward(
        item.prompt, kept, policy=ctx.model, reference=ctx.reference, beta=cfg.beta,
        image=item.image_id,
    )  # fmt: skip
    sums = [r.reward_sum for r in scored.results]
    avgs = [r.reward_avg for r in scored.results]
    sel = reward_union(sums, avgs, cfg.union_fraction, cfg.selection, cfg.overlap)
    rank_s = {i: pos + 1 for pos, i in enumerate(rank_desc(sums))}
    rank_a = {i: pos + 1 for pos, i in enumerate(rank_desc(avgs))}
    scores = [
        _score(r, cfg.seed + keep[i], rank_s[i], rank_a[i]) for i, r in enumerate(scored.results)
    ]
    params = config_params(
        cfg, m=sel.m, k=sel.k, k_requested=sel.k_requested, k_clamped=sel.clamped,
        overlap_count=len(sel.overlap), dropped=len(sel.dropped), samples=len(texts),
    )  # fmt: skip
    pairs = [
        make_pair(
            METHOD, item, ctx, (kept[c], scores[c]), (kept[r], scores[r]), params, ctx.reference
        )
        for c, r in union_pairs(sel.chosen, sel.rejected, kept)
    ]
    stats |= {"chosen": float(len(sel.chosen)), "rejected": float(len(sel.rejected))}
    stats |= {"overlap": float(len(sel.overlap)), "dropped": float(len(sel.dropped))}
    if not pairs:
        return MethodResult(skipped="the selection left no chosen × rejected pair", stats=stats)
    return MethodResult(pairs=pairs, stats=stats)
