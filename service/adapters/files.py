"""Validation of uploaded LoRA adapter files, before anything is stored or loaded.

- `adapter_config.json`: a JSON object with `peft_type == "LORA"`, whose `target_modules`
  match modules of the served model;
- `adapter_model.safetensors`: a header that tells the truth (each tensor's byte range is its
  dtype × shape, the ranges tile the data exactly), with LoRA matrices that fit the served
  model's layers (an adapter trained on another base model is refused).

Every refusal is a 422 `invalid_adapter` naming the file (or `adapter_config.json.target_modules`).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from selfreward_vlm.service.errors import InvalidRequestError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_MAX_HEADER_BYTES = 100 * 2**20


class InvalidAdapterError(InvalidRequestError):
    """The uploaded files are not a loadable PEFT LoRA adapter."""

    type = "invalid_adapter"


def check_config(path: Path) -> dict[str, Any]:
    """The adapter config, if it is a JSON object describing a LoRA adapter."""
    try:
        config = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidAdapterError(f"{CONFIG_FILE} is not JSON: {e}", CONFIG_FILE) from None
    if not isinstance(config, dict):
        raise InvalidAdapterError(f"{CONFIG_FILE} must be a JSON object", CONFIG_FILE)
    if config.get("peft_type") != "LORA":
        raise InvalidAdapterError(
            f"only LoRA adapters are served (peft_type {config.get('peft_type')!r})", CONFIG_FILE
        )
    return config


def check_safetensors(path: Path) -> int:
    """Parse a safetensors header without loading tensors; returns the tensor count.

    Layout: 8-byte little-endian header length N, N bytes of JSON header, then the data;
    every tensor's `data_offsets` must lie inside the file.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        n = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if n < 2 or n > min(size - 8, _MAX_HEADER_BYTES):
            raise InvalidAdapterError(f"{WEIGHTS_FILE} is not a safetensors file", WEIGHTS_FILE)
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidAdapterError(f"{WEIGHTS_FILE} has a broken header", WEIGHTS_FILE) from None
    tensors = (
        {k: v for k, v in header.items() if k != "__metadata__"}
        if isinstance(header, dict)
        else None
    )
    if not tensors:
        raise InvalidAdapterError(f"{WEIGHTS_FILE} holds no tensors", WEIGHTS_FILE)
    data_size = size - 8 - n
    spans: list[tuple[int, int]] = []
    for key, meta in tensors.items():
        offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
        ok = (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size
            and isinstance(meta.get("dtype"), str)
            and isinstance(meta.get("shape"), list)
        )
        if not ok:
            raise InvalidAdapterError(f"{WEIGHTS_FILE}: bad entry for {key!r}", WEIGHTS_FILE)
        _check_tensor_size(key, meta)
        spans.append((meta["data_offsets"][0], meta["data_offsets"][1]))
    _check_tiling(sorted(spans), data_size)
    return len(tensors)


# Bytes per element of the safetensors dtypes.
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def _check_tensor_size(key: str, meta: dict[str, Any]) -> None:
    """A header that lies about a tensor's size (shape × dtype ≠ its byte range) is refused:
    loading it would read past the tensor or misplace every later one."""
    shape, dtype = meta["shape"], meta["dtype"]
    if dtype not in _DTYPE_BYTES:
        raise InvalidAdapterError(
            f"{WEIGHTS_FILE}: {key!r} has unknown dtype {dtype!r}", WEIGHTS_FILE
        )
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidAdapterError(f"{WEIGHTS_FILE}: {key!r} has a bad shape {shape}", WEIGHTS_FILE)
    want = math.prod(shape) * _DTYPE_BYTES[dtype]
    have = meta["data_offsets"][1] - meta["data_offsets"][0]
    if want != have:
        raise InvalidAdapterError(
            f"{WEIGHTS_FILE}: header says {key!r} is {dtype} {shape} = {want} bytes, but gives "
            f"it {have} bytes",
            WEIGHTS_FILE,
        )


def _check_tiling(spans: list[tuple[int, int]], data_size: int) -> None:
    """Tensors must tile the data block exactly: no overlap, no hole, nothing after them."""
    end = 0
    for start, stop in spans:
        if start != end:
            raise InvalidAdapterError(
                f"{WEIGHTS_FILE}: tensor byte ranges overlap or leave a hole at {end}", WEIGHTS_FILE
            )
        end = stop
    if end != data_size:
        raise InvalidAdapterError(
            f"{WEIGHTS_FILE}: {data_size - end} bytes after the last tensor", WEIGHTS_FILE
        )


def check_fits(staged: Path, models: Any) -> None:
    """The adapter must be for the served model: its `target_modules` match some of the
    model's modules, and every LoRA matrix fits the layer it adapts (an adapter trained on
    another base model has other layer sizes). Skipped for models without a torch module
    (test fakes)."""
    hf = getattr(getattr(models, "engine", None), "hf", None)
    if hf is None:
        return
    config = check_config(staged / CONFIG_FILE)
    modules = {name: module for name, module in hf.named_modules() if name}
    _check_targets(config.get("target_modules"), list(modules))
    header = _read_header(staged / WEIGHTS_FILE)
    for key, meta in header.items():
        m = re.match(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
        if m is None or not isinstance(meta, dict):
            continue
        layer = _find_layer(modules, m.group(1))
        if layer is None:
            raise InvalidAdapterError(
                f"{WEIGHTS_FILE}: {key!r} adapts {m.group(1)!r}, which the served model lacks "
                f"(adapter for base model {config.get('base_model_name_or_path')!r}?)",
                WEIGHTS_FILE,
            )
        shape = meta.get("shape") or []
        size_in, size_out = _layer_sizes(layer)
        fits = len(shape) == 2 and (
            (m.group(2) == "A" and size_in in (None, shape[1]))
            or (m.group(2) == "B" and size_out in (None, shape[0]))
        )
        if not fits:
            raise InvalidAdapterError(
                f"{WEIGHTS_FILE}: {key!r} has shape {shape}, which does not fit the served "
                f"model's layer ({size_in} in, {size_out} out): an adapter for another base "
                f"model ({config.get('base_model_name_or_path')!r})?",
                WEIGHTS_FILE,
            )


def _check_targets(targets: Any, names: list[str]) -> None:
    field = f"{CONFIG_FILE}.target_modules"
    if targets is None:
        return
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as e:
            raise InvalidAdapterError(f"target_modules is not a regex: {e}", field) from None
        hit = any(pattern.fullmatch(n) for n in names)
    elif isinstance(targets, list) and all(isinstance(t, str) for t in targets):
        hit = any(n == t or n.endswith("." + t) for n in names for t in targets)
        hit = hit or targets == ["all-linear"]
    else:
        raise InvalidAdapterError("target_modules must be a string or a list of names", field)
    if not hit:
        raise InvalidAdapterError(
            f"target_modules {targets!r} matches no module of the served model", field
        )


def _find_layer(modules: dict[str, Any], path: str) -> Any:
    """The model's module at a LoRA key's path (PEFT may have wrapped it: `.base_layer`)."""
    for name in (path, f"{path}.base_layer"):
        if name in modules:
            layer = modules[name]
            return getattr(layer, "base_layer", layer)
    return None


def _layer_sizes(layer: Any) -> tuple[int | None, int | None]:
    """(in, out) features of a Linear-like layer; None where the layer does not say."""
    size_in = getattr(layer, "in_features", None) or getattr(layer, "num_embeddings", None)
    size_out = getattr(layer, "out_features", None) or getattr(layer, "embedding_dim", None)
    return size_in, size_out


def _read_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


def fsync_dir(path: Path) -> None:
    """Make a rename (or new files) in `path` durable; harmless where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
