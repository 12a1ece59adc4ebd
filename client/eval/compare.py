"""`selfreward eval compare RUN ...`: one row per model, CSR Table 7's columns.

A RUN is a `summary.json`, a folder holding one, or a folder whose sub-folders hold them (e.g.
`runs/iter1/{chair,pope,halbench}`). Columns as in CSR's Table 7 — POPE accuracy and F1 (mean of
the splits), CHAIR_S, CHAIR_I, average length — plus Object HalBench's response- and
mention-level rates (SBSPO Table 1) when a run has them. Rates are percentages, as the papers
print them; length is in words. The last column says how each run read its answers: the CHAIR
reading (`default` or `rohrbach`, the CHAIR script's) and the POPE answer rule (`robust` or
`official`, POPE's evaluate.py); runs that predate those options used the defaults.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

# (column title, benchmark, path into its "metrics", scale)
COLUMNS: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("POPE acc", "pope", ("mean", "accuracy"), 100.0),
    ("POPE F1", "pope", ("mean", "f1"), 100.0),
    ("CHAIR_S", "chair", ("chair_s",), 100.0),
    ("CHAIR_I", "chair", ("chair_i",), 100.0),
    ("Avg Length", "chair", ("avg_length",), 1.0),
    ("HalBench Resp.", "object_halbench", ("response_rate",), 100.0),
    ("HalBench Ment.", "object_halbench", ("mention_rate",), 100.0),
)


def find_summaries(run: str | Path) -> dict[str, dict[str, Any]]:
    """{benchmark: summary} of one RUN (see the module docstring); a later file of the same
    benchmark replaces an earlier one (sorted by path)."""
    path = Path(run)
    if path.is_file():
        files = [path]
    elif (path / "summary.json").is_file():
        files = [path / "summary.json"]
    else:
        files = sorted(path.glob("*/summary.json"))
    if not files:
        raise FileNotFoundError(f"no summary.json in {run} or its sub-folders")
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        summary = json.loads(f.read_text(encoding="utf-8"))
        out[str(summary.get("benchmark", f.parent.name))] = summary
    return out


def _get(summary: dict[str, Any] | None, keys: Sequence[str]) -> float | None:
    node: Any = (summary or {}).get("metrics")
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return float(node) if isinstance(node, int | float) else None


# (label, benchmarks, settings key, the value of runs written before the option existed)
RULES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("CHAIR", ("chair", "object_halbench"), "metric_compat", "default"),
    ("POPE", ("pope",), "answer_rule", "robust"),
)


def run_rules(found: dict[str, dict[str, Any]]) -> str:
    """'CHAIR default, POPE official': the reading of each benchmark a run has."""
    parts = []
    for label, benches, key, default in RULES:
        used = {str(found[b].get("settings", {}).get(key, default)) for b in benches if b in found}
        if used:
            parts.append(f"{label} {'/'.join(sorted(used))}")
    return ", ".join(parts) or "-"


def compare_rows(
    runs: Sequence[str | Path], names: Sequence[str] | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """(column titles, one row per run: {"name", column: value or None}); columns that no run
    has are left out."""
    if names and len(names) != len(runs):
        raise ValueError(f"{len(names)} names for {len(runs)} runs")
    rows = []
    for k, run in enumerate(runs):
        found = find_summaries(run)
        row: dict[str, Any] = {"name": names[k] if names else Path(run).name,
                               "rules": run_rules(found)}  # fmt: skip
        for title, bench, keys, scale in COLUMNS:
            value = _get(found.get(bench), keys)
            row[title] = None if value is None else value * scale
        rows.append(row)
    titles = [c[0] for c in COLUMNS if any(r[c[0]] is not None for r in rows)]
    return titles, rows


def compare_table(titles: Sequence[str], rows: Sequence[dict[str, Any]]) -> Table:
    """The rich table of `compare_rows` (two decimals for POPE, one for the rest)."""
    table = Table(title="Hallucination benchmarks (CSR Table 7 layout)")
    table.add_column("Method")
    for t in titles:
        table.add_column(t, justify="right")
    table.add_column("Rules")
    for r in rows:
        cells = []
        for t in titles:
            v = r[t]
            cells.append("-" if v is None else f"{v:.2f}" if t.startswith("POPE") else f"{v:.1f}")
        table.add_row(r["name"], *cells, r.get("rules", "-"))
    return table
