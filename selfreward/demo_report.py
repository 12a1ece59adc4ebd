"""The demo's report: rows across seeds (mean ± sd), the tables, the length table, the plot.

A report holds, per seed, `eval[label] = metrics` (greedy CHAIR on the evaluation images) and
`lengths[run] = length_stats` of each run's pairs. `aggregate` turns several seeds into one
row per label with the mean and the sample standard deviation of each metric.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# The tables' columns, (heading, key, digits): the metrics of each model's evaluation row, and
# the lengths and form of each run's pairs. The console and the Markdown print them alike.
METRIC_COLUMNS = (("CHAIR_S", "chair_s", 3), ("CHAIR_I", "chair_i", 3), ("recall", "recall", 3),
                  ("words", "mean_length", 1), ("malformed", "malformed_rate", 3),
                  ("repeats", "repeat_rate", 3))  # fmt: skip
# with `--eval-samples N` (`--full`), the same images' N sampled captions each: the malformed
# rate greedy decoding hides (it takes each sentence's majority form), and their CHAIR_S
SAMPLED_COLUMNS = (("malformed (sampled)", "sampled_malformed_rate", 3),
                   ("CHAIR_S (sampled)", "sampled_chair_s", 3))  # fmt: skip
LENGTH_COLUMNS = (("chosen", "chosen_words", 1), ("rejected", "rejected_words", 1),
                  ("chosen longer", "chosen_longer", 2), ("chosen shorter", "chosen_shorter", 2),
                  ("chosen cut off", "chosen_cut_off", 2),
                  ("rejected cut off", "rejected_cut_off", 2),
                  ("chosen malformed", "chosen_malformed", 2),
                  ("rejected malformed", "rejected_malformed", 2))  # fmt: skip
METRICS = tuple(key for _, key, _ in METRIC_COLUMNS)
SAMPLED_METRICS = tuple(key for _, key, _ in SAMPLED_COLUMNS)
LENGTH_KEYS = tuple(key for _, key, _ in LENGTH_COLUMNS)


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    vals = [float(v) for v in values]
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def aggregate(per_seed: Sequence[dict[str, dict[str, Any]]], keys: Sequence[str]) -> dict:
    """{label: {key: [mean, sd]}} over the seeds that have the label and a number for key."""
    labels = list(dict.fromkeys(label for seed in per_seed for label in seed))
    out: dict[str, dict[str, list[float | None]]] = {}
    for label in labels:
        row: dict[str, list[float | None]] = {}
        for key in keys:
            vals = [s[label][key] for s in per_seed if label in s and s[label].get(key) is not None]
            if vals:
                m, sd = mean_sd(vals)
                row[key] = [m, sd]
        row["seeds"] = [float(sum(label in s for s in per_seed)), None]
        out[label] = row
    return out


LAMBDA_ROWS = ("csr λ=0", "csr λ=0.5", "csr λ=0.9", "csr λ=1")


def _beats(rows: dict[str, Any], better: str, worse: str, key: str) -> bool | None:
    """Whether `better`'s mean of `key` is below `worse`'s by more than one sd (the larger of
    the two); None without both rows or without an sd (one seed)."""
    a, b = rows.get(better, {}).get(key), rows.get(worse, {}).get(key)
    if not a or not b or a[1] is None or b[1] is None:
        return None
    return bool(b[0] - a[0] > max(a[1], b[1]))


def calibration(rows: dict[str, Any]) -> dict[str, Any]:
    """What calibration buys: the λ rows' CHAIR_S and malformed rates (greedy; sampled when
    the run measured them), and CSR Table 2's ordering as checks (None when a row or the sd is
    missing): λ = 0.9 below λ = 1 (CLIP alone) on malformed, and below λ = 0 (language score
    alone) on CHAIR_S, each by more than one sd."""
    keys = ("chair_s", "malformed_rate", "sampled_malformed_rate")
    table = {label: {k: rows[label].get(k) for k in keys}
             for label in LAMBDA_ROWS if label in rows}  # fmt: skip
    return {
        "rows": table,
        "lambda0.9_below_lambda1_on_malformed": _beats(
            rows, "csr λ=0.9", "csr λ=1", "malformed_rate"
        ),
        "lambda0.9_below_lambda1_on_sampled_malformed": _beats(
            rows, "csr λ=0.9", "csr λ=1", "sampled_malformed_rate"
        ),
        "lambda0.9_below_lambda0_on_chair_s": _beats(rows, "csr λ=0.9", "csr λ=0", "chair_s"),
    }


CHECKS = ("lambda0.9_below_lambda1_on_malformed", "lambda0.9_below_lambda1_on_sampled_malformed",
          "lambda0.9_below_lambda0_on_chair_s")  # fmt: skip


def _shown_checks(cal: dict[str, Any]) -> list[str]:
    """The calibration checks a report shows: the sampled one only where samples were taken."""
    sampled = _sampled(cal.get("rows") or {})
    return [k for k in CHECKS if k in cal and (sampled or "sampled" not in k)]


def _sampled(rows: dict[str, Any]) -> bool:
    """Whether the rows carry the sampled captions' metrics (`--eval-samples`)."""
    return any(row.get("sampled_malformed_rate") is not None for row in rows.values())


def fmt(cell: list[float | None] | None, digits: int = 3) -> str:
    """`0.123 ± 0.010`, or `0.123` for one seed, or `-`."""
    if not cell or cell[0] is None or (isinstance(cell[0], float) and math.isnan(cell[0])):
        return "-"
    mean, sd = cell
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _columns(rows: dict[str, Any]) -> list[tuple[str, str, int]]:
    """The metrics table's columns: (heading, metric, digits); the sampled captions' two when
    the rows have them."""
    return [*METRIC_COLUMNS, *(SAMPLED_COLUMNS if _sampled(rows) else ())]


def _calibration_columns(rows: dict[str, Any]) -> list[tuple[str, str]]:
    cols = [("CHAIR_S", "chair_s"), ("malformed", "malformed_rate")]
    if _sampled(rows):
        cols.append(("malformed (sampled)", "sampled_malformed_rate"))
    return cols


VERDICT = {True: "yes", False: "no", None: "not measurable (a row or the sd missing)"}


def print_tables(report: dict[str, Any], console: Console) -> None:
    """The metrics table (mean ± sd over seeds), the lengths table, one caption per model."""
    columns = _columns(report["rows"])
    how = "Greedy decoding" + (" (and samples: the sampled columns)" if _sampled(report["rows"])
                               else "")  # fmt: skip
    table = Table(title=f"{how} on the evaluation images, seeds {report['seeds']} "
                  "(lower CHAIR is better)")  # fmt: skip
    table.add_column("model", justify="left")
    for heading, _, _ in columns:
        table.add_column(heading, justify="right")
    for label, row in report["rows"].items():
        table.add_row(label, *(fmt(row.get(key), digits) for _, key, digits in columns))
    console.print(table)
    lengths = Table(title="Chosen vs rejected responses of each run's pairs (words; shares)")
    lengths.add_column("run", justify="left")
    for heading, _, _ in LENGTH_COLUMNS:
        lengths.add_column(heading, justify="right")
    for run, row in report["lengths"].items():
        lengths.add_row(run, *(fmt(row.get(key), digits) for _, key, digits in LENGTH_COLUMNS))
    console.print(lengths)
    cal = report.get("calibration") or {}
    if cal.get("rows"):
        t = Table(title="What calibration buys (CSR Table 2's λ; mean ± sd over seeds)")
        cal_columns = _calibration_columns(cal["rows"])
        t.add_column("λ row", justify="left")
        for heading, _ in cal_columns:
            t.add_column(heading, justify="right")
        for label, row in cal["rows"].items():
            t.add_row(label, *(fmt(row.get(key)) for _, key in cal_columns))
        console.print(t)
        for key in _shown_checks(cal):
            console.print(f"  {key.replace('_', ' ')} by more than one sd: {VERDICT[cal[key]]}")
    first = report["per_seed"][0]
    console.print(f"\nOne caption per model (first evaluation image, seed {first['seed']}):")
    for label, m in first["eval"].items():
        console.print(f"  {label:>22}: {m['example']}")


def plot(report: dict[str, Any], path: Path) -> None:
    """Left: CHAIR_S, CHAIR_I and recall per CSR iteration; right: every row side by side
    (iterations and ablations); error bars = sd over seeds when there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    iters = ["base (SFT)"] + [k for k in rows if k.startswith("csr iter")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    xs = list(range(len(iters)))
    for key, name in (("chair_s", "CHAIR_S"), ("chair_i", "CHAIR_I"), ("recall", "recall")):
        means = [rows[k][key][0] for k in iters]
        errs = [rows[k][key][1] or 0.0 for k in iters]
        ax1.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=name)
    ax1.set_xticks(xs, ["base"] + [f"it{t}" for t in xs[1:]])
    ax1.set_title(f"CSR iterations ({report['preset']} preset), seeds {report['seeds']}")
    ax1.legend()
    labels = list(rows)
    width = 0.4
    for j, (key, name) in enumerate((("chair_s", "CHAIR_S"), ("recall", "recall"))):
        pos = [i + (j - 0.5) * width for i in range(len(labels))]
        means = [rows[k][key][0] for k in labels]
        errs = [rows[k][key][1] or 0.0 for k in labels]
        ax2.bar(pos, means, width, yerr=errs, capsize=3, label=name)
    ax2.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax2.set_title("every row (the λ, csr-official and SBSPO rows: 1 iteration each)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    """The metrics table, the pairs' table (lengths and form) and the calibration table in
    Markdown, as the README has them."""
    columns = _columns(report["rows"])
    lines = ["| model | " + " | ".join(h for h, _, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]  # fmt: skip
    for label, row in report["rows"].items():
        cells = (fmt(row.get(key), digits) for _, key, digits in columns)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if report.get("lengths"):
        lines += ["", "| run | " + " | ".join(h for h, _, _ in LENGTH_COLUMNS) + " |",
                  "|---" * (len(LENGTH_COLUMNS) + 1) + "|"]  # fmt: skip
        for run, row in report["lengths"].items():
            cells = (fmt(row.get(key), digits) for _, key, digits in LENGTH_COLUMNS)
            lines.append(f"| {run} | " + " | ".join(cells) + " |")
    cal = report.get("calibration") or {}
    if cal.get("rows"):
        cal_columns = _calibration_columns(cal["rows"])
        lines += ["", "| λ row | " + " | ".join(h for h, _ in cal_columns) + " |",
                  "|---" * (len(cal_columns) + 1) + "|"]  # fmt: skip
        for label, row in cal["rows"].items():
            lines.append(f"| {label} | " + " | ".join(fmt(row.get(k)) for _, k in cal_columns)
                         + " |")  # fmt: skip
        verdict = {True: "yes", False: "no", None: "not measurable"}
        said = {"lambda0.9_below_lambda1_on_malformed": "λ = 0.9 below λ = 1 on malformed",
                "lambda0.9_below_lambda1_on_sampled_malformed":
                    "λ = 0.9 below λ = 1 on malformed (sampled)",
                "lambda0.9_below_lambda0_on_chair_s": "λ = 0.9 below λ = 0 on CHAIR_S"}  # fmt: skip
        checks = [f"{said[k]} {verdict[cal[k]]}" for k in _shown_checks(cal)]
        lines += ["", "CSR Table 2's ordering, by more than one sd: " + "; ".join(checks)]
    lines.append("")
    lines.append(f"seeds {report['seeds']}, preset {report['preset']}, "
                 f"fingerprint `{report['fingerprint']}`")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m selfreward_vlm.demo_report REPORT.json`: a report's tables in Markdown."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("report", type=Path, help="a demo's report.json")
    args = ap.parse_args(argv)
    print(markdown(json.loads(args.report.read_text())), end="")


if __name__ == "__main__":
    main()
