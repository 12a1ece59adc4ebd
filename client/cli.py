"""`selfreward pairs`: the typer command over `client.pairs.run_pairs`.

The top-level `selfreward` app mounts `pairs_group(export=...)`: this search as the group's
default command, beside the trainer's `pairs export`. `python -m selfreward_vlm.client.cli pairs
...` runs the search standalone (what the tests do).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from selfreward_vlm.client.errors import APIConnectionError, APIStatusError
from selfreward_vlm.client.journal import OutputMismatchError, PairsJournal
from selfreward_vlm.client.methods import METHODS, build_config, check_run
from selfreward_vlm.client.pairs import PairsSummary, load_prompts, run_pairs
from selfreward_vlm.core.params import grouped, keyword
from selfreward_vlm.core.presets import method_for_preset

Opt = typer.Option
_METHOD_HELP = "csr | csr-official | sbspo | self-judge"
_console = Console(stderr=True)


def _option(name: str, kind: Any, help: str, *decls: str) -> inspect.Parameter:
    return keyword(name, Annotated[kind | None, Opt(*decls, help=help)])


# The methods' options, one line each: a field of their config dataclasses (`build_config`),
# None when not given (the preset's value, else the config's default).
METHOD_OPTIONS = [
    _option("lam", float, "csr: R_I weight (0.9); sbspo: deprecated, use --union-fraction",
            "--lambda"),
    _option("union_fraction", float,
            "sbspo: top/bottom ⌈λm⌉ of each ranking, the paper's λ (0.3)"),
    _option("selection", str, "sbspo: union (eq. 5) | sum | avg (one ranking, its Table 2)"),
    _option("overlap", str, "sbspo: keep (eq. 5: in both sets) | drop (ours: leaves both)"),
    _option("alpha", float, "csr-official: CLIP-rank weight (0.9)"),
    _option("num_candidates", int, "csr: sentences proposed per path"),
    _option("keep_top", int, "csr: best paths kept per step"),
    _option("keep_bottom", int, "csr: worst paths kept per step"),
    _option("language_score", str, "csr R_T: prob | mean_logprob | sum_logprob"),
    _option("path_score", str, "csr: sum | mean of sentence rewards"),
    _option("stop_r_i", str, "csr: R_I of the end-of-response: zero | path"),
    _option("drop_duplicate_sentences", bool, "csr: repeated sentences",
            "--drop-duplicates/--keep-duplicates"),
    _option("max_steps", int, "csr: most sentences per response"),
    _option("max_new_tokens", int, "tokens per sentence/response"),
    _option("num_samples", int, "sbspo: m samples per prompt"),
    _option("beta", float, "sbspo: implicit-reward beta"),
    _option("temperature", float, "sbspo/self-judge sampling"),
    _option("seed", int, "sbspo/self-judge: first seed"),
    _option("judge", str, "self-judge: logprobs | generate"),
]  # fmt: skip


@grouped("options", METHOD_OPTIONS)
def pairs_command(
    *,
    service: Annotated[str, Opt(help="service base URL; comma-separate several replicas")],
    method: Annotated[str, Opt(help=_METHOD_HELP)],
    prompts: Annotated[Path, Opt(help="JSONL of {id, image, prompt}")],
    images: Annotated[Path, Opt(help="folder the prompts' image paths are relative to")],
    out: Annotated[Path, Opt(help="output JSONL of pairs; rerun with the same --out to resume")],
    concurrency: Annotated[int, Opt(help="prompts searched at once")] = 4,
    limit: Annotated[int | None, Opt(help="only the first N prompts")] = None,
    publish: Annotated[
        str | None, Opt(help="also POST pairs to URL/v1/datasets/NAME (or a dataset NAME)")
    ] = None,
    model: Annotated[str, Opt(help="policy adapter that generates")] = "base",
    reference: Annotated[str, Opt(help="reference adapter (sbspo's implicit reward)")] = "base",
    iteration: Annotated[int, Opt(help="iteration recorded in each pair")] = 0,
    api_key: Annotated[str | None, Opt(envvar="SELFREWARD_API_KEY", help="bearer token")] = None,
    options: dict[str, Any],
    quiet: Annotated[bool, Opt(help="no progress bar")] = False,
    preset: Annotated[
        str | None, Opt(help="paper | official | tuned: the method's settings (flags win)")
    ] = None,
) -> None:
    """Build preference pairs for a prompts file with one method (resumable)."""
    if method not in METHODS:
        raise typer.BadParameter(f"choose from {sorted(METHODS)}", param_hint="--method")
    method = _preset_method(method, preset)
    lam = options["lam"]
    if method == "sbspo" and lam is not None:
        if options["union_fraction"] is not None:
            raise typer.BadParameter("give --union-fraction only", param_hint="--lambda")
        _console.print(
            "[yellow]warning[/yellow]: --lambda for sbspo is deprecated (it is CSR's R_I "
            "weight); use --union-fraction", highlight=False,
        )  # fmt: skip
        options = {**options, "lam": None, "union_fraction": lam}
    try:
        config = build_config(method, preset, **options)
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        check_run(method, model, reference)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--model/--reference") from exc
    urls = [u.strip() for u in service.split(",") if u.strip()]
    try:
        load_prompts(prompts, limit)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--prompts") from exc
    if not images.is_dir():
        raise typer.BadParameter(f"{images} is not a folder", param_hint="--images")
    try:
        summary = run_pairs(
            urls, method, prompts, images, out, config=config, concurrency=concurrency,
            limit=limit, publish=publish, model=model, reference=reference,
            iteration=iteration, api_key=api_key, progress=not quiet, console=_console,
        )  # fmt: skip
    except KeyboardInterrupt:
        _stopped(out, "interrupted")
        raise typer.Exit(130) from None
    except OutputMismatchError as exc:
        _console.print(f"[red]error[/red] {exc}")
        raise typer.Exit(2) from None
    except (APIConnectionError, APIStatusError) as exc:  # fatal, or a failed publish
        _console.print(f"[red]error[/red] {exc}")
        _stopped(out, "stopped")
        raise typer.Exit(1) from None
    _print_summary(summary)
    if summary.prompts_undone:  # transient failures: the run is not complete (rerun it)
        raise typer.Exit(3)


def _preset_method(method: str, preset: str | None) -> str:
    """`--method csr --preset official` runs what "CSR" means under the preset: the released
    code's search (`csr-official`), said on stderr; the paper search has no official form."""
    if preset is None or method != "csr":
        return method
    try:
        mapped = method_for_preset(method, preset)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--preset") from exc
    if mapped != method:
        _console.print(
            f"--preset {preset}: --method csr runs [bold]{mapped}[/bold] (the released CSR "
            "code's search, rank fusion and mean rank)", highlight=False,
        )  # fmt: skip
    return mapped


def _stopped(out: Path, what: str) -> None:
    done = len(PairsJournal(out).recover())
    _console.print(
        f"[yellow]{what}[/yellow]: {done} prompts are saved in {out} (listed in {out}.done). "
        "Rerun the same command to resume; finished prompts are not redone."
    )


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _print_summary(s: PairsSummary) -> None:
    table = Table(title=f"{s.method} pairs → {s.out}", show_header=False)
    rows = [
        ("prompts", f"{s.prompts_total} ({s.prompts_resumed} resumed, {s.prompts_done} done now)"),
        ("skipped / no pair / failed", f"{s.prompts_skipped} / {s.prompts_no_pair} / "
         f"{s.prompts_failed}"),
        ("pairs", f"{s.pairs_total} ({s.pairs_new} new, {s.elapsed_s:.1f} s)"),
        ("reward chosen / rejected", f"{_fmt(s.means.get('chosen_reward'))} / "
         f"{_fmt(s.means.get('rejected_reward'))}"),
        ("R_I chosen / rejected", f"{_fmt(s.means.get('chosen_r_i'))} / "
         f"{_fmt(s.means.get('rejected_r_i'))}"),
        ("words chosen / rejected", f"{_fmt(s.means.get('chosen_words'))} / "
         f"{_fmt(s.means.get('rejected_words'))}"),
    ]  # fmt: skip
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)
    for label, kinds in (("skipped", s.skipped_kinds), ("failed", s.failed_kinds)):
        if kinds:
            counts = ", ".join(f"{n} × {kind}" for kind, n in sorted(kinds.items()))
            _console.print(f"{label}: {counts}", highlight=False)
    if s.prompts_failed:
        _console.print(
            f"[yellow]{s.prompts_failed} prompts failed[/yellow] on transient errors and are not "
            "done: rerun to retry them (exit status 3)"
        )


app = typer.Typer(help="selfreward client commands", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """selfreward client commands."""


class _DefaultSearchGroup(TyperGroup):
    """`pairs SUBCOMMAND ...` runs the subcommand; anything else is `pairs search ...`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's click Context
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["search", *args]
        return super().parse_args(ctx, args)


def pairs_group(**subcommands: Any) -> typer.Typer:
    """The `pairs` command group: `search` (the default command, so `pairs --service ...` runs
    it) and `subcommands` by name (the `selfreward` CLI adds the trainer's `export`)."""
    group = typer.Typer(cls=_DefaultSearchGroup, help="Search preference pairs; export them.")
    group.command("search")(pairs_command)
    for name, command in subcommands.items():
        group.command(name)(command)
    return group


pairs_app = pairs_group()
app.add_typer(pairs_app, name="pairs")

prompts_app = typer.Typer(help="prompt files: convert CSR's or LLaVA's into prompts JSONL",
                          no_args_is_help=True)  # fmt: skip


@prompts_app.command("convert")
def prompts_convert_command(
    src: Annotated[Path, typer.Argument(help="CSR-Prompt-Dataset-12k.json or LLaVA-Instruct")],
    out: Annotated[Path, typer.Argument(help="prompts JSONL to write ({id, image, prompt})")],
    fmt: Annotated[str, Opt("--format", help="auto | csr | llava")] = "auto",
    image_prefix: Annotated[
        str | None,
        Opt(help="prefix of every image name (csr default: COCO_train2014_, as sample.py)"),
    ] = None,
) -> None:
    """Convert the official CSR prompt set or LLaVA-Instruct conversations into the prompts
    JSONL that `pairs` and `iterate` read."""
    from selfreward_vlm.client.prompt_files import convert_file

    try:
        report = convert_file(src, out, fmt, image_prefix)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="SRC") from exc
    _console.print(
        f"{report.format}: {report.written} prompts → {out} ({report.renamed} repeated ids "
        f"renamed -2, -3, …; {len(report.skipped)} entries without prompt text skipped)",
        highlight=False,
    )  # fmt: skip


app.add_typer(prompts_app, name="prompts")


def main() -> None:
    """Entry point of `python -m client.cli`."""
    app()


if __name__ == "__main__":
    main()
