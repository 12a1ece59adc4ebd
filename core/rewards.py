"""Pure reward math shared by the service and the client (plain floats, no torch).

CSR (calibrated self-rewarding): R(s) = λ·R_I(s) + (1−λ)·R_T(s), with R_T the policy's own
sentence score and R_I = max(scale·cos, 0) the CLIP relevance. SBSPO: the DPO implicit reward
β·(log π_policy − log π_ref), as a sum over tokens and as a token average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from core.schemas import LanguageScore


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


def clip_relevance(cosine: float, scale: float = 100.0) -> float:
    """R_I = max(scale·cos, 0) (CSR eq. 3)."""
    return max(scale * cosine, 0.0)


def calibrated_reward(r_i: float, r_t: float, lam: float = 0.9) -> float:
    """R = λ·R_I + (1−λ)·R_T (CSR eq. 4)."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    return lam * r_i + (1.0 - lam) * r_t


def implicit_reward(
    policy_logprobs: Sequence[float], reference_logprobs: Sequence[float], beta: float = 0.1
) -> tuple[float, float]:
    """(reward_sum, reward_avg) = β·Σ(log π − log π_ref) and its token average (SBSPO eq. 2-3)."""
    if len(policy_logprobs) != len(reference_logprobs):
        raise ValueError("policy and reference log-probs must cover the same tokens")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    total = beta * (math.fsum(policy_logprobs) - math.fsum(reference_logprobs))
    n = len(policy_logprobs)
    return total, (total / n if n else 0.0)
