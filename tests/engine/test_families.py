"""Every model family's numbers against the model's own transformers forward / generate.

For each family's tiny model (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, Idefics3, SmolVLM, Gemma 3): the service's per-token log-probs equal
`model(**processor(text, images))` to 1e-4 on the fast path, the generic path and the naive
baseline -- with and without prefix, two image sizes, base and a LoRA adapter that touches
decoder AND vision tower, and again after cache hits; greedy generation equals
`model.generate`; every strategy's candidates carry the model's raw log-probs.
"""

from __future__ import annotations

import pytest
import torch

from selfreward_vlm.service.engine.decoding import GenerateItem, generate
from selfreward_vlm.service.engine.lm import ScoreItem
from tests.families_fixtures import (
    FAMILIES,
    PROMPT,
    SIZES,
    own_forward_logprobs,
    picture,
    render,
)

CONTS = [" The cat sits on the mat.", " A dog runs."]
PREFIX = "There is a red circle."
EXPECTED_FAMILY = {
    "llava": "llava",
    "llava_next": "llava_next",
    "llava_onevision": "llava_next",
    "qwen2_vl": "qwen_vl",
    "qwen2_5_vl": "qwen_vl",
    "qwen3_vl": "qwen_vl",
    "idefics3": "idefics3",
    "smolvlm": "idefics3",
    "gemma3": "gemma3",
}


def _with_adapter(models, adapter_dir) -> None:
    if "a" not in models.engine.adapters.names():
        models.engine.adapters.load("a", adapter_dir, source="startup")


@pytest.mark.parametrize("family", FAMILIES)
def test_logprobs_equal_own_forward(
    family, family_engine, family_adapters, reference_model
) -> None:
    fast, generic = family_engine(family), family_engine(family, "generic")
    naive = family_engine(family, naive=True)
    assert fast.engine.family.name == EXPECTED_FAMILY[family]
    assert (fast.engine.path, generic.engine.path) == ("fast", "generic")
    for models in (fast, generic, naive):
        _with_adapter(models, family_adapters[family])
    geometries = set()
    for size in SIZES:
        img = picture(size)
        image_id = f"{family}-{size[0]}x{size[1]}"
        for prefix in ("", PREFIX):
            for adapter in ("base", "a"):
                model, processor = reference_model(family, adapter == "a")
                want = [own_forward_logprobs(model, processor, img, prefix, c) for c in CONTS]
                for models, repeats in ((fast, 2), (generic, 1), (naive, 1)):
                    for repeat in range(repeats):
                        item = ScoreItem(adapter, PROMPT, CONTS, prefix, image_id, img)
                        got = models.engine.score([item])[0]
                        for scored, w in zip(got, want, strict=True):
                            assert len(scored.token_logprobs) == len(w) > 0
                            assert scored.token_logprobs == pytest.approx(w, abs=1e-4), (
                                family, models.engine.path, size, prefix, adapter, repeat
                            )  # fmt: skip
                        if repeat:  # the second time: image, prompt and prefix all cached
                            assert item.usage.image_encodes == 0
                            assert item.usage.tokens_cached > 0
        geometries.add(len(fast.engine.encode_prompt(PROMPT, image_id, img).ids))
    # Cache keys: features per (vision scope, image, geometry): base and the vision-touching
    # adapter never share an entry, nor do the two sizes. (The engine is shared with other
    # tests: only this test's images count.)
    keys = [k for k, _ in fast.engine.image_features.items() if k[1].startswith(f"{family}-")]
    assert len(keys) == 4 and len({(k[0], k[1]) for k in keys}) == 4
    assert fast.engine.adapters.vision_scope() in {"*", *(k[0] for k in keys)}


@pytest.mark.parametrize("family", FAMILIES)
def test_image_features_reused_across_prompts(family, family_engine, reference_model) -> None:
    """A second prompt on the same image, and the same prompt after its prefix states were
    dropped, take the cached features (no second vision forward) and still score exactly."""
    engine = family_engine(family).engine
    model, processor = reference_model(family, False)
    img = picture(SIZES[1], (120, 40, 160))
    image_id = f"{family}-reuse"
    for k, prompt in enumerate((PROMPT, "What is in the picture?", PROMPT)):
        if k == 2:
            engine.prefix_cache.clear()
        item = ScoreItem("base", prompt, CONTS[:1], "", image_id, img)
        got = engine.score([item])[0][0]
        want = own_forward_logprobs(model, processor, img, "", CONTS[0], prompt=prompt)
        assert got.token_logprobs == pytest.approx(want, abs=1e-4)
        hits = (item.usage.image_cache_hits, item.usage.image_encodes)
        assert hits == ((0, 1) if k == 0 else (1, 0)), (family, k)


@pytest.mark.parametrize("family", FAMILIES)
def test_cross_prefix_batch_equals_own_forward(family, family_engine, reference_model) -> None:
    """One padded forward over rows after different prefix states (left-padded KV, explicit
    positions incl. the rope delta): what the service does on CUDA."""
    engine = family_engine(family).engine
    model, processor = reference_model(family, False)
    images = [picture(SIZES[0], (200, 200, 30)), picture(SIZES[1], (30, 200, 200))]
    items = [
        ScoreItem("base", PROMPT, CONTS, prefix, f"{family}-x{k}", img)
        for k, img in enumerate(images)
        for prefix in ("", PREFIX)
    ]
    engine.cross_prefix_batching = True
    try:
        got = engine.score(items)
    finally:
        engine.cross_prefix_batching = False
    for item, scored in zip(items, got, strict=True):
        for cont, s in zip(CONTS, scored, strict=True):
            want = own_forward_logprobs(model, processor, item.image, item.prefix, cont)
            assert s.token_logprobs == pytest.approx(want, abs=1e-4), (family, item.prefix)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_equals_model_generate(family, family_engine, reference_model) -> None:
    model, processor = reference_model(family, False)
    img = picture(SIZES[1], (30, 30, 200))
    enc = processor(text=render(processor, PROMPT), images=img, return_tensors="pt")
    engine = family_engine(family).engine
    tok = processor.tokenizer
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=10,
            do_sample=False,
            suppress_tokens=engine.never_generate,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    want = out[0, enc["input_ids"].shape[1] :].tolist()
    for path in ("auto", "generic"):
        engine = family_engine(family, path).engine
        item = GenerateItem(
            "base", PROMPT, image_id=f"{family}-gen", image=img, strategy="greedy", n=1,
            stop="eos", max_new_tokens=10,
        )  # fmt: skip
        got = generate(engine, item)[0]
        assert got.token_ids == want, (family, path)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_strategy_returns_the_models_raw_logprobs(
    family, family_engine, reference_model
) -> None:
    """Diverse beam, beam and sampling after a prefix: each candidate's token log-probs are the
    model's own raw log-softmax of those tokens (so a search never re-scores them)."""
    model, processor = reference_model(family, False)
    img = picture(SIZES[0], (30, 200, 30))
    enc = processor(text=render(processor, PROMPT), images=img, return_tensors="pt")
    engine = family_engine(family).engine
    prefix_ids = engine.encode_text(PREFIX)
    kwargs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    for strategy in ("diverse_beam", "beam", "sample"):
        item = GenerateItem(
            "base", PROMPT, prefix=PREFIX, image_id=f"{family}-strat", image=img,
            strategy=strategy, n=3, seed=0, stop="sentence", max_new_tokens=4,
        )  # fmt: skip
        for cand in generate(engine, item):
            ids = enc["input_ids"][0].tolist() + prefix_ids + cand.token_ids
            extra = dict(kwargs)
            for key in ("mm_token_type_ids", "token_type_ids"):
                if key in extra:
                    pad = len(ids) - extra[key].shape[1]
                    extra[key] = torch.nn.functional.pad(extra[key], (0, pad))
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids]), **extra).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            start = len(ids) - len(cand.token_ids)
            want = [float(logp[start + j - 1, t]) for j, t in enumerate(cand.token_ids)]
            assert cand.token_logprobs == pytest.approx(want, abs=1e-4), (family, strategy)


def test_encoder_decoder_is_refused_at_start_up() -> None:
    from transformers import T5Config

    from selfreward_vlm.service.engine.families import UnsupportedModelError, check_supported

    with pytest.raises(UnsupportedModelError, match="encoder-decoder"):
        check_supported(T5Config())
    from transformers import PaliGemmaConfig

    with pytest.raises(UnsupportedModelError, match=r"paligemma.*prefix-LM"):
        check_supported(PaliGemmaConfig())
    from transformers import MllamaConfig

    with pytest.raises(UnsupportedModelError, match=r"mllama.*cross_attention_mask"):
        check_supported(MllamaConfig())


def test_start_up_error_names_the_unsupported_model(tmp_path) -> None:
    """Through `load_models`, before any weights load: the message says what and why."""
    from transformers import T5Config

    from selfreward_vlm.service.engine.families import UnsupportedModelError
    from selfreward_vlm.service.engine.loader import load_models
    from selfreward_vlm.service.settings import ServiceSettings

    T5Config(d_model=8, num_layers=1, num_heads=1, d_ff=8, vocab_size=10).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="'t5' is an encoder-decoder"):
        load_models(ServiceSettings(model=str(tmp_path), device="cpu"))


@pytest.mark.parametrize("path", ["auto", "generic"])
def test_api_serves_a_qwen_model_and_info_names_the_path(
    path, family_dirs, reference_model, tmp_path
) -> None:
    """Over HTTP: /info names family and path; /v1/logprobs equals the model's own forward;
    /v1/generate greedy equals `model.generate`."""
    import io
    import time

    from fastapi.testclient import TestClient

    from selfreward_vlm.service.app import build_app
    from selfreward_vlm.service.settings import ServiceSettings

    settings = ServiceSettings(
        model=str(family_dirs["qwen2_5_vl"]), model_path=path, data_dir=tmp_path, device="cpu"
    )
    img = picture(SIZES[1])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    model, processor = reference_model("qwen2_5_vl", False)
    with TestClient(build_app(settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        info = client.get("/info").json()["model"]
        assert info["family"] == ("qwen_vl" if path == "auto" else "generic")
        assert info["path"] == ("fast" if path == "auto" else "generic")
        batching = "continuous (mixed adapters)" if path == "auto" else "isolated"
        assert info["decode_batching"] == batching  # the generic path decodes one at a time
        image_id = client.post(
            "/v1/images", content=buf.getvalue(), headers={"content-type": "image/png"}
        ).json()["id"]
        body = {
            "image": {"id": image_id},
            "prompt": PROMPT,
            "prefix": PREFIX,
            "continuations": CONTS,
        }
        res = client.post("/v1/logprobs", json=body)
        assert res.status_code == 200, res.text
        for cont, r in zip(CONTS, res.json()["results"], strict=True):
            want = own_forward_logprobs(model, processor, img, PREFIX, cont)
            assert r["token_logprobs"] == pytest.approx(want, abs=1e-4)
        body = {"image": {"id": image_id}, "prompt": PROMPT, "strategy": "greedy", "n": 1,
                "stop": "eos", "max_new_tokens": 6}  # fmt: skip
        res = client.post("/v1/generate", json=body)
        assert res.status_code == 200, res.text
        got = res.json()["candidates"][0]["token_ids"]
    enc = processor(text=render(processor, PROMPT), images=img, return_tensors="pt")
    engine_never = [processor.tokenizer.pad_token_id, model.config.image_token_id]
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False, suppress_tokens=engine_never)
    assert got == out[0, enc["input_ids"].shape[1] :].tolist()


def test_serve_tiny_family_builds_and_serves_that_family(tmp_path) -> None:
    from selfreward_vlm.service.cli import build_settings

    settings = build_settings({"data_dir": tmp_path}, tiny_family="gemma3")
    assert settings.model == str(tmp_path / "tiny-models" / "gemma3") and settings.clip
    with pytest.raises(ValueError, match="no tiny model for family 'nope'"):
        build_settings({"data_dir": tmp_path}, tiny_family="nope")


def test_text_lm_logit_softcapping_equals_own_forward(tmp_path) -> None:
    """A causal LM whose head caps its logits (Gemma 2: `final_logit_softcapping`) scores as
    its own forward does (without the cap the numbers differ by ~1e-2 here)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from selfreward_vlm.service.engine.loader import load_models
    from selfreward_vlm.service.settings import ServiceSettings
    from selfreward_vlm.tiny.llava import build_tokenizer

    tok = build_tokenizer()
    config = Gemma2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, final_logit_softcapping=1.0,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    engine = load_models(ServiceSettings(model=str(tmp_path), device="cpu")).engine
    got = engine.score([ScoreItem("base", "Say something.", CONTS, "There")])[0]
    prompt = engine.tokenizer(engine.render_prompt("Say something.", False))["input_ids"]
    pre = engine.encode_text("There")
    for cont, scored in zip(CONTS, got, strict=True):
        ids = engine.encode_text(cont)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + pre + ids])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        start = len(prompt) + len(pre)
        want = [float(logp[start - 1 + j, t]) for j, t in enumerate(ids)]
        assert scored.token_logprobs == pytest.approx(want, abs=1e-5)
