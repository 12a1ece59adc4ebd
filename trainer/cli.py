"""`selfreward train` and `selfreward iterate` as typer command functions.

The `selfreward` CLI (`selfreward_vlm.cli`) registers them; `python -m selfreward_vlm.trainer`
runs them standalone. torch/transformers/trl are imported inside the commands only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

Opt = typer.Option


def _loss_types(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


def train_command(
    pairs: Annotated[str | None, Opt(help="URL .../v1/datasets/NAME or a JSONL file")] = None,
    model: Annotated[str | None, Opt(help="hub id or local dir of the base (V)LM")] = None,
    out: Annotated[str | None, Opt(help="output dir (adapter/, checkpoints/, log.jsonl)")] = None,
    init_adapter: Annotated[str | None, Opt(help="LoRA dir to continue training")] = None,
    reference: Annotated[str | None, Opt(help="'base' or the LoRA dir pairs came from")] = None,
    images: Annotated[str | None, Opt(help="JSONL pairs: image dir or id->path JSON")] = None,
    config: Annotated[Path | None, Opt(help="YAML/JSON with DPOTrainConfig fields")] = None,
    lr: Annotated[float | None, Opt(help="learning rate (default 1e-7)")] = None,
    beta: Annotated[float | None, Opt(help="DPO beta (default 0.1)")] = None,
    lora_r: Annotated[int | None, Opt(help="LoRA rank (default 128)")] = None,
    lora_alpha: Annotated[int | None, Opt(help="LoRA alpha (default 256)")] = None,
    lora_dropout: Annotated[float | None, Opt(help="LoRA dropout (default 0.05)")] = None,
    epochs: Annotated[float | None, Opt(help="epochs (default 1)")] = None,
    batch_size: Annotated[int | None, Opt(help="pairs per device step")] = None,
    grad_accum: Annotated[int | None, Opt(help="gradient accumulation steps")] = None,
    loss_type: Annotated[str | None, Opt(help="comma list, e.g. sigmoid or sigmoid,sft")] = None,
    reference_logprobs: Annotated[str | None, Opt(help="model | service")] = None,
    service: Annotated[str | None, Opt(help="service URL (reference log-probs)")] = None,
    reference_name: Annotated[str | None, Opt(help="the reference's name on the service")] = None,
    seed: Annotated[int | None, Opt(help="random seed")] = None,
    max_steps: Annotated[int | None, Opt(help="stop after N optimizer steps")] = None,
    max_length: Annotated[int | None, Opt(help="max prompt+response tokens")] = None,
    save_steps: Annotated[int | None, Opt(help="checkpoint every N steps")] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda")] = None,
) -> None:
    """Train a LoRA DPO adapter on preference pairs (resumes from out/checkpoints)."""
    flags = dict(locals())  # first statement: exactly the flags
    flags.pop("config")
    from selfreward_vlm.trainer.config import ConfigError, build_config

    flags["loss_type"] = _loss_types(loss_type)
    try:
        cfg = build_config(config, **flags)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc
    from selfreward_vlm.trainer.dpo import train

    result = train(cfg)
    summary = {k: v for k, v in result.to_dict().items() if k != "config"}
    typer.echo(json.dumps(summary, indent=2))


def _options(items: list[str] | None) -> dict[str, Any]:
    """`key=value` pairs; values parsed as JSON when they are JSON (numbers, true, lists)."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}")
        try:
            options[key.strip().replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = raw
    return options


def iterate_command(
    service: Annotated[str, Opt(help="service URL, e.g. http://127.0.0.1:8000")],
    prompts: Annotated[str, Opt(help="prompts file (JSONL) for the search")],
    images: Annotated[str, Opt(help="image directory the prompts refer to")],
    work: Annotated[Path, Opt(help="work dir: iter{t}/, state.json, iterations.json")],
    method: Annotated[str, Opt(help="csr | csr-official | sbspo | self-judge")] = "csr",
    iterations: Annotated[int, Opt(help="number of rounds")] = 3,
    model: Annotated[str | None, Opt(help="base model for training (default: service's)")] = None,
    run: Annotated[str | None, Opt(help="datasets/adapters name prefix (default: work)")] = None,
    train_config: Annotated[Path | None, Opt(help="YAML/JSON DPOTrainConfig fields")] = None,
    lr: Annotated[float | None, Opt(help="learning rate")] = None,
    beta: Annotated[float | None, Opt(help="DPO beta")] = None,
    lora_r: Annotated[int | None, Opt(help="LoRA rank")] = None,
    lora_alpha: Annotated[int | None, Opt(help="LoRA alpha")] = None,
    epochs: Annotated[float | None, Opt(help="epochs per round")] = None,
    batch_size: Annotated[int | None, Opt(help="pairs per device step")] = None,
    grad_accum: Annotated[int | None, Opt(help="gradient accumulation steps")] = None,
    loss_type: Annotated[str | None, Opt(help="comma list, e.g. sigmoid,sft")] = None,
    max_steps: Annotated[int | None, Opt(help="optimizer steps per round")] = None,
    reference_logprobs: Annotated[str | None, Opt(help="model | service")] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda")] = None,
    num_candidates: Annotated[int | None, Opt(help="search: candidates per step")] = None,
    max_new_tokens: Annotated[int | None, Opt(help="search: tokens per sentence")] = None,
    method_option: Annotated[
        list[str] | None, Opt(help="extra search option KEY=VALUE (repeatable)")
    ] = None,
    preset: Annotated[
        str | None, Opt(help="paper | official | tuned: search + training settings")
    ] = None,
    init_adapter: Annotated[
        str | None, Opt(help="LoRA dir to start from (iteration 0); sbspo needs one (M1')")
    ] = None,
    launcher: Annotated[
        str | None,
        Opt(
            help="run each train stage under it: 'accelerate launch --num_processes 8' or "
            "'accelerate launch --config_file deploy/accelerate/zero2.yaml'"
        ),
    ] = None,
) -> None:
    """Iterative DPO: pairs with adapter t-1, train adapter t, upload it, repeat (resumable)."""
    from selfreward_vlm.trainer.iterate import check_iterate, iterate

    overrides = {
        "config": str(train_config) if train_config else None, "lr": lr, "beta": beta,
        "lora_r": lora_r, "lora_alpha": lora_alpha, "epochs": epochs, "batch_size": batch_size,
        "grad_accum": grad_accum, "loss_type": _loss_types(loss_type), "max_steps": max_steps,
        "reference_logprobs": reference_logprobs, "device": device,
    }  # fmt: skip
    options = {"num_candidates": num_candidates, "max_new_tokens": max_new_tokens}
    options = {k: v for k, v in options.items() if v is not None} | _options(method_option)
    if init_adapter is not None and not Path(init_adapter).is_dir():
        raise typer.BadParameter(f"{init_adapter} is not a folder", param_hint="--init-adapter")
    try:
        check_iterate(method, init_adapter is not None, preset, options)
    except ValueError as exc:  # refused before any work: a usage error, not a trace
        raise typer.BadParameter(str(exc)) from None
    iterate(
        service_url=service, method=method, prompts=prompts, images=images,
        iterations=iterations, work_dir=work, model=model, run=run,
        train_overrides={k: v for k, v in overrides.items() if v is not None},
        method_options=options, init_adapter=init_adapter, preset=preset, launcher=launcher,
    )  # fmt: skip


def build_app() -> typer.Typer:
    """A standalone app with both commands (`python -m trainer`)."""
    app = typer.Typer(add_completion=False, no_args_is_help=True)
    app.command("train")(train_command)
    app.command("iterate")(iterate_command)
    return app
