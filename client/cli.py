"""`selfreward pairs`: the typer command over `client.pairs.run_pairs`.

The top-level `selfreward` app mounts `pairs_group(export=...)`: this search as the group's
default command, beside the trainer's `pairs export`. `python -m selfreward_vlm.client.cli pairs
...` runs the search standalone (what the tests do).
"""

from __future__ import annotations

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
from selfreward_vlm.core.presets import method_for_preset

Opt = typer.Option
_METHOD_HELP = "csr | csr-official | sbspo | self-judge"
_console = Console(stderr=True)


def pairs_command(
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
    lam: Annotated[
        float | None,
        Opt("--lambda", help="csr: R_I weight (0.9); sbspo: deprecated, use --union-fraction"),
    ] = None,
    union_fraction: Annotated[
        float | None, Opt(help="sbspo: top/bottom ⌈λm⌉ of each ranking, the paper's λ (0.3)")
    ] = None,
    selection: Annotated[
        str | None, Opt(help="sbspo: union (eq. 5) | sum | avg (one ranking, its Table 2)")
    ] = None,
    overlap: Annotated[
        str | None, Opt(help="sbspo: keep (eq. 5: in both sets) | drop (ours: leaves both)")
    ] = None,
    alpha: Annotated[float | None, Opt(help="csr-official: CLIP-rank weight (0.9)")] = None,
    num_candidates: Annotated[int | None, Opt(help="csr: sentences proposed per path")] = None,
    keep_top: Annotated[int | None, Opt(help="csr: best paths kept per step")] = None,
    keep_bottom: Annotated[int | None, Opt(help="csr: worst paths kept per step")] = None,
    language_score: Annotated[
        str | None, Opt(help="csr R_T: prob | mean_logprob | sum_logprob")
    ] = None,
    path_score: Annotated[str | None, Opt(help="csr: sum | mean of sentence rewards")] = None,
    stop_r_i: Annotated[
        str | None, Opt(help="csr: R_I of the end-of-response: zero | path")
    ] = None,
    drop_duplicate_sentences: Annotated[
        bool | None, Opt("--drop-duplicates/--keep-duplicates", help="csr: repeated sentences")
    ] = None,
    max_steps: Annotated[int | None, Opt(help="csr: most sentences per response")] = None,
    max_new_tokens: Annotated[int | None, Opt(help="tokens per sentence/response")] = None,
    num_samples: Annotated[int | None, Opt(help="sbspo: m samples per prompt")] = None,
    beta: Annotated[float | None, Opt(help="sbspo: implicit-reward beta")] = None,
    temperature: Annotated[float | None, Opt(help="sbspo/self-judge sampling")] = None,
    seed: Annotated[int | None, Opt(help="sbspo/self-judge: first seed")] = None,
    judge: Annotated[str | None, Opt(help="self-judge: logprobs | generate")] = None,
    quiet: Annotated[bool, Opt(help="no progress bar")] = False,
    preset: Annotated[
        str | None, Opt(help="paper | official | tuned: the method's settings (flags win)")
    ] = None,
) -> None:
    """Build preference pairs for a prompts file with one method (resumable)."""
    if method not in METHODS:
        raise typer.BadParameter(f"choose from {sorted(METHODS)}", param_hint="--method")
    method = _preset_method(method, preset)
    if method == "sbspo" and lam is not None:
        if union_fraction is not None:
            raise typer.BadParameter("give --union-fraction only", param_hint="--lambda")
        _console.print(
            "[yellow]warning[/yellow]: --lambda for sbspo is deprecated (it is CSR's R_I "
            "weight); use --union-fraction", highlight=False,
        )  # fmt: skip
        lam, union_fraction = None, lam
    options: dict[str, Any] = {
        "union_fraction": union_fraction, "selection": selection, "overlap": overlap,
        "lam": lam, "alpha": alpha, "num_candidates": num_candidates, "keep_top": keep_top,
        "keep_bottom": keep_bottom, "language_score": language_score, "path_score": path_score,
        "stop_r_i": stop_r_i, "drop_duplicate_sentences": drop_duplicate_sentences,
        "max_steps": max_steps, "max_new_tokens": max_new_tokens, "num_samples": num_samples,
        "beta": beta, "temperature": temperature, "seed": seed, "judge": judge,
    }  # fmt: skip
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
