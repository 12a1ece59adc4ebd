"""The model layer's numbers against direct transformers / open_clip computations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from selfreward_vlm.core.schemas import Usage
from selfreward_vlm.service.engine.decoding import GenerateItem, generate
from selfreward_vlm.service.engine.lm import ScoreItem
from selfreward_vlm.service.engine.loader import load_models
from selfreward_vlm.service.settings import ServiceSettings

PROMPT = "Describe the image."
CONTS = ["There is a red circle.", " blue", "A dog runs in the park. The sky is blue and green."]


def image(color: tuple[int, int, int] = (200, 20, 20)) -> Image.Image:
    img = Image.new("RGB", (40, 30), (240, 240, 240))
    img.paste(Image.new("RGB", (12, 12), color), (5, 5))
    return img


@pytest.fixture(scope="module")
def vlm(tiny_models: dict[str, Path]):
    return load_models(
        ServiceSettings(model=str(tiny_models["vlm"]), clip=str(tiny_models["clip"]))
    )


@pytest.fixture(scope="module")
def lm(tiny_models: dict[str, Path]):
    return load_models(ServiceSettings(model=str(tiny_models["lm"])))


def direct_logprobs(models, prompt: str, prefix: str, cont: str, img) -> list[float]:
    """Plain `model(**processor(...))` forward over prompt + prefix + continuation."""
    e = models.engine
    text = e.render_prompt(prompt, img is not None)
    if img is not None:
        enc = e.processor(text=text, images=img, return_tensors="pt")
        prompt_ids, extra = enc["input_ids"][0].tolist(), {"pixel_values": enc["pixel_values"]}
    else:
        prompt_ids, extra = e.tokenizer(text)["input_ids"], {}
    pre, ids = e.encode_text(prefix), e.encode_text(cont)
    with torch.no_grad():
        logits = e.hf(input_ids=torch.tensor([prompt_ids + pre + ids]), **extra).logits[0]
    lp = torch.log_softmax(logits.float(), -1)
    start = len(prompt_ids) + len(pre)
    return [float(lp[start - 1 + j, t]) for j, t in enumerate(ids)]


@pytest.mark.parametrize("prefix", ["", "There is"])
@pytest.mark.parametrize("with_image", [True, False])
def test_vlm_logprobs_match_direct_forward(vlm, prefix: str, with_image: bool) -> None:
    img = image() if with_image else None
    item = ScoreItem("base", PROMPT, CONTS, prefix, "img-a" if with_image else None, img)
    got = vlm.engine.score([item])[0]
    for cont, scored in zip(CONTS, got, strict=True):
        want = direct_logprobs(vlm, PROMPT, prefix, cont, img)
        assert len(want) == len(scored.token_logprobs) > 0
        assert scored.token_logprobs == pytest.approx(want, abs=1e-4)


def test_text_only_lm_logprobs_match_direct_forward(lm) -> None:
    item = ScoreItem("base", "Say something.", CONTS, "The")
    for cont, scored in zip(CONTS, lm.engine.score([item])[0], strict=True):
        assert scored.token_logprobs == pytest.approx(
            direct_logprobs(lm, "Say something.", "The", cont, None), abs=1e-4
        )


@pytest.mark.parametrize("cross", [True, False])
def test_batch_of_items_with_different_prefixes_matches_one_by_one(vlm, cross: bool) -> None:
    vlm.engine.cross_prefix_batching = cross
    items = [
        ScoreItem("base", PROMPT, CONTS[:2], "There is", "img-a", image()),
        ScoreItem("base", "What is shown?", CONTS[1:], "", "img-b", image((20, 20, 200))),
        ScoreItem("base", PROMPT, CONTS, "There is a red circle. There", "img-a", image()),
    ]
    together = vlm.engine.score(items)
    for item, got in zip(items, together, strict=True):
        alone = vlm.engine.score(
            [
                ScoreItem(
                    item.adapter, item.prompt, item.continuations, item.prefix, None, item.image
                )
            ]
        )[0]
        for a, b in zip(got, alone, strict=True):
            assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)


def test_prefix_cache_reuses_and_counts(vlm) -> None:
    e = vlm.engine
    e.prefix_cache.clear()
    first = ScoreItem("base", PROMPT, ["There is a red circle."], "", "img-c", image())
    e.score([first])
    assert first.usage.tokens_cached == 0 and first.usage.tokens_forwarded > 16
    second = ScoreItem("base", PROMPT, ["There is a red circle."], "There is a", "img-c", image())
    e.score([second])
    prompt_len = first.usage.tokens_forwarded - (first.usage.tokens_scored - 1)
    assert second.usage.tokens_cached == prompt_len  # only the prefix tokens were new
    assert second.usage.image_encodes == 0


def test_generate_logprobs_are_raw_and_rescore_equal(vlm) -> None:
    item = GenerateItem("base", PROMPT, image_id="img-a", image=image(), n=5, max_new_tokens=6)
    cands = generate(vlm.engine, item)
    assert len(cands) == 5
    for c in cands:
        scored = vlm.engine.score([ScoreItem("base", PROMPT, [""], "", "img-a", image())])
        del scored
        want = _rescore_ids(vlm, c.token_ids)
        assert c.token_logprobs == pytest.approx(want, abs=1e-4)


def _rescore_ids(models, ids: list[int]) -> list[float]:
    e = models.engine
    text = e.render_prompt(PROMPT, True)
    enc = e.processor(text=text, images=image(), return_tensors="pt")
    p = enc["input_ids"][0].tolist()
    with torch.no_grad():
        logits = e.hf(input_ids=torch.tensor([p + ids]), pixel_values=enc["pixel_values"]).logits[0]
    lp = torch.log_softmax(logits.float(), -1)
    return [float(lp[len(p) - 1 + j, t]) for j, t in enumerate(ids)]


def test_diverse_beam_penalty_zero_groups_equal_plain_beam(vlm) -> None:
    common = dict(image_id="img-a", image=image(), stop="eos", max_new_tokens=5)
    diverse = generate(
        vlm.engine,
        GenerateItem(
            "base",
            PROMPT,
            strategy="diverse_beam",
            n=4,
            num_beam_groups=2,
            diversity_penalty=0.0,
            **common,
        ),
    )
    plain = generate(vlm.engine, GenerateItem("base", PROMPT, strategy="beam", n=2, **common))
    assert [c.token_ids for c in diverse[:2]] == [c.token_ids for c in plain]
    assert [c.token_ids for c in diverse[2:]] == [c.token_ids for c in plain]


def test_diverse_beam_penalty_makes_first_tokens_differ(vlm) -> None:
    cands = generate(
        vlm.engine,
        GenerateItem(
            "base",
            PROMPT,
            image_id="img-a",
            image=image(),
            n=5,
            diversity_penalty=50.0,
            max_new_tokens=3,
        ),
    )
    assert len({c.token_ids[0] for c in cands}) == 5


def test_diverse_beam_matches_brute_force_reference(vlm) -> None:
    """Groups of one beam: group g is greedy on log p − penalty·(uses by groups < g at this step).
    Recomputed here token by token with full forwards (no cache, no search code)."""
    penalty, steps, groups = 1.5, 3, 3
    e = vlm.engine
    got = generate(
        e,
        GenerateItem(
            "base",
            PROMPT,
            image_id="img-a",
            image=image(),
            n=groups,
            diversity_penalty=penalty,
            stop="eos",
            max_new_tokens=steps,
        ),
    )
    seqs: list[list[int]] = [[] for _ in range(groups)]
    for _ in range(steps):
        used: dict[int, int] = {}
        for g in range(groups):
            logp = torch.tensor(_next_logprobs(vlm, seqs[g]))
            for tok, count in used.items():
                logp[tok] -= penalty * count
            for tok in e.never_generate:
                logp[tok] = -math.inf
            tok = int(logp.argmax())
            seqs[g].append(tok)
            used[tok] = used.get(tok, 0) + 1
    assert [c.token_ids for c in got] == seqs


def _next_logprobs(models, ids: list[int]) -> list[float]:
    e = models.engine
    enc = e.processor(text=e.render_prompt(PROMPT, True), images=image(), return_tensors="pt")
    full = torch.tensor([enc["input_ids"][0].tolist() + ids])
    with torch.no_grad():
        logits = e.hf(input_ids=full, pixel_values=enc["pixel_values"]).logits[0, -1]
    return torch.log_softmax(logits.float(), -1).tolist()


def test_sampling_is_reproducible_per_candidate(vlm) -> None:
    kw = dict(image_id="img-a", image=image(), strategy="sample", stop="eos", max_new_tokens=6)
    five = generate(vlm.engine, GenerateItem("base", PROMPT, n=5, seed=0, **kw))
    two = generate(vlm.engine, GenerateItem("base", PROMPT, n=2, seed=3, **kw))
    assert [c.token_ids for c in five[3:]] == [c.token_ids for c in two]


def test_clip_matches_open_clip(vlm, tiny_models) -> None:
    import open_clip

    name = f"local-dir:{tiny_models['clip']}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    tok = open_clip.get_tokenizer(name)
    texts = ["a red square", "a blue circle on a white background", "word " * 40]
    got = vlm.clip.cosines("img-a", image(), texts, Usage())
    with torch.no_grad():
        i = torch.nn.functional.normalize(model.encode_image(preprocess(image())[None]), dim=-1)
        t = torch.nn.functional.normalize(model.encode_text(tok(texts)), dim=-1)
    want = (i @ t.T)[0].tolist()
    assert [r.cosine for r in got] == pytest.approx(want, abs=1e-4)
    assert [r.truncated for r in got] == [False, False, True]


def test_naive_mode_gives_same_scores(tiny_models) -> None:
    naive = load_models(ServiceSettings(model=str(tiny_models["vlm"]), naive_mode=True))
    fast = load_models(ServiceSettings(model=str(tiny_models["vlm"])))
    for prefix in ["", "There is a", "There is a red circle. There"]:
        a = naive.engine.score([ScoreItem("base", PROMPT, CONTS, prefix, "i", image())])[0]
        b = fast.engine.score([ScoreItem("base", PROMPT, CONTS, prefix, "i", image())])[0]
        for x, y in zip(a, b, strict=True):
            assert x.token_logprobs == pytest.approx(y.token_logprobs, abs=1e-4)
    assert len(naive.engine.prefix_cache) == 0 and len(naive.engine.image_features) == 0


def test_cache_eviction_keeps_results_correct_and_bounded(tiny_models) -> None:
    settings = ServiceSettings(
        model=str(tiny_models["vlm"]),
        prefix_cache_size=2,
        prefix_cache_tokens=60,
        image_cache_size=1,
    )
    small = load_models(settings)
    colors = [(200, 20, 20), (20, 200, 20), (20, 20, 200)]
    for rnd in range(2):
        for k, color in enumerate(colors):
            for prefix in ["", "There is"]:
                item = ScoreItem("base", PROMPT, CONTS[:1], prefix, f"img{k}", image(color))
                got = small.engine.score([item])[0][0].token_logprobs
                want = direct_logprobs(small, PROMPT, prefix, CONTS[0], image(color))
                assert got == pytest.approx(want, abs=1e-4), (rnd, k, prefix)
                assert len(small.engine.prefix_cache) <= 2
                assert small.engine.prefix_cache.tokens <= 60
                assert len(small.engine.image_features) <= 1
