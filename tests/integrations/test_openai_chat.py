"""`/v1/chat/completions` with the real `openai` client: an image in an `image_url` part,
log-probs against the model's own forward, streaming as OpenAI streams, and the engine's
`/v1/generate` as the answer's reference, on the tiny LLaVA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from fastapi.testclient import TestClient

from tests.integrations.test_openai_compat import data_uri, in_process, openai_client

USER = "Describe the image."
RED = (200, 30, 30)


@pytest.fixture(scope="module")
def api(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("openai-chat")
    vlm = str(tiny_models["vlm"])
    with in_process(data, model=vlm, served_model_name=["tiny-llava"], max_new_tokens=64) as api:
        yield api


@pytest.fixture(scope="module")
def oai(api: TestClient) -> openai.OpenAI:
    return openai_client(api)


def user_turn(text: str = USER, color: tuple[int, int, int] = RED) -> dict[str, Any]:
    """A user message as lmms-eval writes it: the text, then the image."""
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": data_uri(color)}},
        ],
    }


def model_logprobs(tiny_models: dict[str, Path], text: str, answer_ids: list[int]) -> Any:
    """(len(answer), V) log-softmax of the model's own forward over prompt + answer."""
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    model = LlavaForConditionalGeneration.from_pretrained(tiny_models["vlm"]).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=rendered, images=Image.new("RGB", (32, 32), RED), return_tensors="pt")
    ids = torch.cat([inputs["input_ids"], torch.tensor([answer_ids])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0]
    n = inputs["input_ids"].shape[1]
    return torch.log_softmax(logits.float(), -1)[n - 1 : n - 1 + len(answer_ids)], n


def test_chat_answer_with_an_image_is_the_engines_greedy_answer(
    api: TestClient, oai: openai.OpenAI, tiny_models: dict[str, Path]
) -> None:
    native = api.post(
        "/v1/generate",
        json={
            "prompt": USER,
            "image": {"url": data_uri(RED)},
            "strategy": "greedy",
            "n": 1,
            "stop": "eos",
            "max_new_tokens": 12,
        },
    ).json()["candidates"][0]
    for name in ("base", "tiny-llava", str(tiny_models["vlm"])):
        out = oai.chat.completions.create(
            model=name,
            messages=[user_turn()],
            max_tokens=12,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
        )
        choice = out.choices[0]
        assert out.object == "chat.completion" and out.model == name
        assert choice.message.role == "assistant" and choice.message.content == native["text"]
        assert choice.finish_reason == ("stop" if native["stop_reason"] == "eos" else "length")
        logp, n_prompt = model_logprobs(tiny_models, USER, native["token_ids"])
        entries = choice.logprobs.content
        assert len(entries) == len(native["token_ids"]) == out.usage.completion_tokens
        assert out.usage.prompt_tokens == n_prompt
        for k, (entry, token) in enumerate(zip(entries, native["token_ids"], strict=True)):
            assert entry.logprob == pytest.approx(float(logp[k, token]), abs=1e-4)
            values, index = logp[k].topk(3)
            assert [t.logprob for t in entry.top_logprobs] == pytest.approx(
                values.tolist(), abs=1e-4
            )
            tok = api.app.state.selfreward.models.engine.tokenizer  # type: ignore[attr-defined]
            assert [t.token for t in entry.top_logprobs] == [tok.decode([i]) for i in index]


def test_streaming_sends_what_openai_sends(api: TestClient, oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(
        model="base", messages=[user_turn()], max_tokens=10, temperature=0
    )
    chunks = list(
        oai.chat.completions.create(
            model="base",
            messages=[user_turn()],
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == whole.choices[0].message.content
    assert with_choices[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert [c.choices[0].finish_reason for c in with_choices[:-1]] == [None] * (
        len(with_choices) - 1
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    raw = api.post(
        "/v1/chat/completions",
        json={
            "model": "base",
            "messages": [user_turn()],
            "max_tokens": 3,
            "stream": True,
        },
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_conversations_sampling_and_stops(
    api: TestClient, oai: openai.OpenAI, tiny_models: dict[str, Path]
) -> None:
    from transformers import AutoProcessor

    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_uri(RED)}},
                {"type": "text", "text": USER},
            ],
        },
        {"role": "assistant", "content": "There is a red circle."},
        {"role": "user", "content": "Is it big?"},
    ]
    out = oai.chat.completions.create(model="base", messages=messages, max_tokens=5, temperature=0)
    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    hf_messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": USER}]},
        {"role": "assistant", "content": [{"type": "text", "text": "There is a red circle."}]},
        {"role": "user", "content": [{"type": "text", "text": "Is it big?"}]},
    ]
    rendered = processor.apply_chat_template(
        hf_messages, add_generation_prompt=True, tokenize=False
    )
    native = api.post(
        "/v1/generate",
        json={
            "prompt": rendered.removeprefix("USER: <image>\n").removesuffix(" ASSISTANT:"),
            "image": {"url": data_uri(RED)},
            "strategy": "greedy",
            "n": 1,
            "stop": "eos",
            "max_new_tokens": 5,
        },
    ).json()["candidates"][0]
    assert out.choices[0].message.content == native["text"]
    seeded = [
        oai.chat.completions.create(
            model="base", messages=[user_turn()], max_tokens=8, temperature=1.0, seed=3, n=2
        )
        for _ in range(2)
    ]
    assert [c.message.content for c in seeded[0].choices] == [
        c.message.content for c in seeded[1].choices
    ]
    greedy = (
        oai.chat.completions.create(
            model="base", messages=[user_turn()], max_tokens=12, temperature=0
        )
        .choices[0]
        .message.content
    )
    stop = greedy[3:5]
    cut = oai.chat.completions.create(
        model="base", messages=[user_turn()], max_tokens=12, temperature=0, stop=[stop, "zzz"]
    ).choices[0]
    assert cut.message.content == greedy[: greedy.index(stop)] and cut.finish_reason == "stop"


def test_bad_chat_requests_name_the_field(api: TestClient, oai: openai.OpenAI) -> None:
    image = {"type": "image_url", "image_url": {"url": data_uri(RED)}}
    cases = [
        ({"messages": [user_turn()], "model": "nope"}, 404, "model"),
        (
            {"messages": [user_turn(), {"role": "assistant", "content": "x"}]},
            400,
            "messages.1.role",
        ),
        ({"messages": [{"role": "user", "content": [image, image]}]}, 400, "messages.0.content.1"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}],
                    }
                ]
            },
            400,
            "messages.0.content.0.url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "http://10.0.0.1/a.png"}}
                        ],
                    }
                ]
            },
            400,
            "messages.0.content.0.image_url.url",
        ),
        ({"messages": [user_turn()], "top_logprobs": 2}, 400, "top_logprobs"),
        ({"messages": [user_turn()], "max_tokens": 10**6}, 400, "max_tokens"),
        ({"messages": [user_turn()], "max_completion_tokens": 10**6}, 400, "max_completion_tokens"),
        ({"messages": [user_turn()], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ]
    for body, status, param in cases:
        res = api.post("/v1/chat/completions", json={"model": "base", **body})
        assert res.status_code == status, (body, res.text)
        error = res.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param, (body, res.text)
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nope", messages=[user_turn()])
