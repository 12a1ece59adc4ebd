"""Pure reward math shared by the service and the client (plain floats, no torch).

CSR (calibrated self-rewarding): R(s) = λ·R_I(s) + (1−λ)·R_T(s), with R_T the policy's own
sentence score and R_I = max(scale·cos, 0) the CLIP relevance. SBSPO: the DPO implicit reward
β·(log π_policy − log π_ref), as a sum over tokens and as a token average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from selfreward_vlm.core import defaults
from selfreward_vlm.core.schemas import LanguageScore


def language_score(token_logprobs: Sequence[float], kind: LanguageScore = "prob") -> float:
    """R_T of a sentence from its raw token log-probs.

    `prob` is CSR eq. 2, the product of token probabilities exp(Σ log p); `mean_logprob` and
    `sum_logprob` are the length-normalised and raw log-likelihoods. An empty sentence (the
    end-of-response candidate) has log-prob 0: probability 1.
    """
    total = math.fsum(token_logprobs)
    if kind == "prob":
        return math.exp(total)
    if kind == "sum_logprob":
        return total
    if kind == "mean_logprob":
        return total / len(token_logprobs) if token_logprobs else 0.0
    raise ValueError(f"unknown language_score {kind!r}")


def clip_relevance(cosine: float, scale: float = defaults.CLIP_SCALE) -> float:
    """R_I = max(scale·cos, 0) (CSR eq. 3)."""
    return max(scale * cosine, 0.0)


def calibrated_reward(r_i: float, r_t: float, lam: float = defaults.LAMBDA) -> float:
    """R = λ·R_I + (1−λ)·R_T (CSR eq. 4)."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    return lam * r_i + (1.0 - lam) * r_t


def implicit_reward(
    policy_logprobs: Sequence[float],
    reference_logprobs: Sequence[float],
    beta: float = defaults.IMPLICIT_BETA,
) -> tuple[float, float]:
    """(reward_sum, reward_avg) = β·Σ(log π − log π_ref) and its token average (SBSPO eq. 2-3)."""
    if len(policy_logprobs) != len(reference_logprobs):
        raise ValueError("policy and reference log-probs must cover the same tokens")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    total = beta * (math.fsum(policy_logprobs) - math.fsum(reference_logprobs))
    n = len(policy_logprobs)
    return total, (total / n if n else 0.0)


PathScore = Literal["sum", "mean"]
StopRelevance = Literal["zero", "path"]


def path_reward(rewards: Sequence[float], mode: PathScore = "sum") -> float:
    """A response's reward from its sentences' rewards: the sum (CSR paper, R(y) = Σ R(s_i))
    or the mean (what the official code's averaging amounts to). An empty path scores 0."""
    if mode == "sum":
        return math.fsum(rewards)
    if mode == "mean":
        return math.fsum(rewards) / len(rewards) if rewards else 0.0
    raise ValueError(f"unknown path_score {mode!r}")


def stop_relevance(policy: StopRelevance, path_relevances: Sequence[float]) -> float:
    """R_I of the end-of-response candidate, which has no text for CLIP to score.

    `zero`: 0, so stopping must beat adding a sentence on R_T alone (lets CLIP veto a weak
    sentence); `path`: the mean R_I of the path's sentences so far (0 for an empty path).
    """
    if policy == "zero":
        return 0.0
    if policy == "path":
        return math.fsum(path_relevances) / len(path_relevances) if path_relevances else 0.0
    raise ValueError(f"unknown stop_r_i policy {policy!r}")
