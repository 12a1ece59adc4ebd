"""Progress display and end-of-run figures of `selfreward pairs`."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class PairsProgress:
    """A rich bar: prompts done (resumed ones pre-counted), pairs made, skipped (recorded, not
    retried) and failed (transient, left for a rerun) prompts, rate."""

    def __init__(
        self, total: int, resumed: int, *, enabled: bool = True, console: Console | None = None
    ) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]pairs"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "prompts · {task.fields[pairs]} pairs · {task.fields[skipped]} skipped · "
                "{task.fields[failed]} failed"
            ),
            TextColumn("· {task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self._task: TaskID = self._progress.add_task(
            "pairs", total=total, completed=resumed, pairs=0, skipped=0, failed=0, rate="-"
        )
        self._pairs = self._skipped = self._failed = self._done = 0
        self._start = time.monotonic()

    def __enter__(self) -> PairsProgress:
        self._progress.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def advance(self, *, pairs: int, outcome: str = "ok") -> None:
        """One prompt is through with `pairs` new pairs; `outcome` is `ok`, `nopair`,
        `skipped` (recorded, final) or `failed` (transient: a rerun retries it)."""
        self._done += 1
        self._pairs += pairs
        self._skipped += outcome == "skipped"
        self._failed += outcome == "failed"
        rate = self._done / max(time.monotonic() - self._start, 1e-9)
        self._progress.update(
            self._task, advance=1, pairs=self._pairs, skipped=self._skipped,
            failed=self._failed, rate=f"{rate:.2f} prompts/s",
        )  # fmt: skip

    def warn(self, message: str) -> None:
        """A warning line above the bar."""
        self.console.print(f"[yellow]warning[/yellow] {message}", highlight=False)


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def summarize(pairs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean reward, mean sentence R_I (where the method has one) and mean length in words of
    the chosen and the rejected responses; None where no pair has the figure."""
    out: dict[str, float | None] = {}
    for side in ("chosen", "rejected"):
        scores = [p.get(f"{side}_score") or {} for p in pairs]
        out[f"{side}_reward"] = _mean(s.get("reward") for s in scores)
        out[f"{side}_r_i"] = _mean((s.get("extra") or {}).get("mean_r_i") for s in scores)
        out[f"{side}_words"] = _mean(float(len(str(p.get(side, "")).split())) for p in pairs)
    return out
