"""Pair-building methods: `csr` (paper), `csr-official` (the published code), `sbspo`,
`self-judge`. Each is `async def method(client, item, ctx=None, config=None) -> MethodResult`
over an AsyncScoringClient (or any object with its generate/clip/logprobs/implicit_reward), with
its settings in a frozen config dataclass. Run one prompt from sync code with `asyncio.run`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from selfreward_vlm.client.methods.base import (
    AsyncScorer,
    MethodResult,
    PromptItem,
    RunContext,
    pair_id,
)
from selfreward_vlm.client.methods.csr import CSRConfig, csr
from selfreward_vlm.client.methods.csr_official import CSROfficialConfig, csr_official
from selfreward_vlm.client.methods.sbspo import (
    SamePolicyError,
    SBSPOConfig,
    check_policy,
    sbspo,
)
from selfreward_vlm.client.methods.self_judge import JUDGE_PROMPT, SelfJudgeConfig, self_judge
from selfreward_vlm.core.presets import PRESET_NAMES, PRESETS, method_options

MethodFn = Callable[[AsyncScorer, PromptItem, RunContext, Any], Awaitable[MethodResult]]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its runner and its config class."""

    name: str
    run: MethodFn
    config_cls: type
    needs_image: bool


METHODS: dict[str, MethodSpec] = {
    "csr": MethodSpec("csr", csr, CSRConfig, True),
    "csr-official": MethodSpec("csr-official", csr_official, CSROfficialConfig, True),
    "sbspo": MethodSpec("sbspo", sbspo, SBSPOConfig, False),
    "self-judge": MethodSpec("self-judge", self_judge, SelfJudgeConfig, False),
}


def get_method(name: str) -> MethodSpec:
    """The registered method `name`, or a ValueError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}") from None


def check_run(method: str, model: str, reference: str) -> None:
    """Refuse a run that cannot produce meaningful pairs before it starts (a ValueError):
    SBSPO with policy == reference scores every response 0."""
    if get_method(method).name == "sbspo":
        check_policy(model, reference)


# Deprecated option names per method -> the field they set. `lam` is CSR's R_I weight; SBSPO
# reads it as its union fraction only for compatibility (with a warning), as `--lambda` would
# otherwise mean two things.
DEPRECATED_OPTIONS: dict[str, dict[str, str]] = {"sbspo": {"lam": "union_fraction"}}


def resolve_deprecated(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` with deprecated names renamed (a FutureWarning each); giving both the old and
    the new name is a ValueError."""
    out = dict(options)
    for old, new in DEPRECATED_OPTIONS.get(method, {}).items():
        if out.get(old) is None:
            out.pop(old, None)
            continue
        if out.get(new) is not None:
            raise ValueError(f"{method}: give {new!r} only ({old!r} is its deprecated alias)")
        warnings.warn(
            f"{method}: {old!r} is deprecated, use {new!r} (the SBSPO union fraction)",
            FutureWarning, stacklevel=3,
        )  # fmt: skip
        out[new] = out.pop(old)
    return out


def build_config(method: str, preset: str | None = None, **overrides: Any) -> Any:
    """The method's config: its defaults, then the preset's values (`core.presets`; taken as
    they are, None included), then `overrides`, where None means 'keep'. An option the method
    does not have is a ValueError naming it (a typo must not be a silent default); a
    deprecated name (`DEPRECATED_OPTIONS`) sets its new field with a FutureWarning."""
    cls = get_method(method).config_cls
    fields = {f.name for f in dataclasses.fields(cls)}
    overrides = resolve_deprecated(get_method(method).name, overrides)
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"{method} has no option(s) {unknown}; it takes {sorted(fields)}")
    values = {**method_options(preset, method), **given}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


__all__ = [
    "JUDGE_PROMPT",
    "METHODS",
    "PRESETS",
    "PRESET_NAMES",
    "AsyncScorer",
    "CSRConfig",
    "CSROfficialConfig",
    "MethodResult",
    "MethodSpec",
    "PromptItem",
    "RunContext",
    "SBSPOConfig",
    "SamePolicyError",
    "SelfJudgeConfig",
    "build_config",
    "check_run",
    "csr",
    "csr_official",
    "get_method",
    "pair_id",
    "resolve_deprecated",
    "sbspo",
    "self_judge",
]
