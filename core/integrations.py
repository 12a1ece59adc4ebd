"""Pure helpers the foreign-protocol adapters share (OpenRLHF route, TRL and verl shims).

A whole response is rewarded the way the CSR search rewards it: split into sentences, each
sentence scored after the ones before it (`prefix`), the sentences' rewards then summed or
averaged. No torch, no fastapi: the client shims and the service both import this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Aggregation = Literal["mean", "sum"]

# The logistic map's defaults per reward kind: centred where a reward is middling, so that
# `score` spreads over (0, 1) instead of saturating. CLIP relevance (100·cos) of a matching
# caption sits around 20-35 for ViT-L/14; implicit rewards (β·log-ratio) sit around 0.
SCORE_CENTER = {"calibrated": 20.0, "clip": 20.0, "implicit": 0.0}
SCORE_SCALE = {"calibrated": 5.0, "clip": 5.0, "implicit": 1.0}
# Most sentences one response is scored by (each is a call, after a prefix of all those before
# it: the prefixes' total size grows with the square of their count). The service's own cap on
# /get_reward is its `max_items`, 64 by default.
MAX_SENTENCES = 64


def split_sentences(text: str, stop: str = ".") -> list[str]:
    """Split a response into sentences as the CSR search generates them: each piece ends with
    `stop` (the last may not) and keeps its leading whitespace, so the pieces concatenate back to
    `text` (a whitespace-only tail or piece is dropped: it is no sentence)."""
    pieces: list[str] = []
    start = 0
    while True:
        end = text.find(stop, start)
        if end < 0:
            break
        pieces.append(text[start : end + len(stop)])
        start = end + len(stop)
    pieces.append(text[start:])
    return [p for p in pieces if p.strip()]


def prefixes(sentences: Sequence[str]) -> list[str]:
    """The prefix each sentence is scored after: every sentence before it, verbatim."""
    return ["".join(sentences[:k]) for k in range(len(sentences))]


def aggregate(values: Sequence[float], how: Aggregation = "mean") -> float:
    """Sentences' rewards -> one response reward (0.0 for a response with no sentence)."""
    if not values:
        return 0.0
    total = math.fsum(values)
    return total if how == "sum" else total / len(values)


def unit_score(reward: float, center: float, scale: float) -> float:
    """A strictly increasing map of a reward into (0, 1): `1 / (1 + exp(-(r - center) / scale))`.
    OpenRLHF filters samples on this `scores` field (`--dynamic_filtering_reward_range`)."""
    z = (reward - center) / scale
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
