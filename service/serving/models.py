"""Which model a request names. The OpenAI-compatible routes take, as vLLM does, the served
model's name (the `--model` value or a `--served-model-name`), and also `base` or an adapter
name; the engine knows only adapters (`base` = none)."""

from __future__ import annotations

import time

from selfreward_vlm.service.engine.adapters import BASE
from selfreward_vlm.service.errors import NotFoundError
from selfreward_vlm.service.protocols.openai import ModelCard, ModelList
from selfreward_vlm.service.state import AppState


def served_names(state: AppState) -> list[str]:
    """The base model's names: the `--model` value, then every `--served-model-name`."""
    return list(dict.fromkeys([state.settings.model, *state.settings.served_model_name]))


def adapter_of(state: AppState, name: str, field: str = "model") -> str:
    """The adapter a model name means (`base` for the served model's names); 404 naming
    `field` for a name the service does not serve."""
    if name in served_names(state):
        return BASE
    adapters = state.models.engine.adapters  # type: ignore[union-attr]
    try:
        adapters.check(name, field=field)
    except NotFoundError as exc:
        known = ", ".join([*served_names(state), *adapters.names()])
        raise NotFoundError(f"unknown model {name!r}; served: {known}", field=field) from exc
    return name


def model_list(state: AppState) -> ModelList:
    """`GET /v1/models`: the base model under each of its names, then `base` and the adapters
    (their `parent` is the base model)."""
    root = state.settings.model
    now = int(time.time())
    cards = [ModelCard(id=name, created=now, root=root) for name in served_names(state)]
    for name in state.models.engine.adapters.names():  # type: ignore[union-attr]
        if name not in {c.id for c in cards}:
            parent = None if name == BASE else root
            cards.append(ModelCard(id=name, created=now, root=root, parent=parent))
    return ModelList(data=cards)
