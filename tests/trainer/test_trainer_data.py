"""The trainer's view of the pairs: the same pairs give the same training data, whatever order
the store hands them over in (a concurrent search publishes prompts as they finish)."""

from __future__ import annotations

import random

from selfreward_vlm.core.schemas import PreferencePair, ResponseScore
from selfreward_vlm.trainer.data import filter_pairs


def _pair(i: int, chosen: str = "A cat.") -> PreferencePair:
    score = ResponseScore(reward=float(i))
    return PreferencePair(id=f"p{i:03d}", prompt_id=f"q{i}", prompt="Describe.", chosen=chosen,
                          rejected="A dog.", method="csr", chosen_score=score,
                          rejected_score=score)  # fmt: skip


def test_filtered_pairs_come_in_id_order_whatever_the_arrival_order() -> None:
    pairs = [_pair(i) for i in range(40)] + [_pair(99, chosen=" ")]
    orders = []
    for seed in range(3):
        shuffled = pairs[:]
        random.Random(seed).shuffle(shuffled)
        kept, report = filter_pairs(shuffled, specials=set(), eos_text=None)
        orders.append([p.id for p in kept])
        assert report.total == 41 and report.dropped_empty == 1
    assert orders[0] == orders[1] == orders[2] == sorted(f"p{i:03d}" for i in range(40))
