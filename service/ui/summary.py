"""A dataset's summary for the pair viewer: one pass over its pairs, no model needed.

Reads pairs through the store's public iterator, so it works on any store back end. The
numbers are plain sums and counts over the stored fields:

- a response's reward is `chosen_score.reward` / `rejected_score.reward` as stored;
- its R_I is the mean of its sentences' `r_i` over sentences that have text (the stop step
  of a CSR path has none) — CSR's Figure 5 plots this per iteration;
- its length is its word count (whitespace split): SBSPO's Table 2 compares the mean length
  of chosen and rejected answers.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from selfreward_vlm.core.schemas import PreferencePair, ResponseScore
from selfreward_vlm.service.protocols.viewer import (
    DatasetSummary,
    GroupStats,
    Histogram,
    IterationDistributions,
)

QUANTITIES = ("reward", "r_i", "words")


@dataclass
class _Sides:
    """Values of one quantity for the chosen and the rejected responses of some pairs."""

    chosen: list[float] = field(default_factory=list)
    rejected: list[float] = field(default_factory=list)

    def add(self, chosen: float | None, rejected: float | None) -> None:
        if chosen is not None and math.isfinite(chosen):
            self.chosen.append(chosen)
        if rejected is not None and math.isfinite(rejected):
            self.rejected.append(rejected)


@dataclass
class _Group:
    """Every quantity of some pairs, their count and their reward margins."""

    pairs: int = 0
    sides: dict[str, _Sides] = field(default_factory=lambda: {q: _Sides() for q in QUANTITIES})
    margins: list[float] = field(default_factory=list)

    def add(self, pair: PreferencePair) -> None:
        self.pairs += 1
        for q, (c, r) in _values(pair).items():
            self.sides[q].add(c, r)
        margin = pair.chosen_score.reward - pair.rejected_score.reward
        if math.isfinite(margin):
            self.margins.append(margin)


def response_r_i(score: ResponseScore) -> float | None:
    """Mean R_I over the response's sentences that have text; None without any."""
    values = [s.r_i for s in score.sentences if s.text.strip() and s.r_i is not None]
    return math.fsum(values) / len(values) if values else None


def words(text: str) -> int:
    return len(text.split())


def _values(pair: PreferencePair) -> dict[str, tuple[float | None, float | None]]:
    """Each quantity of a pair as (chosen, rejected)."""
    c, r = pair.chosen_score, pair.rejected_score
    return {
        "reward": (c.reward, r.reward),
        "r_i": (response_r_i(c), response_r_i(r)),
        "words": (float(words(pair.chosen)), float(words(pair.rejected))),
    }


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def histogram(sides: _Sides, edges: list[float]) -> Histogram:
    """Counts of chosen and rejected values over `edges` (right edge of the last bin kept)."""
    bins = len(edges) - 1

    def counts(values: list[float]) -> list[int]:
        out = [0] * bins
        lo, width = edges[0], (edges[-1] - edges[0]) / bins
        for v in values:
            # Extreme values (1e308) overflow the span to inf or round the width to 0.
            x = (v - lo) / width if width > 0 else 0.0
            k = int(min(max(x, 0.0), bins - 1)) if not math.isnan(x) else 0
            out[k] += 1
        return out

    return Histogram(
        edges=edges,
        chosen=counts(sides.chosen),
        rejected=counts(sides.rejected),
        chosen_mean=_mean(sides.chosen),
        rejected_mean=_mean(sides.rejected),
    )


def shared_edges(groups: Iterable[_Sides], bins: int, integer: bool = False) -> list[float] | None:
    """`bins + 1` equal-width edges spanning every value of `groups`; None when there are none.

    `integer` widens the range to whole numbers (word counts) so no bin splits an integer."""
    values = [v for g in groups for v in (*g.chosen, *g.rejected)]
    if not values:
        return None
    lo, hi = min(values), max(values)
    if integer:  # whole-number bins: [lo, lo + w), ... covering floor(max)
        first, span = math.floor(lo), math.floor(hi) + 1 - math.floor(lo)
        step = math.ceil(span / bins)
        return [float(first + i * step) for i in range(math.ceil(span / step) + 1)]
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    return [lo + i * width for i in range(bins)] + [hi]


def summarize(
    name: str, pairs: Iterable[PreferencePair], method: str | None = None, bins: int = 20
) -> DatasetSummary:
    """The viewer's summary of a dataset; `method` limits the distributions to one method."""
    methods: Counter[str] = Counter()
    iterations: Counter[int] = Counter()
    grouped: dict[tuple[str, int], _Group] = defaultdict(_Group)
    per_iteration: dict[int, _Group] = defaultdict(_Group)
    for pair in pairs:
        methods[pair.method] += 1
        iterations[pair.iteration] += 1
        grouped[pair.method, pair.iteration].add(pair)
        if method is None or pair.method == method:
            per_iteration[pair.iteration].add(pair)
    return DatasetSummary(
        dataset=name,
        total=sum(methods.values()),
        pairs=sum(g.pairs for g in per_iteration.values()),
        method=method,
        methods=dict(sorted(methods.items())),
        iterations={str(k): v for k, v in sorted(iterations.items())},
        groups=[_group_stats(m, it, g) for (m, it), g in sorted(grouped.items())],
        distributions=_distributions(per_iteration, bins),
    )


class SummaryCache:
    """Recent summaries by (dataset, pair count, method, bins), so the viewer's reloads do not
    read the whole dataset each time. A dataset only grows (pairs are inserted, never changed
    or removed), so its count, read from the store's index, names its content."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, int, str | None, int], DatasetSummary] = OrderedDict()
        self._lock = threading.Lock()  # the route runs in FastAPI's thread pool

    def summary(self, store: Any, name: str, method: str | None, bins: int) -> DatasetSummary:
        """`name`'s summary from `store` (a `Store`): cached, or one pass over its pairs."""
        count = dict(store.datasets()).get(name)
        if count is None:  # unknown: the store's own 404 (or an empty summary)
            return summarize(name, store.iter_pairs(name), method=method, bins=bins)
        key = (name, count, method, bins)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        out = summarize(name, store.iter_pairs(name), method=method, bins=bins)
        with self._lock:
            self._items[key] = out
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return out


def _group_stats(method: str, iteration: int, group: _Group) -> GroupStats:
    sides = group.sides
    return GroupStats(
        method=method,
        iteration=iteration,
        pairs=group.pairs,
        chosen_reward=_mean(sides["reward"].chosen),
        rejected_reward=_mean(sides["reward"].rejected),
        margin=_mean(group.margins),
        chosen_words=_mean(sides["words"].chosen),
        rejected_words=_mean(sides["words"].rejected),
        chosen_r_i=_mean(sides["r_i"].chosen),
        rejected_r_i=_mean(sides["r_i"].rejected),
    )


def _distributions(per_iteration: dict[int, _Group], bins: int) -> list[IterationDistributions]:
    """Histograms per iteration, with each quantity's edges shared by every iteration."""
    edges = {
        q: shared_edges((g.sides[q] for g in per_iteration.values()), bins, integer=q == "words")
        for q in QUANTITIES
    }

    def hist(group: _Group, q: str) -> Histogram | None:
        e, sides = edges[q], group.sides[q]
        return histogram(sides, e) if e is not None and (sides.chosen or sides.rejected) else None

    return [
        IterationDistributions(
            iteration=it,
            pairs=g.pairs,
            reward=hist(g, "reward"),
            r_i=hist(g, "r_i"),
            words=hist(g, "words"),
        )
        for it, g in sorted(per_iteration.items())
    ]
