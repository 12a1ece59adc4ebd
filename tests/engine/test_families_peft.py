"""Adapters that replace whole modules: LoRA on `lm_head` / `embed_tokens` and a
`modules_to_save` head. PEFT swaps those modules for wrappers on their parent after the engine
is built, so the fast path must reach them through the model on every call (review of issue 9,
finding 1): its log-probs and greedy tokens equal the PeftModel's own forward / generate, and
`base` still equals the plain model while such an adapter is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from selfreward_vlm.service.engine.decoding import GenerateItem, generate
from selfreward_vlm.service.engine.lm import ScoreItem
from tests.families_fixtures import PROMPT, own_forward_logprobs, picture, render

FAMILY = "llava"
CONTS = [" The cat sits on the mat.", " A dog runs."]
# LoRA on the decoder's attention plus both embedding layers (lm_head, embed_tokens).
HEADS = r".*language_model.*(q_proj|v_proj)$|.*lm_head|.*embed_tokens"


def _save_adapters(model_dir: Path, root: Path) -> dict[str, Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    out = {}
    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=HEADS, init_lora_weights=False)
    get_peft_model(AutoModelForImageTextToText.from_pretrained(model_dir), config).save_pretrained(
        root / "heads"
    )
    out["heads"] = root / "heads"
    config = LoraConfig(
        r=4, target_modules=r".*language_model.*q_proj$", modules_to_save=["lm_head"],
        init_lora_weights=False,
    )  # fmt: skip
    peft = get_peft_model(AutoModelForImageTextToText.from_pretrained(model_dir), config)
    with torch.no_grad():  # a trained head differs from the base one
        for name, param in peft.named_parameters():
            if "modules_to_save" in name:
                param.add_(0.5 * torch.randn_like(param))
    peft.save_pretrained(root / "saved")
    out["saved"] = root / "saved"
    return out


@pytest.fixture(scope="module")
def setup(family_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(engine per adapter, reference model per adapter and "base", processor). One engine
    each: PEFT cannot put a modules_to_save wrapper over another adapter's LoRA head."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from selfreward_vlm.service.engine.loader import load_models
    from selfreward_vlm.service.settings import ServiceSettings

    model_dir = family_dirs[FAMILY]
    adapters = _save_adapters(model_dir, tmp_path_factory.mktemp("peft-heads"))
    engines, refs = {}, {"base": AutoModelForImageTextToText.from_pretrained(model_dir).eval()}
    for name, path in adapters.items():
        engines[name] = load_models(ServiceSettings(model=str(model_dir), device="cpu")).engine
        engines[name].adapters.load(name, path, source="startup")
        assert engines[name].path == "fast"
        base = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
        refs[name] = PeftModel.from_pretrained(base, path).eval()
    return engines, refs, AutoProcessor.from_pretrained(model_dir)


@pytest.mark.parametrize("adapter", ["heads", "saved"])
def test_module_replacing_adapter_logprobs_equal_peft_forward(setup, adapter) -> None:
    """The adapter's scores equal the PeftModel's forward; `base` on the same engine equals the
    plain model (the wrappers are switched off, modules_to_save included)."""
    engines, refs, processor = setup
    img = picture((32, 32))
    for name in (adapter, "base", adapter):
        for prefix in ("", "There is a red square."):
            item = ScoreItem(name, PROMPT, CONTS, prefix, "peft-img", img)
            got = engines[adapter].score([item])[0]
            for cont, scored in zip(CONTS, got, strict=True):
                want = own_forward_logprobs(refs[name], processor, img, prefix, cont)
                assert scored.token_logprobs == pytest.approx(want, abs=1e-4), (name, prefix)


@pytest.mark.parametrize("adapter", ["heads", "saved"])
def test_module_replacing_adapter_greedy_equals_peft_generate(setup, adapter) -> None:
    engines, refs, processor = setup
    engine = engines[adapter]
    img = picture((32, 32), (30, 30, 200))
    enc = processor(text=render(processor, PROMPT), images=img, return_tensors="pt")
    tok = processor.tokenizer
    with torch.no_grad():
        out = refs[adapter].generate(
            **enc, max_new_tokens=8, do_sample=False, suppress_tokens=engine.never_generate,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    want = out[0, enc["input_ids"].shape[1] :].tolist()
    item = GenerateItem(
        adapter, PROMPT, image_id="peft-gen", image=img, strategy="greedy", n=1, stop="eos",
        max_new_tokens=8,
    )  # fmt: skip
    assert generate(engine, item)[0].token_ids == want
