"""A tokenizer that adds BOS under a chat template that already writes `{{ bos_token }}`
(real Gemma 3 / Idefics3 checkpoints; the tiny ones add none): service, generic path and
collator tokenize the prompt as transformers' own `processor.apply_chat_template(...,
tokenize=True)` does -- one BOS, not two (review of issue 9, finding 2)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from selfreward_vlm.service.engine.lm import ScoreItem
from selfreward_vlm.trainer.collator import ServiceAlignedCollator
from tests.families_fixtures import PROMPT, own_forward_logprobs, picture, render

CONT = " The cat sits on the mat."


@pytest.fixture(scope="module")
def bos_model(family_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Gemma 3 whose tokenizer's post-processor prepends `<bos>` (as the real one)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoProcessor

    out = tmp_path_factory.mktemp("bos") / "gemma3"
    shutil.copytree(family_dirs["gemma3"], out)
    processor = AutoProcessor.from_pretrained(out)
    tok = processor.tokenizer
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", tok.bos_token_id)]
    )
    processor.save_pretrained(out)
    return out


def _own_template_ids(processor: Any, content: list[dict[str, Any]]) -> list[int]:
    enc = processor.apply_chat_template(
        [{"role": "user", "content": content}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
    )  # fmt: skip
    return list(enc["input_ids"][0].tolist())


def test_prompt_has_one_bos_as_apply_chat_template(bos_model: Path) -> None:
    from transformers import AutoProcessor

    from selfreward_vlm.service.engine.loader import load_models
    from selfreward_vlm.service.settings import ServiceSettings

    processor = AutoProcessor.from_pretrained(bos_model)
    bos, img = processor.tokenizer.bos_token_id, picture((32, 32))
    # The hazard is real here: the rendered text through the processor's defaults has two.
    assert processor(text=render(processor, PROMPT), images=img)["input_ids"][0][:2] == [bos] * 2
    text = [{"type": "text", "text": PROMPT}]
    want_img = _own_template_ids(processor, [{"type": "image", "image": img}, *text])
    want_txt = _own_template_ids(processor, text)
    assert want_img[:2] == [bos, want_img[1]] != [bos, bos] and want_txt[0] == bos
    engine = load_models(ServiceSettings(model=str(bos_model), device="cpu")).engine
    prompt = engine.encode_prompt(PROMPT, "bos-img", img)
    assert prompt.ids == want_img
    assert engine.encode_prompt(PROMPT, None, None).ids == want_txt
    # Pixels re-run through the processor after the cache dropped them: same token count.
    types = engine.pixel_inputs(prompt.light(), img)["token_type_ids"]
    assert types.shape[-1] == len(want_img)
    collator = ServiceAlignedCollator(processor)
    assert collator.encode_prompt(PROMPT, [img])[0] == want_img
    assert collator.encode_prompt(PROMPT, [])[0] == want_txt


@pytest.mark.parametrize("path", ["auto", "generic"])
def test_bos_adding_tokenizer_scores_equal_own_forward(bos_model: Path, path: str) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from selfreward_vlm.service.engine.loader import load_models
    from selfreward_vlm.service.settings import ServiceSettings

    processor = AutoProcessor.from_pretrained(bos_model)
    model = AutoModelForImageTextToText.from_pretrained(bos_model).eval()
    engine = load_models(ServiceSettings(model=str(bos_model), device="cpu", model_path=path))
    img = picture((64, 24))
    got = engine.engine.score([ScoreItem("base", PROMPT, [CONT], "", "bos-score", img)])[0][0]
    want = own_forward_logprobs(model, processor, img, "", CONT)
    assert got.token_logprobs == pytest.approx(want, abs=1e-4)
