"""A command whose options come from a table: the table's parameters take the place of one
parameter of the function, which receives them gathered into a dict.

typer (and click) build a command's options from its function's signature; a CLI whose options
each set one field of a settings model or a config (`selfreward serve`, `selfreward pairs`)
lists them as a table, one line per option, instead of a parameter each that the body repacks
by hand. Plain `inspect`: no typer here (the callers put their `typer.Option`s in the
parameters' annotations).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any


def keyword(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    """A keyword-only parameter (a table's line)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)  # fmt: skip


def grouped(
    group: str, params: Sequence[inspect.Parameter]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the function with its parameter `group` replaced by `params` (in their
    order, at its place). The result takes every parameter by keyword and calls the function
    with `group={name: value}` for all of `params`, defaults included."""
    return functools.partial(with_params, group=group, params=params)


def with_params(
    func: Callable[..., Any], group: str, params: Sequence[inspect.Parameter]
) -> Callable[..., Any]:
    """`func` with its parameter `group` replaced by `params` (see `grouped`)."""
    signature = inspect.signature(func, eval_str=True)
    if group not in signature.parameters:
        raise ValueError(f"{func.__name__} has no parameter {group!r}")
    names = [p.name for p in params]
    own = [p.name for p in signature.parameters.values() if p.name != group]
    clash = sorted(set(names) & set(own))
    if clash or len(set(names)) != len(names):
        raise ValueError(f"parameter names given twice: {clash or names}")
    merged: list[inspect.Parameter] = []
    for p in signature.parameters.values():
        merged.extend(params if p.name == group else [p])
    merged = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in merged]
    expanded = signature.replace(parameters=merged)

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        bound = expanded.bind(**kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        grouped = {name: values.pop(name) for name in names}
        return func(**values, **{group: grouped})

    command.__signature__ = expanded  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in merged}
    return command
