"""`selfreward pairs export --format hf DIR`: scored pairs as a Hugging Face `datasets` dataset in
TRL's vision preference format, which `DPOTrainer` takes with no conversion:

    from datasets import load_from_disk
    trainer = DPOTrainer(model, args, train_dataset=load_from_disk(DIR), processing_class=proc)

Columns: `prompt` (a user message: one `{"type": "image"}` part per image, then the text),
`chosen` / `rejected` (an assistant message each), `images` (the PIL images) and `pair_id`.
The pairs come from a JSONL file (`pairs --out`) or a service dataset URL; images from the
service by id, or from a local folder. Rows are built by `trainer.data` (the same code the
project's own DPO training feeds on), so this needs the `train` extra (`datasets`).

The `selfreward` CLI mounts `export_command` in the client's `pairs` group
(`client.cli.pairs_group`): the client itself never imports the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from selfreward_vlm.core.urls import is_http, split_dataset_url

Opt = typer.Option


@dataclass
class ExportSummary:
    out: str
    rows: int
    dropped_empty: int
    with_images: bool


def export_pairs(
    source: str,
    out_dir: str | Path,
    *,
    images: str | Path | None = None,
    api_key: str | None = None,
    client: Any = None,
) -> ExportSummary:
    """Write the pairs of `source` (JSONL path or `URL/v1/datasets/NAME`) to `out_dir` with
    `Dataset.save_to_disk`; returns what was written."""
    from selfreward_vlm.trainer.data import (
        ImageLoader,
        build_dataset,
        filter_pairs,
        iter_pairs,
        to_trl_row,
    )

    if client is None and is_http(source):
        from selfreward_vlm.client import ScoringClient

        client = ScoringClient(split_dataset_url(source)[0], api_key=api_key)
    pairs, report = filter_pairs(iter_pairs(source, client=client), set(), None)
    store = ImageLoader(client=client, images=images)
    dataset = build_dataset([to_trl_row(p, store) for p in pairs])
    dataset.save_to_disk(str(out_dir))
    return ExportSummary(
        str(out_dir), len(dataset), report.dropped_empty, "images" in dataset.column_names
    )


def export_command(
    out: Annotated[Path, typer.Argument(help="folder to write the dataset to")],
    pairs: Annotated[str, Opt("--pairs", help="pairs JSONL, or URL/v1/datasets/NAME")],
    format: Annotated[str, Opt("--format", help="output format: hf (datasets)")] = "hf",
    images: Annotated[
        Path | None, Opt(help="folder (or id->path JSON) of the images, for JSONL pairs")
    ] = None,
    api_key: Annotated[str | None, Opt(envvar="SELFREWARD_API_KEY", help="bearer token")] = None,
) -> None:
    """Export pairs as a `datasets` dataset in TRL's vision preference format."""
    if format != "hf":
        raise typer.BadParameter("only 'hf' is supported", param_hint="--format")
    try:
        summary = export_pairs(pairs, out, images=images, api_key=api_key)
    except ImportError as exc:
        typer.echo(f"error: needs the 'train' extra (datasets): {exc}", err=True)
        raise typer.Exit(2) from None
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"wrote {summary.rows} pairs to {summary.out} (dropped {summary.dropped_empty} with an "
        f"empty response); load with datasets.load_from_disk"
    )
