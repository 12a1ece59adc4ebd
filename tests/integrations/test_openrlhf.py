"""POST /get_reward with the request OpenRLHF builds (openrlhf/utils/agent.py,
SingleTurnAgentExecutor): query = decode(prompt_ids + response_ids, skip_special_tokens=False),
with the processor's expanded image placeholders (VLM path) or without (text path). The rewards
must equal the native routes' numbers for the same response, sentence by sentence."""

from __future__ import annotations

import base64
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from selfreward_vlm.service.app import build_app
from selfreward_vlm.service.errors import QueueFullError
from selfreward_vlm.service.settings import ServiceSettings
from tests.api.test_scoring_api import png

USER = "Describe the image."
# The response and its sentences, split by hand (each scored after the ones before it).
RESPONSE = " There is a red circle. It is big."
SENTENCES = [" There is a red circle.", " It is big."]


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]):
    from selfreward_vlm.service.engine.loader import load_models

    vlm, clip = str(tiny_models["vlm"]), str(tiny_models["clip"])
    return load_models(ServiceSettings(model=vlm, clip=clip))


@pytest.fixture(scope="module")
def api(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, models):
    settings = ServiceSettings(
        model=str(tiny_models["vlm"]), clip=str(tiny_models["clip"]), warmup=False,
        data_dir=tmp_path_factory.mktemp("openrlhf-data"), openrlhf_queue_wait_s=0.3,
    )  # fmt: skip
    with TestClient(build_app(settings, models)) as client:
        client.image_ids = [  # type: ignore[attr-defined]
            client.post("/v1/images", content=png(c), headers={"content-type": "image/png"}).json()[
                "id"
            ]
            for c in [(200, 30, 30), (20, 200, 40)]
        ]
        yield client


def openrlhf_query(tiny_models: dict[str, Path], response: str, expand: bool) -> tuple[str, str]:
    """(query, prompt) exactly as OpenRLHF builds them from the model's own processor."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    tok = processor.tokenizer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": USER}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if expand:  # vlm_utils.process_prompt_with_images: the processor expands <image>
        image = Image.new("RGB", (32, 32), (200, 30, 30))
        prompt_ids = processor(text=prompt, images=image, return_tensors="pt")["input_ids"][0]
        prompt_ids = prompt_ids.tolist()
        assert prompt_ids.count(processor.image_token_id) > 1
    else:
        prompt_ids = tok(text=prompt, add_special_tokens=False)["input_ids"]
    action_ids = [*tok(response, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    return tok.decode(prompt_ids + action_ids, skip_special_tokens=False), prompt


def native_sentence_rewards(api: TestClient, image_id: str, prompt: str = USER) -> list[dict]:
    out = []
    for k, sentence in enumerate(SENTENCES):
        body = {"image": {"id": image_id}, "prompt": prompt, "prefix": "".join(SENTENCES[:k]),
                "candidates": [sentence]}  # fmt: skip
        res = api.post("/v1/reward", json=body)
        assert res.status_code == 200, res.text
        out.append(res.json()["results"][0])
    return out


def test_one_sample_with_and_without_expanded_placeholders(
    api: TestClient, tiny_models: dict[str, Path]
) -> None:
    image_id = api.image_ids[0]
    native = native_sentence_rewards(api, image_id)
    want = sum(r["reward"] for r in native) / 2
    for expand in (True, False):
        query, prompt = openrlhf_query(tiny_models, RESPONSE, expand)
        assert query.endswith("</s>") and (query.count("<image>") > 1) == expand
        res = api.post("/get_reward", json={"query": [query], "prompts": [prompt],
                                            "labels": [image_id]})  # fmt: skip
        assert res.status_code == 200, res.text
        data = res.json()
        assert data["rewards"] == pytest.approx([want], rel=1e-5)
        assert data["extra_logs"]["r_i"] == pytest.approx([sum(r["r_i"] for r in native) / 2])
        assert data["extra_logs"]["r_t"] == pytest.approx([sum(r["r_t"] for r in native) / 2])
        assert data["extra_logs"]["num_sentences"] == [2]
        assert data["scores"] == pytest.approx([1 / (1 + math.exp(-(want - 20.0) / 5.0))])


def test_a_batch_keeps_input_order_and_takes_every_label_form(
    api: TestClient, tiny_models: dict[str, Path]
) -> None:
    red, green = api.image_ids
    query, prompt = openrlhf_query(tiny_models, RESPONSE, expand=True)
    uri = "data:image/png;base64," + base64.b64encode(png((20, 200, 40))).decode()
    other = "Describe the picture."  # the label's prompt overrides the template's user turn
    labels: list[Any] = [
        green,
        uri,
        json.dumps({"image": red, "prompt": other}),
        {"image": red},
    ]
    res = api.post("/get_reward", json={"query": [query] * 4, "prompts": [prompt] * 4,
                                        "labels": labels})  # fmt: skip
    assert res.status_code == 200, res.text
    got = res.json()["rewards"]
    mean = [sum(r["reward"] for r in native_sentence_rewards(api, i, p)) / 2
            for i, p in [(green, USER), (green, USER), (red, other), (red, USER)]]  # fmt: skip
    assert got == pytest.approx(mean, rel=1e-5)
    assert got[0] != pytest.approx(got[3], rel=1e-6)  # the image matters: order is checked
    # An older OpenRLHF sends the query alone (the template's assistant tag marks the turn).
    old = api.post("/get_reward", json={"query": [query], "labels": [red]})
    assert old.json()["rewards"] == pytest.approx(mean[3:], rel=1e-5)


def test_operator_modes_clip_sum_and_implicit(
    api: TestClient, tiny_models: dict[str, Path]
) -> None:
    settings = api.app.state.selfreward.settings  # type: ignore[attr-defined]
    red = api.image_ids[0]
    query, prompt = openrlhf_query(tiny_models, RESPONSE, expand=True)
    body = {"query": [query], "prompts": [prompt], "labels": [red]}
    try:
        settings.openrlhf_reward, settings.openrlhf_aggregation = "clip", "sum"
        clip = api.post(
            "/v1/clip", json={"image": {"id": red}, "texts": [s.strip() for s in SENTENCES]}
        ).json()
        data = api.post("/get_reward", json=body).json()
        want = sum(r["relevance"] for r in clip["results"])
        assert data["rewards"] == pytest.approx([want], rel=1e-5)
        settings.openrlhf_reward, settings.openrlhf_aggregation = "implicit", "mean"
        implicit = api.post("/v1/implicit-reward", json={
            "policy": "base", "reference": "base", "image": {"id": red}, "prompt": USER,
            "responses": [RESPONSE]}).json()["results"][0]  # fmt: skip
        data = api.post("/get_reward", json=body).json()
        assert data["rewards"] == pytest.approx([implicit["reward_avg"]], abs=1e-6)
        assert data["scores"] == pytest.approx([0.5], abs=1e-6)  # base vs base: reward 0
        assert data["extra_logs"]["policy_logprob"] == pytest.approx(
            [implicit["policy_logprob"]], rel=1e-5
        )
    finally:
        settings.openrlhf_reward, settings.openrlhf_aggregation = "calibrated", "mean"


def test_image_expanded_beyond_a_run_of_placeholders(
    api: TestClient, tiny_models: dict[str, Path]
) -> None:
    """Idefics3/Gemma-style expansions put other tokens between the placeholders: the response
    is still found after the prompt's own text."""
    image_id = api.image_ids[0]
    query, prompt = openrlhf_query(tiny_models, RESPONSE, expand=False)
    tiled = query.replace("<image>", "<image><s><image></s><image>", 1)
    res = api.post("/get_reward", json={"query": [tiled], "prompts": [prompt],
                                        "labels": [image_id]})  # fmt: skip
    assert res.status_code == 200, res.text
    native = native_sentence_rewards(api, image_id)
    assert res.json()["rewards"] == pytest.approx([sum(r["reward"] for r in native) / 2])


def test_bad_labels_and_prompts_are_clear_4xx(api: TestClient, tiny_models: dict[str, Path]):
    query, prompt = openrlhf_query(tiny_models, RESPONSE, expand=True)
    cases = [
        (["/etc/passwd"], 422, "labels.1"),
        (["0" * 64], 404, "labels.1"),
        (["data:image/png;base64,@@@"], 422, "labels.1"),
        (['{"image": 3}'], 422, "labels.1"),
        ([None], 422, "labels.1"),  # the calibrated reward needs an image
    ]
    for bad, status, field in cases:
        labels = [api.image_ids[0], *bad]
        res = api.post("/get_reward", json={"query": [query] * 2, "prompts": [prompt] * 2,
                                            "labels": labels})  # fmt: skip
        assert res.status_code == status, (bad, res.text)
        assert res.json()["error"]["field"] == field, res.text
    res = api.post("/get_reward", json={"query": [query], "prompts": ["USER: hello"],
                                        "labels": [api.image_ids[0]]})  # fmt: skip
    assert res.status_code == 422 and res.json()["error"]["field"] == "prompts.0"
    res = api.post("/get_reward", json={"query": [query, query], "prompts": [prompt]})
    assert res.status_code == 422 and res.json()["error"]["field"] == "prompts"


def test_full_queue_waits_then_answers_503_with_retry_after(
    api: TestClient, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher = api.app.state.selfreward.batcher  # type: ignore[attr-defined]
    real_submit = batcher.submit
    refusals = {"left": 2}

    async def busy_then_free(item: Any):
        if refusals["left"] > 0:
            refusals["left"] -= 1
            raise QueueFullError("the request queue is full", retry_after=1.0)
        return await real_submit(item)

    monkeypatch.setattr(batcher, "submit", busy_then_free)
    query, prompt = openrlhf_query(tiny_models, RESPONSE, expand=True)
    body = {"query": [query], "prompts": [prompt], "labels": [api.image_ids[0]]}
    assert api.post("/get_reward", json=body).status_code == 200  # waited out two refusals

    refusals["left"] = 10**6
    start = time.monotonic()
    res = api.post("/get_reward", json=body)
    assert res.status_code == 503 and res.headers["retry-after"] == "1"
    assert 0.25 < time.monotonic() - start < 3.0
    assert res.json()["error"]["type"] == "queue_full"


def test_over_real_http_with_aiohttp_as_openrlhf_posts(
    live_server: str, tiny_models: dict[str, Path]
) -> None:
    """OpenRLHF posts with aiohttp (`session.post(url, json=payload)`, no headers) and reads
    `response.json()`; the same numbers as the native route on that server."""
    import asyncio

    import aiohttp
    import httpx

    image_id = httpx.post(f"{live_server}/v1/images", content=png(),
                          headers={"content-type": "image/png"}).json()["id"]  # fmt: skip
    query, prompt = openrlhf_query(tiny_models, RESPONSE, expand=True)
    payload = {"query": [query, query], "prompts": [prompt, prompt], "labels": [image_id] * 2}

    async def post() -> dict:
        timeout = aiohttp.ClientTimeout(total=180)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(f"{live_server}/get_reward", json=payload) as response,
        ):
            response.raise_for_status()
            return await response.json()

    data = asyncio.run(post())
    rewards = []
    for k, sentence in enumerate(SENTENCES):
        body = {"image": {"id": image_id}, "prompt": USER, "prefix": "".join(SENTENCES[:k]),
                "candidates": [sentence]}  # fmt: skip
        rewards.append(httpx.post(f"{live_server}/v1/reward", json=body).json()["results"][0])
    want = sum(r["reward"] for r in rewards) / 2
    assert data["rewards"] == pytest.approx([want, want], rel=1e-5)
    assert len(data["scores"]) == 2 and all(0 < s < 1 for s in data["scores"])
    assert data["extra_logs"]["num_sentences"] == [2, 2]


def test_a_batch_split_over_two_urls_as_openrlhf_splits_it(
    live_server: str, tiny_models: dict[str, Path]
) -> None:
    """OpenRLHF >= 0.10 (`openrlhf/utils/agent.py`, `_fetch_rewards_via_http`) splits every
    request over all `--reward.remote_url`s in slices of ceil(n / urls): with one query and two
    URLs the second gets empty lists, and a non-200 there drops the whole reward. Replayed here
    with aiohttp on two URLs of a live server."""
    import asyncio

    import aiohttp
    import httpx

    image_id = httpx.post(f"{live_server}/v1/images", content=png(),
                          headers={"content-type": "image/png"}).json()["id"]  # fmt: skip
    query, prompt = openrlhf_query(tiny_models, RESPONSE, expand=True)
    urls = [f"{live_server}/get_reward", f"http://localhost:{live_server.rsplit(':', 1)[1]}"
            "/get_reward"]  # fmt: skip

    async def fetch(queries: list[str]) -> list[dict]:
        size = (len(queries) + len(urls) - 1) // len(urls)
        timeout = aiohttp.ClientTimeout(total=180)

        async def post(url: str, data: dict) -> dict:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(url, json=data) as response,
            ):
                response.raise_for_status()
                return await response.json()

        payloads = [
            {"query": queries[i * size : (i + 1) * size],
             "prompts": [prompt] * len(queries[i * size : (i + 1) * size]),
             "labels": [image_id] * len(queries[i * size : (i + 1) * size])}
            for i in range(len(urls))
        ]  # fmt: skip
        return list(await asyncio.gather(*(post(u, p) for u, p in zip(urls, payloads,
                                                                      strict=True))))  # fmt: skip

    one = asyncio.run(fetch([query]))
    assert one[1] == {"rewards": [], "scores": [], "extra_logs": {}}
    assert len(one[0]["rewards"]) == 1
    three = asyncio.run(fetch([query] * 3))
    assert [len(r["rewards"]) for r in three] == [2, 1]
    rewards = [x for r in three for x in r["rewards"]]
    assert rewards == pytest.approx(one[0]["rewards"] * 3, rel=1e-5)


def test_an_empty_first_response_in_clip_mode_is_no_500(
    api: TestClient, tiny_models: dict[str, Path]
) -> None:
    """Every sample's logs have the mode's keys, whether or not its response has a sentence."""
    settings = api.app.state.selfreward.settings  # type: ignore[attr-defined]
    empty, prompt = openrlhf_query(tiny_models, "", expand=True)
    full, _ = openrlhf_query(tiny_models, " A red circle.", expand=True)
    body = {"query": [empty, full], "prompts": [prompt] * 2, "labels": [api.image_ids[0]] * 2}
    for mode in ("clip", "calibrated"):
        try:
            settings.openrlhf_reward = mode
            res = api.post("/get_reward", json=body)
        finally:
            settings.openrlhf_reward = "calibrated"
        assert res.status_code == 200, (mode, res.text)
        logs = res.json()["extra_logs"]
        assert logs["num_sentences"] == [0, 1] and logs["r_i"][0] == 0.0
        assert ("r_t" in logs) == (mode == "calibrated")


def test_an_overlong_response_is_a_422_before_any_scoring(
    api: TestClient, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sentences' prefixes grow with the square of the response: a response over the token
    limit, or with more sentences than `max_items`, is refused before they are built."""
    import selfreward_vlm.service.serving.reward as reward

    def no_prefixes(sentences: Any) -> list[str]:
        raise AssertionError("prefixes built for an over-long response")

    monkeypatch.setattr(reward, "prefixes", no_prefixes)
    settings = api.app.state.selfreward.settings  # type: ignore[attr-defined]
    _, prompt = openrlhf_query(tiny_models, "", expand=False)
    for response, limit in [(" a." * 5000, "tokens"), (" a." * 65, "sentences")]:
        query, _ = openrlhf_query(tiny_models, response, expand=False)
        body = {"query": [query], "prompts": [prompt], "labels": [api.image_ids[0]]}
        res = api.post("/get_reward", json=body)
        assert res.status_code == 422, res.text
        assert res.json()["error"]["field"] == "query.0" and limit in res.text
    assert settings.max_items == 64 and settings.max_text_tokens < 10_000


def test_a_failed_sample_cancels_the_others(
    api: TestClient, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once one sample fails the batch, the other samples' scoring stops (it would only take
    the GPU from the next request)."""
    import asyncio

    from selfreward_vlm.service.serving import scoring

    events: list[str] = []

    async def slow_reward(*args: Any) -> Any:
        events.append("started")
        try:
            await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        events.append("finished")
        raise AssertionError("not reached in this test")

    async def slow_image(*args: Any, **kw: Any) -> tuple[str, None]:
        await asyncio.sleep(0.2)  # the good sample is in flight when the bad one fails
        return api.image_ids[0], None

    monkeypatch.setattr(scoring, "reward", slow_reward)
    monkeypatch.setattr(scoring, "resolve_image", slow_image)
    query, prompt = openrlhf_query(tiny_models, RESPONSE, expand=False)
    body = {"query": [query] * 2, "prompts": [prompt] * 2, "labels": [api.image_ids[0], None]}
    res = api.post("/get_reward", json=body)
    assert res.status_code == 422 and res.json()["error"]["field"] == "labels.1"
    time.sleep(1.5)
    assert "finished" not in events
