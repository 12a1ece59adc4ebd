"""Named LoRA adapters on the one base model (PEFT), switched per batch.

`base` means no adapter. Loading, replacing and deleting take the engine's lock, so a batch in
flight finishes on the weights it started with; a replaced adapter gets a new version number,
which is part of every cache key, so no stale KV state or image feature is ever served.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfreward_vlm.core.schemas import AdapterInfo
from selfreward_vlm.service.errors import InvalidRequestError, NotFoundError

if TYPE_CHECKING:
    from selfreward_vlm.service.engine.lm import LanguageEngine

BASE = "base"
MIXED = "<mixed>"  # `_active` while a mixed-adapter batch runs (see `rows`)


class AdapterRegistry:
    """The adapters loaded on an engine's model."""

    def __init__(self, engine: LanguageEngine):
        self._engine = engine
        self._peft: Any = None  # PeftModel wrapping engine.hf, created with the first adapter
        self._info: dict[str, AdapterInfo] = {}
        self._versions: dict[str, int] = {}
        self._touches_vision: set[str] = set()
        self._active = BASE
        self._counter = 0
        # Set when replicas share an adapter registry (service.adapters.shared): called by `check`
        # to bring a name up to the registry's version before it is used.
        self.sync: Callable[[str], None] | None = None

    def names(self) -> list[str]:
        return [BASE, *sorted(self._info)]

    def info(self, name: str) -> AdapterInfo:
        if name == BASE:
            return AdapterInfo(name=BASE, source="startup")
        self._check_loaded(name)
        return self._info[name]

    def check(self, name: str, field: str = "model") -> None:
        """Raise a 404 naming `field` unless `name` is loaded (after `sync`, if attached:
        a replica never serves a version older than the shared registry's)."""
        if name != BASE and self.sync is not None:
            self.sync(name)
        self._check_loaded(name, field)

    def _check_loaded(self, name: str, field: str = "model") -> None:
        if name != BASE and name not in self._info:
            raise NotFoundError(
                f"unknown adapter {name!r}; loaded: {', '.join(self.names())}", field=field
            )

    def version(self, name: str) -> int:
        return self._versions.get(name, 0)

    def vision_scope(self) -> str:
        """Cache scope of image features: adapters that touch the vision tower get their own."""
        name = self._active
        return f"{name}@{self.version(name)}" if name in self._touches_vision else "*"

    def load(self, name: str, path: str | Path, source: str = "upload") -> AdapterInfo:
        """Load (or replace) adapter `name` from a PEFT directory of safetensors weights."""
        from peft import PeftModel

        path = Path(path)
        if name == BASE:
            raise InvalidRequestError("'base' is reserved for the model without adapter", "name")
        config = json.loads((path / "adapter_config.json").read_text())
        engine = self._engine
        with engine.lock:
            if name in self._info:
                self._peft.delete_adapter(name)
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(
                        engine.hf, str(path), adapter_name=name, is_trainable=False
                    )
                else:
                    self._peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
            except Exception as exc:  # a shape mismatch, a wrong base: the caller's input
                raise InvalidRequestError(
                    f"adapter does not fit the model: {exc}", "files"
                ) from exc
            self._peft.eval()
            self._counter += 1
            self._versions[name] = self._counter
            targets = config.get("target_modules")
            if _touches_vision(self._peft, name, engine.decoder):
                self._touches_vision.add(name)
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            info = AdapterInfo(
                name=name,
                rank=config.get("r"),
                alpha=config.get("lora_alpha"),
                target_modules=targets if isinstance(targets, (str, list)) else None,
                size_bytes=size,
                source="startup" if source == "startup" else "upload",
            )
            self._info[name] = info
            engine.prefix_cache.clear(lambda ns: ns[0] == name)
            self._activate(BASE)
        return info

    def delete(self, name: str) -> None:
        if name == BASE:
            raise InvalidRequestError("the base model cannot be deleted", "name")
        self._check_loaded(name, field="name")
        with self._engine.lock:
            self._peft.delete_adapter(name)
            if self._info.keys() == {name}:
                # The last one: PEFT would keep naming it active, and its next load_adapter
                # fails looking it up. Take the LoRA layers out; the next load starts afresh.
                self._peft.unload()
                self._peft = None
            elif name in self._peft.active_adapters:
                self._peft.set_adapter(next(n for n in self._info if n != name))
            del self._info[name]
            self._touches_vision.discard(name)
            self._versions[name] = self.version(name) + 1
            self._engine.prefix_cache.clear(lambda ns: ns[0] == name)
            self._active = BASE

    @contextlib.contextmanager
    def active(self, name: str) -> Iterator[None]:
        """Run the body with adapter `name` active (`base`: all adapters disabled)."""
        self._check_loaded(name)
        with self._engine.lock:
            self._activate(name)
            yield

    @contextlib.contextmanager
    def rows(self, names: list[str]) -> Iterator[None]:
        """Run the body over a batch whose row i uses adapter `names[i]`.

        One adapter: the usual switch (`active`). Several: every LoRA layer applies each
        adapter to its own rows only (PEFT's mixed-batch forward, S-LoRA's idea without its
        kernels): the base weights' GEMM runs once over all rows, each adapter's low-rank
        update over its rows."""
        distinct = set(names)
        if len(distinct) == 1:
            with self.active(names[0]):
                yield
            return
        for name in distinct:
            self._check_loaded(name)
        with self._engine.lock:
            _set_disabled(self._peft, False)
            self._active = MIXED
            peft_names = ["__base__" if n == BASE else n for n in names]
            try:
                with self._peft.base_model._enable_peft_forward_hooks(adapter_names=peft_names):
                    yield
            finally:
                self._activate(BASE)

    def _activate(self, name: str) -> None:
        if self._peft is None:
            return
        if name == BASE:
            _set_disabled(self._peft, True)
        else:
            _set_disabled(self._peft, False)
            if self._active != name:
                self._peft.base_model.set_adapter(name)
        self._active = name


def _set_disabled(peft_model: Any, disabled: bool) -> None:
    """Switch every LoRA layer off/on (what PEFT's `disable_adapter()` context does),
    including modules_to_save wrappers (a trained head replacing the base one)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    for module in peft_model.base_model.model.modules():
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            module.enable_adapters(not disabled)


def _touches_vision(peft_model: Any, name: str, decoder: Any) -> bool:
    """Whether adapter `name` put LoRA layers anywhere but the decoder stack (vision tower,
    projector, merger: whatever its family calls them, e.g. Qwen's `visual`), which changes
    the image features and so needs its own feature-cache scope."""
    text_side = {id(m) for m in decoder.modules()}
    for module in peft_model.base_model.model.modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is not None and name in lora_a and id(module) not in text_side:
            return True
    return False
