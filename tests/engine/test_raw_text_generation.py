"""Raw prompts (`GenerateItem.prompt_ids`, what `/v1/completions` generates from) decode in the
scheduler's steps like every other generation; stop strings, per-token alternatives (`top_k`),
the exact-token stop and one-token candidates drawn from a scoring forward.

Independent references: the model's own forward over prompt + answer (`forward_logprobs`) and
the engine's templated path for the same token ids."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from selfreward_vlm.service.engine import ragged
from selfreward_vlm.service.engine.batcher import Batcher
from selfreward_vlm.service.engine.decoding import GenerateItem, Generation, generate
from selfreward_vlm.service.engine.loader import load_models
from selfreward_vlm.service.engine.raw_text import TextScoreItem, score_text
from selfreward_vlm.service.errors import InvalidRequestError
from selfreward_vlm.service.settings import ServiceSettings
from tests.engine.test_continuous_batching import (
    TOL,
    _serve,
    assert_same,
    clear_caches,
    mixed_items,
    run_together,
)
from tests.families_fixtures import FAMILIES, picture


def raw_twin(engine: Any, item: GenerateItem) -> GenerateItem:
    """`item` with its prompt rendered and tokenized by the caller, as a raw prompt."""
    prompt = engine.encode_prompt(item.prompt, item.image_id, item.image)
    inputs = engine.pixel_inputs(prompt, item.image) if prompt.has_image else {}
    ids = prompt.ids + engine.encode_text(item.prefix)
    fields = {k: v for k, v in vars(item).items() if k not in ("prompt", "prefix", "usage")}
    return GenerateItem(**{**fields, "prompt": "", "prompt_ids": ids, "prompt_inputs": inputs})


def model_logprobs(engine: Any, ids: list[int], inputs: dict[str, Any]) -> torch.Tensor:
    """(T, V) log-probs from the model's own forward (no engine code)."""
    from selfreward_vlm.service.engine.families.generic import GenericFamily

    with torch.inference_mode():
        return GenericFamily(engine.hf).full_logprobs(ids, inputs, len(ids))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_raw_prompt_decodes_as_its_templated_form_alone_and_together(
    family: str, family_engine
) -> None:
    """The same ids reach the same prefill: the same candidates, bit for bit alone, and
    within 1e-4 when raw and templated requests share decode steps."""
    engine = family_engine(family).engine
    try:
        templated = [generate(engine, item) for item in mixed_items()]
        raw = [generate(engine, raw_twin(engine, item)) for item in mixed_items()]
        for a, b in zip(templated, raw, strict=True):
            assert [(x.token_ids, x.token_logprobs) for x in a] == [
                (y.token_ids, y.token_logprobs) for y in b
            ]
        engine.prefix_cache.clear()
        items = mixed_items()
        mixed = [raw_twin(engine, it) if k % 2 else it for k, it in enumerate(items)]
        assert_same(templated, run_together(engine, mixed))
    finally:
        clear_caches(engine)


@pytest.fixture(scope="module")
def lm(tiny_models: dict[str, Path]) -> Any:
    return load_models(ServiceSettings(model=str(tiny_models["lm"])))


def test_top_k_holds_the_models_own_alternatives(lm) -> None:
    engine = lm.engine
    ids = engine.encode_text("The quick brown fox")
    item = GenerateItem("base", "", prompt_ids=ids, strategy="greedy", n=1, stop="eos",
                        max_new_tokens=6, top_k=4)  # fmt: skip
    (g,) = generate(engine, item)
    assert len(g.top) == len(g.token_ids) == len(g.token_logprobs)
    logp = model_logprobs(engine, ids + g.token_ids, {})
    for i, (tok, lp, top) in enumerate(zip(g.token_ids, g.token_logprobs, g.top, strict=True)):
        row = logp[len(ids) - 1 + i]
        want_lp, want_ids = row.topk(4)
        assert [t for t, _ in top] == want_ids.tolist()
        assert [v for _, v in top] == pytest.approx(want_lp.tolist(), abs=TOL)
        assert top[0][0] == tok and top[0][1] == pytest.approx(lp, abs=1e-6)  # greedy


def test_a_stop_string_ends_a_candidate_where_its_text_first_holds_it(lm) -> None:
    engine = lm.engine
    ids = engine.encode_text("Once upon a time")
    base = {"prompt_ids": ids, "strategy": "greedy", "n": 1, "stop": "eos"}
    (free,) = generate(engine, GenerateItem("base", "", max_new_tokens=12, **base))
    text = engine.decode(free.token_ids)
    assert len(text) > 6, text
    # A stop string that spans tokens: found only in decoded text, never in one token's.
    stop = text[3:6]
    want = next(k for k in range(1, 13) if stop in engine.decode(free.token_ids[:k]))
    item = GenerateItem("base", "", max_new_tokens=12, stop_strings=(stop, "\x00"), **base)
    (cut,) = generate(engine, item)
    assert cut.stop_reason == "stop"
    assert cut.token_ids == free.token_ids[:want]
    sampled = {"prompt_ids": ids, "strategy": "sample", "n": 3, "seed": 5, "stop": "eos"}
    a = generate(engine, GenerateItem("base", "", max_new_tokens=8, **sampled))
    b = generate(engine, GenerateItem("base", "", max_new_tokens=8, top_k=2, **sampled))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]  # top_k changes no draw


def test_the_token_stop_mode_is_the_delimiter_token_alone() -> None:
    """stop='token' ends at the token that IS the delimiter (and EOS); 'sentence' also at
    every token whose text holds it."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from selfreward_vlm.service.engine.lm import LanguageEngine

    vocab = {"<eos>": 0, "a": 1, ".": 2, "▁.": 3, ".\n": 4, "...": 5, "b": 6}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="a")), eos_token="<eos>"
    )
    engine = type("E", (), {"tokenizer": tok, "eos_token_id": 0, "_stop_sets": {}})()
    assert LanguageEngine.stop_token_ids(engine, "token", ".") == {0, 2}  # type: ignore[arg-type]
    assert LanguageEngine.stop_token_ids(engine, "sentence", ".") == {0, 2, 3, 4, 5}  # type: ignore[arg-type]
    assert LanguageEngine.stop_token_ids(engine, "eos", ".") == {0}  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError) as err:
        LanguageEngine.stop_token_ids(engine, "token", "zz")  # type: ignore[arg-type]
    assert err.value.field == "stop_text"


def test_one_token_candidates_from_a_scoring_forward_are_decodings_first_step(lm) -> None:
    engine = lm.engine
    ids = engine.encode_text("Once upon a time there was")
    for strategy, seed in (("greedy", None), ("sample", 9)):
        item = GenerateItem("base", "", prompt_ids=ids, strategy=strategy, n=3, seed=seed,
                            stop="eos", max_new_tokens=1, top_k=2)  # fmt: skip
        want = generate(engine, item)
        scores = score_text(engine, TextScoreItem("base", ids, top_k=2, first=item))
        assert [g.token_ids for g in scores.choices] == [g.token_ids for g in want]
        for g, w in zip(scores.choices, want, strict=True):
            assert g.token_logprobs == pytest.approx(w.token_logprobs, abs=TOL)
            assert [t for t, _ in g.top[0]] == [t for t, _ in w.top[0]]
        logp = model_logprobs(engine, ids, {})
        picked = logp[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        assert scores.logprobs == pytest.approx(picked.tolist(), abs=1e-6)


def test_the_scheduler_steps_raw_and_templated_generations_together(tiny_models) -> None:
    models = load_models(ServiceSettings(model=str(tiny_models["vlm"])))
    engine = models.engine
    alone = [generate(engine, item) for item in mixed_items()]
    engine.prefix_cache.clear()
    items = [raw_twin(engine, it) if k % 2 else it for k, it in enumerate(mixed_items())]
    results, batcher = _serve(models, ServiceSettings(model=str(tiny_models["vlm"])), items)
    assert_same(alone, [r for r, _ in results])
    assert max(batcher.step_rows) > max(len(a) for a in alone)  # requests shared steps


# ------------------------------------------------------------------ chunked prefill


def long_items(engine: Any) -> list[GenerateItem]:
    """A text prompt and an image prompt, each with a long prefix to prefill."""
    prefix = " There is a red square and a green circle on a white table, next to a cup." * 3
    red = picture((32, 32))
    return [
        GenerateItem("base", "Describe the image in detail.", prefix=prefix, strategy="beam",
                     n=3, max_new_tokens=6),
        GenerateItem("base", "Describe the image.", prefix=prefix, image_id="red-chunk",
                     image=red, strategy="sample", n=2, seed=4, max_new_tokens=6),
    ]  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_a_prompt_prefilled_in_chunks_gives_what_it_gives_whole(family: str, family_engine) -> None:
    engine = family_engine(family).engine
    try:
        whole = [generate(engine, item) for item in long_items(engine)]
        engine.prefix_cache.clear()
        chunked = []
        with torch.inference_mode(), engine.lock:
            for item in long_items(engine):
                gen = Generation(engine, item, batched=True, prefill_chunk=7)
                chunks = 1
                while gen.prefilling:
                    assert gen.pending is None and gen.prefill(7) <= 7
                    chunks += 1
                assert chunks > 3  # the prefix went in several pieces
                while gen.pending is not None:
                    (logp,) = ragged.decode_step(engine, [gen])
                    gen.advance(logp)
                chunked.append(gen.result)
        assert_same(whole, chunked)
    finally:
        clear_caches(engine)


def test_the_scheduler_steps_running_generations_between_prefill_chunks(
    tiny_models, monkeypatch
) -> None:
    """A long prompt joins in chunks of `max_prefill_tokens_per_step`; the generation already
    running takes decode steps in between, and both get what they get alone."""
    models = load_models(ServiceSettings(model=str(tiny_models["vlm"])))
    engine = models.engine
    running = GenerateItem("base", "Say more.", strategy="greedy", n=1, max_new_tokens=40,
                           stop="eos")  # fmt: skip
    items = [running, long_items(engine)[0]]
    alone = [generate(engine, item) for item in items]
    engine.prefix_cache.clear()
    steps_at_chunk: list[int] = []
    batcher_ref: list[Any] = []
    real = Generation.prefill

    def spy(self: Generation, limit: int | None) -> int:
        if self.item is items[1]:
            steps_at_chunk.append(len(batcher_ref[0].step_rows))
        return real(self, limit)

    monkeypatch.setattr(Generation, "prefill", spy)
    settings = ServiceSettings(model=str(tiny_models["vlm"]), max_prefill_tokens_per_step=8)

    async def run() -> list[Any]:
        batcher = Batcher(models, settings)
        batcher_ref.append(batcher)
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(items[0]))
            while not batcher.step_rows:  # the first generation is decoding
                await asyncio.sleep(0.001)
            second = asyncio.ensure_future(batcher.submit(items[1]))
            return [await first, await second]
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert_same(alone, [r for r, _ in results])
    assert len(steps_at_chunk) > 5  # the long prompt went in chunks of 8 tokens
    # with the running generation's decode steps between them (one per chunk)
    assert len(set(steps_at_chunk)) == len(steps_at_chunk), steps_at_chunk
    assert len(results[0][0][0].token_ids) > len(steps_at_chunk)
