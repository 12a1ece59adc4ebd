"""`selfreward serve` / `python -m selfreward_vlm.service`: settings from flags, then the env.

The dedicated flags are a table, `SERVE_FLAGS`: one line per flag, naming the settings field it
sets and its help (the option's type is the field's); `--set FIELD=VALUE` reaches every field.
Only the flags actually given are passed to `ServiceSettings`, so every flag left out falls back
to its environment variable, then to the field's default. Logging is configured here, in the
entry point, and nowhere at import time.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import ValidationError

from selfreward_vlm.core.params import grouped, keyword
from selfreward_vlm.service.settings import ServiceSettings

logger = logging.getLogger("service")


def _parse_adapters(specs: list[str]) -> dict[str, str]:
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"expected NAME=DIR, got {spec!r}", param_hint="--adapter")
        adapters[name] = path
    return adapters


def _parse_set(specs: list[str]) -> dict[str, str]:
    """`--set FIELD=VALUE` pairs: any `ServiceSettings` field, including those without a flag
    of their own (pydantic converts and validates the value as it does an env var)."""
    fields = ServiceSettings.model_fields
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            known = ", ".join(sorted(fields))
            raise typer.BadParameter(
                f"expected FIELD=VALUE with a settings field, got {spec!r} (fields: {known})",
                param_hint="--set",
            )
        out[name] = value
    return out


def build_settings(
    flags: dict[str, Any], tiny: bool = False, tiny_family: str | None = None
) -> ServiceSettings:
    """`ServiceSettings` from the given flags (None = not given) over the env; with `tiny`,
    build the tiny models under `data_dir/tiny-models` and serve them (unless --model/--clip
    say otherwise); `tiny_family` (e.g. qwen2_5_vl) picks that family's tiny VLM."""
    given = {k: v for k, v in flags.items() if v is not None}
    if not tiny and not tiny_family:
        return ServiceSettings(**given)
    from selfreward_vlm.tiny import build_all, build_family

    settings = ServiceSettings(**{"model": "tiny", **given})
    paths = build_all(settings.data_dir / "tiny-models")
    if tiny_family:
        paths["vlm"] = build_family(tiny_family, settings.data_dir / "tiny-models" / tiny_family)
    update = {"model": given.get("model", str(paths["vlm"])), "clip": given.get("clip")}
    update["clip"] = update["clip"] or str(paths["clip"])
    return settings.model_copy(update=update)


@dataclass(frozen=True)
class SettingFlag:
    """A `serve` flag that sets one `ServiceSettings` field. Left out, it is None, and the field
    comes from its `SELFREWARD_*` env var, then its default. The option's type is the field's
    (a Literal's values are str; None stripped) unless `type` says otherwise."""

    field: str
    help: str
    name: str = ""  # the flag's name when it is not the field's: "adapter" is --adapter
    type: Any = None
    parse: Callable[[Any], Any] | None = None  # the flag's value -> the field's value


# The dedicated flags, in --help's order: one line each (any field also works as --set FIELD=V).
SERVE_FLAGS: tuple[SettingFlag, ...] = (
    SettingFlag("model", "policy model: Hugging Face id or local directory"),
    SettingFlag("clip", "CLIP: NAME:PRETRAINED (open_clip) or a local directory"),
    SettingFlag("adapters", "LoRA adapter loaded at start-up, NAME=DIR (repeatable)", "adapter",
                list[str], _parse_adapters),
    SettingFlag("served_model_name",
                "a name OpenAI clients may use for the base model (repeatable)"),
    SettingFlag("host", "bind address [127.0.0.1]"),
    SettingFlag("port", "port [8000]"),
    SettingFlag("device", "auto | cpu | cuda"),
    SettingFlag("dtype", "auto | float32 | bfloat16 | float16"),
    SettingFlag("api_key", "bearer token required on every route but health/ready/info/metrics "
                "(better: the env var)"),
    SettingFlag("data_dir", "SQLite store and uploaded adapters"),
    SettingFlag("store", "SQLite file or postgresql://… URL [DATA_DIR/selfreward.db]"),
    SettingFlag("adapter_store",
                "uploaded adapter files, shared by replicas [DATA_DIR/adapter-store]"),
    SettingFlag("naive_mode", "benchmark baseline: no caches, no batching", "naive"),
    SettingFlag("warmup", "warm up before /ready"),
    SettingFlag("torch_threads", "torch CPU threads (0: one per core) [0]"),
    SettingFlag("model_path",
                "auto (the family's fast path if any) | generic (model's own forward)"),
    SettingFlag("allow_image_urls",
                "fetch http(s) image URLs (ImageRef.url); data: URIs always work"),
    SettingFlag("image_url_allow_hosts",
                "host[:port] image URLs may name (repeatable); needed for internal ones",
                "image_url_allow_host"),
    SettingFlag("openrlhf_reward", "/get_reward: calibrated | clip | implicit [calibrated]"),
    SettingFlag("openrlhf_aggregation", "/get_reward: sentences' rewards -> mean | sum [mean]"),
)  # fmt: skip


def _option_type(flag: SettingFlag) -> Any:
    """The flag's option type: `flag.type`, else its field's type without None, a Literal's
    values' type for a Literal."""
    if flag.type is not None:
        return flag.type
    annotation = ServiceSettings.model_fields[flag.field].annotation
    if get_origin(annotation) in (Union, UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return type(get_args(annotation)[0])
    return annotation


def _flag_param(flag: SettingFlag) -> inspect.Parameter:
    option_type = _option_type(flag)
    return keyword(
        flag.name or flag.field, Annotated[option_type | None, typer.Option(help=flag.help)]
    )


def _settings_flags(given: dict[str, Any]) -> dict[str, Any]:
    """The flags' values by settings field, parsed (None: not given)."""
    out: dict[str, Any] = {}
    for flag in SERVE_FLAGS:
        value = given[flag.name or flag.field]
        out[flag.field] = flag.parse(value) if flag.parse and value is not None else value
    return out


@grouped("flags", [_flag_param(f) for f in SERVE_FLAGS])
def serve_command(
    flags: dict[str, Any],
    tiny: Annotated[
        bool, typer.Option(help="build and serve tiny random models (no download; for demos)")
    ] = False,
    tiny_family: Annotated[
        str | None,
        typer.Option(help="with tiny models: this family's VLM (llava_next, qwen2_5_vl, ...)"),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="FIELD=VALUE for any setting, e.g. --set max_queue=512 (repeatable; see "
            "service/settings.py; same as SELFREWARD_<FIELD>)",
        ),
    ] = None,
) -> None:
    """Serve the reward-scoring API (FastAPI + uvicorn)."""
    import uvicorn

    from selfreward_vlm.service.app import build_app

    _configure_logging(log_level)
    flags = _settings_flags(flags)
    for name, value in _parse_set(set_ or []).items():
        if flags.get(name) is None:  # a dedicated flag wins over --set
            flags[name] = value
    try:
        settings = build_settings(flags, tiny=tiny, tiny_family=tiny_family)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors()
        )
        typer.echo(f"error: invalid settings: {problems}", err=True)
        typer.echo("(give the flag, or set SELFREWARD_<FIELD>; see --help)", err=True)
        raise typer.Exit(2) from None
    except ValueError as e:  # an unknown --tiny-family
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    logger.info(
        "serving %s (clip %s) on http://%s:%d", settings.model, settings.clip,
        settings.host, settings.port,
    )  # fmt: skip
    app = build_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, **uvicorn_options(settings), log_level=log_level.lower())
    )
    drain = getattr(getattr(app, "state", None), "drain", None)
    if drain is not None:  # it shrinks their accept queue before they close (service.http.drain)
        drain.listeners = lambda: [s for srv in server.servers for s in srv.sockets]

        def stop_listening() -> None:
            for srv in server.servers:
                srv.close()

        drain.stop_listening = stop_listening
    server.run()


def uvicorn_options(settings: ServiceSettings) -> dict[str, Any]:
    """uvicorn's settings from ours: the slow-client limits (`service.http.connections`) and the
    graceful stop after the drain (`service.http.drain`)."""
    from selfreward_vlm.service.http.connections import guarded_protocol

    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,  # keep the logging configured in serve_command
        "timeout_graceful_shutdown": 10,
        "http": guarded_protocol(settings.header_timeout_s),  # h11 + a header timeout
        "limit_concurrency": settings.max_connections,  # 503 past it (uvicorn's answer)
        "timeout_keep_alive": settings.keep_alive_s,
    }


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def main() -> None:
    """Entry point of `python -m selfreward_vlm.service`."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(serve_command)
    app()
