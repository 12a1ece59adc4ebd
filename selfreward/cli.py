"""`selfreward`: one command line for the service, the client, the trainer and the demo.

Each sub-command lives beside the code it drives; this module only mounts them. A client-only
install (no torch, no fastapi) still gets a working `selfreward pairs`: commands whose extras are
missing are replaced by a stub that names the extra to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import typer

app = typer.Typer(
    name="selfreward",
    help="Self-rewarding preference optimization for VLMs (CSR, SBSPO): serve, search, train.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# (command, module, function, extra that provides it, one-line help); a function of this module
# (`__name__`) builds its command group when mounted.
COMMANDS: list[tuple[str, str, str, str, str]] = [
    ("serve", "selfreward_vlm.service.cli", "serve_command", "service", "Run the scoring service."),
    (
        "pairs",
        __name__,
        "pairs_app",
        "",
        "Search preference pairs through a service; export them (pairs export).",
    ),
    (
        "prompts",
        "selfreward_vlm.client.cli",
        "prompts_app",
        "",
        "Prompt files: convert CSR's 12k prompt set or LLaVA-Instruct (prompts convert).",
    ),
    (
        "train",
        "selfreward_vlm.trainer.cli",
        "train_command",
        "train",
        "Train a LoRA adapter by DPO.",
    ),
    (
        "iterate",
        "selfreward_vlm.trainer.cli",
        "iterate_command",
        "train",
        "Iterative DPO: pairs, train, upload.",
    ),
    (
        "world",
        "selfreward_vlm.demo",
        "world_command",
        "demo",
        "Build the miniature world of the demo.",
    ),
    ("demo", "selfreward_vlm.demo", "demo_command", "demo", "Run the end-to-end demo."),
]


def _stub(name: str, extra: str, error: Exception) -> Callable[..., Any]:
    def command() -> None:
        typer.echo(
            f"`selfreward {name}` needs the '{extra}' extra: pip install 'selfreward-vlm[{extra}]' "
            f"({type(error).__name__}: {error})",
            err=True,
        )
        raise typer.Exit(2)

    return command


def pairs_app() -> typer.Typer:
    """`selfreward pairs`: the client's search (the group's default command) and `pairs export`,
    which writes a `datasets` folder with the trainer's code. This CLI joins them, as the client
    does not import the trainer."""
    from selfreward_vlm.client.cli import pairs_group

    try:
        from selfreward_vlm.trainer.export import export_command
    except ImportError as exc:
        export_command = _stub("pairs export", "train", exc)
    return pairs_group(export=export_command)


def _mount() -> None:
    for name, module, func, extra, help_text in COMMANDS:
        try:
            if module == __name__:
                command = globals()[func]()
            else:
                command = getattr(importlib.import_module(module), func)
        except ImportError as exc:
            command = _stub(name, extra or "service", exc)
        if isinstance(command, typer.Typer):  # a command group (`pairs`, `pairs export`)
            app.add_typer(command, name=name, help=help_text)
        else:
            app.command(name, help=help_text)(command)


_mount()

# Sub-apps: `selfreward eval ...` (client only: no torch, so no stub is needed).
from selfreward_vlm.client.eval.cli import app as eval_app  # noqa: E402

app.add_typer(eval_app, name="eval")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
