"""`selfreward eval ...`: the typer sub-app over the benchmarks (chair, object-halbench, pope,
compare). `python -m selfreward_vlm.client.eval.cli ...` runs it standalone (what tests do)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from selfreward_vlm.client.errors import APIConnectionError, APIStatusError
from selfreward_vlm.client.eval.chair_eval import CHAIR_PROMPT, run_chair
from selfreward_vlm.client.eval.compare import compare_rows, compare_table
from selfreward_vlm.client.eval.object_halbench import run_object_halbench
from selfreward_vlm.client.eval.pope import POPE_SUFFIX, run_pope
from selfreward_vlm.client.journal import OutputMismatchError

Opt = typer.Option
_err = Console(stderr=True)
app = typer.Typer(
    name="eval", help="Hallucination benchmarks against the service: CHAIR, Object HalBench, POPE.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)  # fmt: skip

Service = Annotated[str, Opt(help="service base URL; comma-separate several replicas")]
Model = Annotated[str, Opt(help="adapter that answers ('base' = none)")]
Images = Annotated[Path, Opt(help="folder of the images the annotations name")]
Out = Annotated[Path, Opt(help="output folder; rerun with the same --out to resume")]
Concurrency = Annotated[int, Opt(help="requests in flight")]
Seed = Annotated[int, Opt(help="seed of the random image sample")]
ApiKey = Annotated[str | None, Opt(envvar="SELFREWARD_API_KEY", help="bearer token")]
Quiet = Annotated[bool, Opt(help="no progress bars")]
Annot = Annotated[Path, Opt(help="COCO instances_*.json (ground-truth objects)")]
Compat = Annotated[
    str,
    Opt(
        help="default | rohrbach: the CHAIR authors' script's reading, quirks included "
        "(comparable with published CHAIR)"
    ),
]
CapAnnot = Annotated[
    Path | None, Opt(help="COCO captions_*.json: objects its captions name count as present too")
]


def _guarded(out: Path, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a benchmark; turn interruptions and known errors into a message and an exit code."""
    try:
        return call()
    except KeyboardInterrupt:
        _err.print(f"[yellow]interrupted[/yellow]: answers so far are saved in {out}. "
                   "Rerun the same command to resume; answered items are not redone.")  # fmt: skip
        raise typer.Exit(130) from None
    except (OutputMismatchError, ValueError, FileNotFoundError) as exc:
        _err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(2) from None
    except (APIConnectionError, APIStatusError) as exc:
        _err.print(f"[red]error[/red] {exc}\nRerun the same command to resume.")
        raise typer.Exit(1) from None


def _urls(service: str) -> list[str]:
    return [u.strip() for u in service.split(",") if u.strip()]


def _check_images(images: Path) -> None:
    if not images.is_dir():
        raise typer.BadParameter(f"{images} is not a folder", param_hint="--images")


def _print(summary: dict[str, Any], rows: list[tuple[str, str]]) -> None:
    table = Table(title=f"{summary['benchmark']} · model {summary['model']}", show_header=False)
    for k, v in rows:
        table.add_row(k, v)
    table.add_row("items", f"{summary['items']} ({summary['answered']} answered, "
                  f"{summary['skipped']} skipped, {summary['failed']} failed, "
                  f"{summary['resumed']} resumed)")  # fmt: skip
    table.add_row("outputs", "\n".join(summary["outputs"].values()))
    Console().print(table)
    if summary["failed"]:
        _err.print(f"[yellow]{summary['failed']} items failed[/yellow]: rerun to retry them")


def _print_chair(s: dict[str, Any]) -> None:
    m = s["metrics"]
    _print(s, [
        ("CHAIR_S", f"{100 * m['chair_s']:.1f}"), ("CHAIR_I", f"{100 * m['chair_i']:.1f}"),
        ("recall", f"{100 * m['recall']:.1f}"), ("avg length", f"{m['avg_length']:.1f} words"),
        ("mentions / hallucinated", f"{m['n_mentions']} / {m['n_hallucinated']}"),
        ("hit max tokens", str(m["hit_max_tokens"])),
    ])  # fmt: skip


@app.command("chair")
def chair_command(
    service: Service, annotations: Annot, images: Images, out: Out,
    captions_annotations: CapAnnot = None, model: Model = "base",
    prompt: Annotated[str, Opt(help="the question asked about every image")] = CHAIR_PROMPT,
    limit: Annotated[int, Opt(help="random images (0 = all)")] = 500, seed: Seed = 0,
    max_new_tokens: Annotated[int, Opt(help="most tokens per caption")] = 512,
    concurrency: Concurrency = 4, api_key: ApiKey = None, quiet: Quiet = False,
    metric_compat: Compat = "default",
) -> None:  # fmt: skip
    """CHAIR on COCO (CSR: 500 random val2014 images, "Please describe this image in detail.")."""
    _check_images(images)
    summary = _guarded(out, lambda: run_chair(
        _urls(service), annotations, images, out, captions_annotations=captions_annotations,
        prompt=prompt, limit=limit or None, seed=seed, model=model,
        max_new_tokens=max_new_tokens, metric_compat=metric_compat,
        concurrency=concurrency, api_key=api_key,
        progress=not quiet, console=_err,
    ))  # fmt: skip
    _print_chair(summary)


@app.command("object-halbench")
def object_halbench_command(
    service: Service, annotations: Annot, images: Images, out: Out,
    captions_annotations: CapAnnot = None, model: Model = "base",
    limit: Annotated[int, Opt(help="random images (0 = all)")] = 300, seed: Seed = 0,
    max_new_tokens: Annotated[int, Opt(help="most tokens per description")] = 512,
    concurrency: Concurrency = 4, api_key: ApiKey = None, quiet: Quiet = False,
    metric_compat: Compat = "default",
) -> None:  # fmt: skip
    """Object HalBench (SBSPO): CHAIR on 300 images, one of its 8 description prompts each."""
    _check_images(images)
    summary = _guarded(out, lambda: run_object_halbench(
        _urls(service), annotations, images, out, captions_annotations=captions_annotations,
        limit=limit or None, seed=seed, model=model, max_new_tokens=max_new_tokens,
        metric_compat=metric_compat,
        concurrency=concurrency, api_key=api_key, progress=not quiet, console=_err,
    ))  # fmt: skip
    _print_chair(summary)


@app.command("pope")
def pope_command(
    service: Service,
    questions: Annotated[list[Path], Opt(help="POPE question file (repeat per split)")],
    images: Images, out: Out, model: Model = "base",
    suffix: Annotated[str, Opt(help="appended to each question")] = POPE_SUFFIX,
    limit: Annotated[int, Opt(help="questions per split (0 = all)")] = 0,
    max_new_tokens: Annotated[int, Opt(help="most tokens per answer")] = 16,
    concurrency: Concurrency = 4, api_key: ApiKey = None, quiet: Quiet = False,
    answer_rule: Annotated[
        str, Opt(help="robust | official: POPE's evaluate.py (first sentence; no/not/No → no, "
                 "else yes)")
    ] = "robust",
) -> None:  # fmt: skip
    """POPE: yes/no object questions; accuracy, precision, recall, F1, yes ratio per split."""
    _check_images(images)
    s = _guarded(out, lambda: run_pope(
        _urls(service), questions, images, out, suffix=suffix, limit=limit or None, model=model,
        max_new_tokens=max_new_tokens, answer_rule=answer_rule, concurrency=concurrency,
        api_key=api_key,
        progress=not quiet, console=_err,
    ))  # fmt: skip
    table = Table(
        title=f"POPE · model {s['model']} · answers read by the {s['settings']['answer_rule']} rule"
    )
    for col in ("split", "accuracy", "precision", "recall", "F1", "yes ratio", "unparsed", "n"):
        table.add_column(col, justify="left" if col == "split" else "right")
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    for split, m in s["metrics"]["splits"].items():
        rates = (f"{100 * m[k]:.2f}" for k in keys)
        table.add_row(split, *rates, str(m["unparsed"]), str(m["n"]))
    mean = s["metrics"]["mean"]
    table.add_row("mean", *(f"{100 * mean[k]:.2f}" for k in keys), "", "")
    Console().print(table)
    _print(s, [])


@app.command("compare")
def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="run folders or summary.json files")],
    names: Annotated[str | None, Opt(help="comma-separated row names (default: folder names)")]
    = None,
) -> None:  # fmt: skip
    """One table across models in CSR Table 7's layout (POPE acc/F1, CHAIR_S/I, length)."""
    try:
        titles, rows = compare_rows(runs, names.split(",") if names else None)
    except (FileNotFoundError, ValueError) as exc:
        _err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(2) from None
    Console().print(compare_table(titles, rows))


def main() -> None:
    """Entry point of `python -m selfreward_vlm.client.eval.cli`."""
    app()


if __name__ == "__main__":
    main()
