"""Fixtures and an independent reference for the per-family tests: every family's tiny model
(built once per session), engines on both paths, LoRA adapters, and the model's own plain
forward on `processor(text, images)` that the service must reproduce."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from selfreward_vlm.tiny import FAMILY_BUILDERS, build_family

FAMILIES = list(FAMILY_BUILDERS)
PROMPT = "Describe the image."
# Two geometries: 32x32 (one tile / 4x4 grid) and 64x24 (more tiles, another grid).
SIZES = [(32, 32), (64, 24)]
# LoRA on attention projections of the decoder AND the vision tower (Qwen's is `qkv`).
LORA_TARGETS = r".*(q_proj|v_proj|qkv)$"


def picture(size: tuple[int, int], color: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    img = Image.new("RGB", size, (240, 240, 240))
    img.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), color), (2, 2))
    return img


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {f: build_family(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="session")
def family_adapters(
    family_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A random (B != 0) LoRA per family, touching decoder and vision tower."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    root = tmp_path_factory.mktemp("family-adapters")
    out = {}
    for family, path in family_dirs.items():
        torch.manual_seed(1)
        model = AutoModelForImageTextToText.from_pretrained(path)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False)
        peft = get_peft_model(model, config)
        peft.save_pretrained(root / family)
        out[family] = root / family
    return out


@pytest.fixture(scope="session")
def family_engine(family_dirs: dict[str, Path]) -> Callable[..., Any]:
    """`family_engine(family, path="auto", naive=False)` -> Models (memoised per session)."""
    from selfreward_vlm.service.engine.loader import load_models
    from selfreward_vlm.service.settings import ServiceSettings

    memo: dict[tuple[str, str, bool], Any] = {}

    def get(family: str, path: str = "auto", naive: bool = False) -> Any:
        key = (family, path, naive)
        if key not in memo:
            settings = ServiceSettings(
                model=str(family_dirs[family]), device="cpu", model_path=path, naive_mode=naive
            )
            memo[key] = load_models(settings)
        return memo[key]

    return get


def render(processor: Any, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def own_forward_logprobs(
    model: Any, processor: Any, image: Image.Image, prefix: str, cont: str, prompt: str = PROMPT
) -> list[float]:
    """Log-probs of `cont`'s tokens from the model's forward on transformers' own
    `processor.apply_chat_template(..., tokenize=True)` (its BOS rule included) over the prompt
    followed by prefix and continuation tokens (per-token inputs extended as text)."""
    import torch

    content = [{"type": "image", "image": image}, {"type": "text", "text": prompt}]
    enc = processor.apply_chat_template(
        [{"role": "user", "content": content}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
    )  # fmt: skip
    tok = processor.tokenizer
    prompt_ids = enc["input_ids"][0].tolist()
    pre = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    ids = prompt_ids + pre + tok(cont, add_special_tokens=False)["input_ids"]
    kwargs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in kwargs:
            kwargs[key] = torch.nn.functional.pad(kwargs[key], (0, len(ids) - len(prompt_ids)))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), **kwargs).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    start = len(prompt_ids) + len(pre)
    return [float(logp[i - 1, ids[i]]) for i in range(start, len(ids))]


@pytest.fixture(scope="session")
def reference_model(
    family_dirs: dict[str, Path], family_adapters: dict[str, Path]
) -> Callable[[str, bool], Any]:
    """`reference_model(family, with_adapter)` -> (model, processor), loaded independently of
    the service (PEFT's own `PeftModel.from_pretrained` for the adapter)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    memo: dict[tuple[str, bool], Any] = {}

    def get(family: str, with_adapter: bool = False) -> Any:
        if (family, with_adapter) not in memo:
            model = AutoModelForImageTextToText.from_pretrained(family_dirs[family]).eval()
            if with_adapter:
                model = PeftModel.from_pretrained(model, family_adapters[family]).eval()
            memo[family, with_adapter] = (model, AutoProcessor.from_pretrained(family_dirs[family]))
        return memo[family, with_adapter]

    return get
