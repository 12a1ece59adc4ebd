"""The iterations table: one row per iteration of `trainer.iterate` (pairs, rewards, R_I,
lengths, DPO loss/margin/accuracy, time), as a dataclass, JSON and a rich table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfreward_vlm.core.schemas import PreferencePair
from selfreward_vlm.trainer.data import read_pairs_jsonl


@dataclass
class IterationRecord:
    """One row of the iterations table."""

    iteration: int
    policy: str  # adapter the pairs were generated with
    adapter: str  # adapter trained in this iteration (its name on the service)
    pairs: int
    mean_chosen_reward: float | None
    mean_rejected_reward: float | None
    mean_chosen_r_i: float | None
    mean_rejected_r_i: float | None
    mean_chosen_words: float | None
    mean_rejected_words: float | None
    train_loss: float | None
    margin: float | None
    accuracy: float | None
    steps: int
    pairs_seconds: float
    train_seconds: float


def _mean(values: list[float]) -> float | None:
    """The mean, with the sum correctly rounded (`math.fsum`): the same in any order, so the
    means do not depend on the order concurrent searches wrote their pairs in."""
    return math.fsum(values) / len(values) if values else None


def _mean_r_i(score: Any) -> float | None:
    """A response's mean sentence R_I (None for methods that score no image relevance)."""
    return _mean([s.r_i for s in score.sentences if s.r_i is not None])


def pair_stats(pairs: list[PreferencePair]) -> dict[str, float | None]:
    """Means over the pairs: rewards, R_I, lengths in words, for chosen and rejected."""
    stats: dict[str, float | None] = {}
    for side in ("chosen", "rejected"):
        scores = [getattr(p, f"{side}_score") for p in pairs]
        r_i = [v for v in (_mean_r_i(s) for s in scores) if v is not None]
        stats[f"mean_{side}_reward"] = _mean([s.reward for s in scores])
        stats[f"mean_{side}_r_i"] = _mean(r_i)
        stats[f"mean_{side}_words"] = _mean([len(getattr(p, side).split()) for p in pairs])
    return stats


def build_record(
    t: int, policy: str, adapter: str, entry: dict[str, Any], pairs_file: Path
) -> IterationRecord:
    """A table row from the state entry of iteration t and its pairs file."""
    pairs = list(read_pairs_jsonl(pairs_file)) if pairs_file.exists() else []
    summary = entry.get("train", {})
    return IterationRecord(
        iteration=t,
        policy=policy,
        adapter=adapter,
        pairs=len(pairs),
        train_loss=summary.get("final_loss"),
        margin=summary.get("final_margin"),
        accuracy=summary.get("accuracy"),
        steps=int(summary.get("steps", 0)),
        pairs_seconds=float(entry.get("pairs_seconds", 0.0)),
        train_seconds=float(summary.get("seconds", 0.0)),
        **pair_stats(pairs),
    )


def render_table(records: list[IterationRecord]) -> Any:
    """A rich table of the iterations so far."""
    from rich.table import Table

    table = Table(title="iterative DPO")
    columns = [
        ("iter", "iteration"), ("pairs", "pairs"), ("R c", "mean_chosen_reward"),
        ("R r", "mean_rejected_reward"), ("R_I c", "mean_chosen_r_i"),
        ("R_I r", "mean_rejected_r_i"), ("words c/r", None), ("loss", "train_loss"),
        ("margin", "margin"), ("acc", "accuracy"), ("sec", None),
    ]  # fmt: skip
    for title, _ in columns:
        table.add_column(title, justify="right")

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)

    for r in records:
        cells = [fmt(getattr(r, key)) if key else "" for _, key in columns]
        cells[6] = f"{fmt(r.mean_chosen_words)}/{fmt(r.mean_rejected_words)}"
        cells[10] = f"{r.pairs_seconds + r.train_seconds:.1f}"
        table.add_row(*cells)
    return table
