"""OpenAI / vLLM-compatible routes, with the real `openai` package as the client of
/v1/completions (echo scoring) and vLLM's score shape on /v1/score (CLIP relevance)."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from selfreward_vlm.service.app import build_app
from selfreward_vlm.service.settings import ServiceSettings
from tests.api.test_scoring_api import png

USER = "Describe the image."
ANSWER = " There is a red circle. It is big."


@contextlib.contextmanager
def in_process(data_dir: Path, **settings: Any) -> Iterator[TestClient]:
    """The app on real (tiny) models, in process: `ServiceSettings(**settings)`."""
    from selfreward_vlm.service.engine.loader import load_models

    config = ServiceSettings(warmup=False, data_dir=data_dir, **settings)
    with TestClient(build_app(config, load_models(config))) as client:
        yield client


def openai_client(api: TestClient) -> openai.OpenAI:
    """The real OpenAI client, speaking HTTP to the in-process app (TestClient is an httpx
    client)."""
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=api)


@pytest.fixture(scope="module")
def api(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    vlm, clip = str(tiny_models["vlm"]), str(tiny_models["clip"])
    with in_process(tmp_path_factory.mktemp("openai-data"), model=vlm, clip=clip) as client:
        client.image_id = client.post(  # type: ignore[attr-defined]
            "/v1/images", content=png(), headers={"content-type": "image/png"}
        ).json()["id"]
        yield client


@pytest.fixture(scope="module")
def oai(api: TestClient) -> openai.OpenAI:
    return openai_client(api)


def templated(tiny_models: dict[str, Path], with_image: bool = True) -> str:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    content = [{"type": "text", "text": USER}]
    if with_image:
        content.insert(0, {"type": "image"})
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_echoed_logprobs_equal_native_logprobs(
    api: TestClient, oai: openai.OpenAI, tiny_models: dict[str, Path]
) -> None:
    for with_image in (True, False):
        text = templated(tiny_models, with_image) + ANSWER
        extra = {"prompt_logprobs": 1}
        image = {"id": api.image_id} if with_image else None
        if image:
            extra["image"] = image
        out = oai.completions.create(
            model="base", prompt=text, echo=True, max_tokens=0, logprobs=1, extra_body=extra
        )
        native = api.post(
            "/v1/logprobs", json={"prompt": USER, "image": image, "continuations": [ANSWER]}
        ).json()["results"][0]
        choice = out.choices[0]
        assert choice.text == text and out.model == "base"
        lp = choice.logprobs
        n = native["num_tokens"]
        assert lp.token_logprobs[-n:] == pytest.approx(native["token_logprobs"], abs=1e-4)
        assert all(v is None for v in lp.token_logprobs[:-n])  # the template is context
        assert "".join(lp.tokens).endswith(ANSWER) and lp.text_offset[0] == 0
        assert [next(iter(t.values())) for t in lp.top_logprobs[-n:]] == pytest.approx(
            native["token_logprobs"], abs=1e-4
        )
        prompt_lps = choice.model_extra["prompt_logprobs"]
        last = prompt_lps[-1]  # the chosen token first, then vLLM's top-1 (when it differs)
        assert next(iter(last)) == str(native["token_ids"][-1]) and len(last) <= 2
        assert last[str(native["token_ids"][-1])]["logprob"] == pytest.approx(
            native["token_logprobs"][-1], abs=1e-4
        )
        assert out.usage.prompt_tokens == len(lp.tokens)


def test_a_batch_of_prompts_and_token_id_prompts(
    api: TestClient, oai: openai.OpenAI, tiny_models: dict[str, Path]
) -> None:
    head = templated(tiny_models, with_image=False)
    texts = [head + " A cat.", head + " The sky is blue."]
    out = oai.completions.create(model="base", prompt=texts, echo=True, max_tokens=0, logprobs=0)
    assert [c.index for c in out.choices] == [0, 1]
    for choice, text in zip(out.choices, texts, strict=True):
        native = api.post("/v1/logprobs", json={"prompt": USER, "continuations": [
            text[len(head):]]}).json()["results"][0]  # fmt: skip
        n = native["num_tokens"]
        assert choice.logprobs.token_logprobs[-n:] == pytest.approx(
            native["token_logprobs"], abs=1e-4
        )
    tok = api.app.state.selfreward.models.engine.tokenizer  # type: ignore[attr-defined]
    ids = tok(texts[0], add_special_tokens=False)["input_ids"]
    by_ids = oai.completions.create(model="base", prompt=ids, echo=True, max_tokens=0, logprobs=0)
    assert by_ids.choices[0].logprobs.token_logprobs == pytest.approx(
        out.choices[0].logprobs.token_logprobs, abs=1e-6
    )


def test_the_echo_has_one_entry_per_submitted_token(
    api: TestClient, oai: openai.OpenAI, tiny_models: dict[str, Path]
) -> None:
    """As vLLM: the echoed tokens are the client's (expanded image placeholders kept, token-id
    prompts as given), the answer's carry the native log-probs."""
    tok = api.app.state.selfreward.models.engine.tokenizer  # type: ignore[attr-defined]
    expanded = templated(tiny_models).replace("<image>", "<image>" * 5) + ANSWER
    body = {"prompt": USER, "image": {"id": api.image_id}, "continuations": [ANSWER]}
    native = api.post("/v1/logprobs", json=body).json()["results"][0]
    ids = tok(expanded)["input_ids"]
    for prompt in (expanded, ids):
        out = oai.completions.create(model="base", prompt=prompt, echo=True, max_tokens=0,
                                     logprobs=0, extra_body={"image": {"id": api.image_id},
                                                             "prompt_logprobs": 0})  # fmt: skip
        lp = out.choices[0].logprobs
        assert lp.tokens == [tok.decode([t], skip_special_tokens=False) for t in ids]
        assert len(lp.text_offset) == len(out.choices[0].model_extra["prompt_logprobs"]) == len(ids)
        n = native["num_tokens"]
        assert lp.token_logprobs[-n:] == pytest.approx(native["token_logprobs"], abs=1e-4)
        assert all(v is None for v in lp.token_logprobs[:-n])
    with pytest.raises(openai.BadRequestError) as bad:
        oai.completions.create(model="base", prompt=expanded, echo=True, max_tokens=0, n=2,
                               extra_body={"image": {"id": api.image_id}})  # fmt: skip
    assert bad.value.body["param"] == "n"


def test_errors_have_the_openai_shape(
    api: TestClient, oai: openai.OpenAI, tiny_models: dict[str, Path]
) -> None:
    text = templated(tiny_models, False) + ANSWER
    with pytest.raises(openai.NotFoundError) as nf:
        oai.completions.create(model="no-such-adapter", prompt=text, echo=True, max_tokens=0)
    assert nf.value.body["param"] == "model" and nf.value.body["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as bad:
        oai.completions.create(model="base", prompt=text, echo=True, max_tokens=10**6)
    assert bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as bad:  # forced chat reading of a plain text
        oai.completions.create(model="base", prompt=["a", "no template here"], echo=True,
                               max_tokens=0, extra_body={"prompt_format": "chat"})  # fmt: skip
    assert bad.value.body["param"] == "prompt.0"
    with pytest.raises(openai.BadRequestError) as bad:
        oai.completions.create(model="base", prompt=[[1, 2], [10**9]], echo=True, max_tokens=0)
    assert bad.value.body["param"] == "prompt.1"
    with pytest.raises(openai.BadRequestError) as bad:
        oai.completions.create(model="base", prompt=text, echo=True, max_tokens=0, logprobs=21)
    assert bad.value.body["param"] == "logprobs"
    res = api.post("/v1/completions", json={"model": "base", "echo": True, "max_tokens": 0})
    assert res.status_code == 400
    assert set(res.json()["error"]) == {"message", "type", "param", "code"}
    assert res.json()["error"]["param"] == "prompt"
    # the native routes keep the native shape
    native = api.post("/v1/logprobs", json={"prompt": "x"})
    assert native.status_code == 422 and set(native.json()["error"]) == {"type", "message", "field"}


def data_uri(color: tuple[int, int, int]) -> str:
    return "data:image/png;base64," + base64.b64encode(png(color)).decode()


def test_score_is_clip_relevance_in_vllm_shape(api: TestClient) -> None:
    texts = ["a red circle", "a blue square", "a dog"]
    image = {"content": [{"type": "image_url", "image_url": {"url": data_uri((200, 30, 30))}}]}
    res = api.post("/v1/score", json={"model": "clip", "text_1": image, "text_2": texts})
    assert res.status_code == 200, res.text
    data = res.json()
    assert data["object"] == "list" and [d["index"] for d in data["data"]] == [0, 1, 2]
    assert all(d["object"] == "score" for d in data["data"])
    clip = api.post("/v1/clip", json={"image": {"id": api.image_id}, "texts": texts}).json()
    want = [r["relevance"] for r in clip["results"]]
    assert [d["score"] for d in data["data"]] == pytest.approx(want, abs=1e-5)
    alias = api.post("/score", json={"model": "clip", "text_1": image, "text_2": texts})
    assert [d["score"] for d in alias.json()["data"]] == pytest.approx(want, abs=1e-5)
    # N:N pairs, images on the right side, an image id accepted as the URL
    images = {"content": [
        {"type": "image_url", "image_url": {"url": api.image_id}},
        {"type": "image_url", "image_url": {"url": data_uri((20, 200, 40))}},
    ]}  # fmt: skip
    pair = api.post("/v1/score", json={"text_1": texts[:2], "text_2": images}).json()
    green = api.post("/v1/clip", json={"image": {"url": data_uri((20, 200, 40))},
                                       "texts": [texts[1]]}).json()["results"][0]  # fmt: skip
    assert [d["score"] for d in pair["data"]] == pytest.approx(
        [want[0], green["relevance"]], abs=1e-5
    )
    for body in (
        {"text_1": "a", "text_2": ["b"]},  # no image
        {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]},  # lengths
        {
            "text_1": {"content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]},
            "text_2": "a",
        },
    ):
        res = api.post("/v1/score", json=body)
        assert res.status_code == 400, res.text
        assert set(res.json()["error"]) == {"message", "type", "param", "code"}
