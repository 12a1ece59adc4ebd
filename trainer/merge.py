"""Merge + fresh LoRA per iteration (the `merge_adapter` loop lever; the `official` preset's).

The released CSR code iterates by merging (README "Step 3. Iterative Learning": merge the LoRA
checkpoint with `merge_lora_weights.py`, use the merged checkpoint as the base model, and run
sampling and training again): iteration t trains a fresh LoRA on M_{t−1} = base + Δ_1 + … +
Δ_{t−1}, with M_{t−1} as its DPO reference.

The service serves one base model with named adapters, so policy t reaches it as one stacked
LoRA whose update is the sum of every iteration's: with Δ_i = s_i·B_i·A_i (s_i = α_i/r_i),
A = [A_1; …; A_t] (rows stacked), B = [s_1·B_1, …, s_t·B_t] (columns) and α = r = Σ r_i give
B·A = Σ s_i·B_i·A_i exactly. The trainer gets M_{t−1} as a model folder: the base with the
stacked adapter t−1 merged into its weights (`merged_model`). Both are the same function as the
official merged checkpoint, up to float rounding.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


class StackError(ValueError):
    """Adapters that cannot be stacked into one LoRA (different targets or layouts)."""


def _check_stackable(configs: list[dict[str, Any]]) -> None:
    first = configs[0]
    for cfg in configs:
        for key in ("rank_pattern", "alpha_pattern", "modules_to_save"):
            if cfg.get(key):
                raise StackError(f"cannot stack adapters with {key} set ({cfg[key]!r})")
        if cfg.get("use_rslora") or cfg.get("use_dora"):
            raise StackError("cannot stack rsLoRA or DoRA adapters")
        # base_model_name_or_path differs by design: a fresh LoRA was trained on a merged model
        for key in ("target_modules", "task_type"):
            if _canonical(cfg.get(key)) != _canonical(first.get(key)):
                raise StackError(f"adapters differ in {key}: {cfg.get(key)!r}, {first.get(key)!r}")


def _canonical(value: Any) -> Any:
    """target_modules as PEFT saves them: a list in set order, or one regex string."""
    return sorted(value) if isinstance(value, list) else value


def stack_adapters(adapters: list[Path], out: Path) -> Path:
    """One LoRA whose update is the sum of `adapters`' updates (module doc); written atomically
    to `out` (adapter_config.json + adapter_model.safetensors)."""
    import torch
    from safetensors.torch import load_file, save_file

    if not adapters:
        raise StackError("nothing to stack")
    configs = [json.loads((Path(a) / CONFIG).read_text()) for a in adapters]
    _check_stackable(configs)
    tensors = [load_file(str(Path(a) / WEIGHTS)) for a in adapters]
    keys = set(tensors[0])
    if any(set(t) != keys for t in tensors):
        raise StackError("adapters wrap different modules")
    scales = [float(c["lora_alpha"]) / float(c["r"]) for c in configs]
    stacked: dict[str, torch.Tensor] = {}
    for key in sorted(keys):
        if ".lora_A." in key:  # (r_i, in) -> (Σ r_i, in)
            stacked[key] = torch.cat([t[key] for t in tensors], dim=0).contiguous()
        elif ".lora_B." in key:  # (out, r_i) -> (out, Σ r_i), scale folded in
            parts = [t[key].float() * s for t, s in zip(tensors, scales, strict=True)]
            stacked[key] = torch.cat(parts, dim=1).to(tensors[0][key].dtype).contiguous()
        else:
            raise StackError(f"cannot stack weight {key!r}: only lora_A/lora_B are supported")
    rank = sum(int(c["r"]) for c in configs)
    config = {**configs[-1], "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
              "base_model_name_or_path": configs[0].get("base_model_name_or_path")}  # fmt: skip
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(stacked, str(tmp / WEIGHTS))
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def merged_model(model: str, adapter: Path, out: Path) -> Path:
    """A model folder: `model` (hub id or folder) with `adapter` merged into its weights, and
    its processor or tokenizer; written once (an existing complete folder is reused)."""
    import torch
    from peft import PeftModel
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    if (out / ".complete").exists():
        return out
    is_vlm = hasattr(AutoConfig.from_pretrained(model), "vision_config")
    loader = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    base = loader.from_pretrained(model, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp))
    (AutoProcessor if is_vlm else AutoTokenizer).from_pretrained(model).save_pretrained(str(tmp))
    (tmp / ".complete").write_text(str(adapter))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
