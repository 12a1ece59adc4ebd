"""Loading the base model, the trainable LoRA policy and the reference adapter.

The reference is always the same base weights with different adapters, so it costs no second
model in memory:
- `reference="base"`: adapters disabled (PEFT's implicit reference);
- `reference=DIR`: that LoRA loaded, frozen, as adapter "ref", which TRL's DPOTrainer switches
  to for the reference forward (`use_adapter(model, "ref")`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfreward_vlm.trainer.config import LM_LORA_TARGETS, VLM_LORA_TARGETS, DPOTrainConfig

REF_ADAPTER = "ref"  # the name TRL 1.16 DPOTrainer looks for


def resolve_bf16(config: DPOTrainConfig) -> bool:
    """bf16 mixed precision where CUDA supports it; never on CPU (TRL's default fails there)."""
    import torch

    if config.device == "cpu" or not torch.cuda.is_available():
        return False
    if config.bf16 is not None:
        return config.bf16
    return bool(torch.cuda.is_bf16_supported())


def load_base(config: DPOTrainConfig) -> tuple[Any, Any, bool]:
    """(model, processing class, is_vlm) from a hub id or a local directory."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    is_vlm = hasattr(AutoConfig.from_pretrained(config.model), "vision_config")
    # bf16 weights halve memory on a GPU box; LoRA weights stay fp32 (PEFT upcasts adapters)
    dtype = torch.bfloat16 if resolve_bf16(config) else torch.float32
    if is_vlm:
        model = AutoModelForImageTextToText.from_pretrained(config.model, dtype=dtype)
        processing_class = AutoProcessor.from_pretrained(config.model)
    else:
        model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype)
        processing_class = AutoTokenizer.from_pretrained(config.model)
    return model, processing_class, is_vlm


def decoder_lora_targets(model: Any) -> str:
    """The paper's "all linear layers of the language model" for any VLM family: the linear
    projections under the module `get_decoder()` returns, wherever the family puts it
    (`model.language_model` for LLaVA/Qwen/Gemma 3, `model.text_model` for Idefics3/SmolVLM)."""
    import re

    decoder = model.get_decoder()
    path = next((name for name, mod in model.named_modules() if mod is decoder), None)
    if not path:
        return VLM_LORA_TARGETS
    linear = "(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    return rf"(.*\.)?{re.escape(path)}\..*\.{linear}"


def lora_config(config: DPOTrainConfig, is_vlm: bool, model: Any = None) -> Any:
    from peft import LoraConfig

    vlm_targets = VLM_LORA_TARGETS if model is None else decoder_lora_targets(model)
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules or (vlm_targets if is_vlm else LM_LORA_TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_policy(base: Any, config: DPOTrainConfig, is_vlm: bool) -> Any:
    """A fresh LoRA (B = 0, so policy == base at step 0) or `init_adapter`, trainable."""
    from peft import PeftModel, get_peft_model
    from transformers import set_seed

    set_seed(config.seed)  # LoRA A is random: seed it for reproducible runs
    if config.init_adapter:
        return PeftModel.from_pretrained(base, config.init_adapter, is_trainable=True)
    return get_peft_model(base, lora_config(config, is_vlm, base))


def same_path(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def setup_reference(policy: Any, config: DPOTrainConfig, service_reference: bool) -> str:
    """Make adapter "ref" the configured reference (call after DPOTrainer's __init__).

    TRL copies a PEFT policy's own adapter into "ref"; that is right only when the reference
    is the adapter training starts from. Returns a description for the summary.
    """
    from trl.trainer.utils import disable_dropout_in_model

    has_ref = REF_ADAPTER in policy.peft_config
    keep_copy = same_path(config.reference, config.init_adapter) and not service_reference
    if has_ref and not keep_copy:
        policy.delete_adapter(REF_ADAPTER)
    if service_reference:
        description = f"service:{config.reference_name}"
    elif config.reference == "base":
        description = "base (adapters disabled)"
    elif keep_copy:
        description = f"{config.reference} (copy of the initial adapter)"
    else:
        policy.load_adapter(config.reference, adapter_name=REF_ADAPTER, is_trainable=False)
        description = config.reference
    policy.set_adapter("default")
    for name, param in policy.named_parameters():
        if f".{REF_ADAPTER}." in name:
            param.requires_grad_(False)
    if config.disable_dropout:
        disable_dropout_in_model(policy)  # a freshly loaded "ref" brings its LoRA dropout back
    _reference_without_dropout(policy)
    return description


def _reference_without_dropout(policy: Any) -> None:
    """The reference forward runs in train mode: its LoRA dropout would make it random."""
    import torch

    for module in policy.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict) and REF_ADAPTER in dropouts:
            dropouts[REF_ADAPTER] = torch.nn.Identity()


def save_adapter(policy: Any, out_dir: str | Path) -> Path:
    """adapter_config.json + adapter_model.safetensors of the trained adapter, nothing else."""
    import shutil
    import tempfile

    out = Path(out_dir)
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        policy.save_pretrained(tmp, selected_adapters=["default"], safe_serialization=True)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(Path(tmp) / name, out / name)
    return out
