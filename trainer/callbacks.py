"""Training progress: a progress bar with one short line per logged step, and `log.jsonl`.

Each logged step becomes one JSON line `{"step", "loss", "rewards/margins", ...}` in
`out/log.jsonl`; a resumed run appends to it, and `summarize_log` keeps the last record per step
(the steps between the last checkpoint and an interruption are logged twice).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from transformers import ProgressCallback, TrainerCallback

SHOWN = (("loss", "loss"), ("rewards/margins", "margin"), ("rewards/accuracies", "acc"))


def format_step(step: int, max_steps: int, logs: dict[str, Any]) -> str:
    """`step 3/10  loss 0.6931  margin 0.0000  acc 0.00`"""
    parts = [f"step {step}/{max_steps}"]
    parts += [f"{label} {logs[key]:.4f}" for key, label in SHOWN if key in logs]
    return "  ".join(parts)


class StepLineProgressCallback(ProgressCallback):
    """transformers' progress bar, but a step's log is one short line instead of a dict dump."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        bar = self.training_bar
        if state.is_world_process_zero and bar is not None and logs and "loss" in logs:
            bar.write(format_step(state.global_step, state.max_steps, logs))


class JsonlLogCallback(TrainerCallback):
    """Appends every training log record (with its step) to a JSONL file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The log records, last one per step wins, sorted by step (torn last line skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def summarize_log(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """First/final loss, mean and final margin, mean reward accuracy over the logged steps."""

    def values(key: str) -> list[float]:
        return [float(r[key]) for r in records if key in r and math.isfinite(float(r[key]))]

    losses, margins, accs = values("loss"), values("rewards/margins"), values("rewards/accuracies")
    return {
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "mean_margin": sum(margins) / len(margins) if margins else None,
        "final_margin": margins[-1] if margins else None,
        "accuracy": sum(accs) / len(accs) if accs else None,
        "final_accuracy": accs[-1] if accs else None,
    }
