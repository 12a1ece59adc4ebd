"""`/v1/completions` reading raw text as vLLM does (what lm-evaluation-harness's
`local-completions` sends), checked with the real `openai` client against the model's own
forward in transformers, on the tiny text LM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from fastapi.testclient import TestClient

from tests.integrations.test_openai_compat import in_process, openai_client

TEXTS = ["The cat sits on the mat.", "A dog runs in the park. The sky is blue"]


@pytest.fixture(scope="module")
def lm_api(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("openai-text")
    with in_process(data, model=str(tiny_models["lm"]), served_model_name=["tiny-lm"]) as api:
        yield api


@pytest.fixture(scope="module")
def client(lm_api: TestClient) -> openai.OpenAI:
    return openai_client(lm_api)


@pytest.fixture(scope="module")
def reference(tiny_models: dict[str, Path]) -> tuple[Any, Any]:
    """The tiny LM as transformers loads it: the independent reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_models["lm"]
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def forward_logprobs(model: Any, ids: list[int]) -> torch.Tensor:
    """(T, V) log-softmax of the model's own forward over `ids`."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def test_raw_text_is_scored_as_the_model_scores_it(
    client: openai.OpenAI, reference: tuple[Any, Any], tiny_models: dict[str, Path]
) -> None:
    """Every token after the first: its log-prob and the real top-k, for a batch of text
    prompts and for token-id prompts, under every name of the served model."""
    model, tok = reference
    for name in (str(tiny_models["lm"]), "tiny-lm", "base"):
        out = client.completions.create(
            model=name, prompt=TEXTS, echo=True, max_tokens=0, logprobs=3, temperature=0
        )
        assert [c.index for c in out.choices] == [0, 1] and out.model == name
        for choice, text in zip(out.choices, TEXTS, strict=True):
            ids = tok(text)["input_ids"]
            logp = forward_logprobs(model, ids)
            lp = choice.logprobs
            assert choice.text == text
            assert lp.tokens == [tok.decode([t]) for t in ids]
            assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
            want = [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
            assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-4)
            for i in range(1, len(ids)):
                values, index = logp[i - 1].topk(3)
                top = {lp.tokens[i]: want[i - 1]}  # the chosen token, then the top 3
                for t, v in zip(index.tolist(), values.tolist(), strict=True):
                    top.setdefault(tok.decode([t]), v)  # two ids may decode alike ("\ufffd")
                assert lp.top_logprobs[i] == pytest.approx(top, abs=1e-4)
    ids = tok(TEXTS[0])["input_ids"]
    by_ids = client.completions.create(
        model="tiny-lm", prompt=ids, echo=True, max_tokens=0, logprobs=0
    )
    assert by_ids.choices[0].logprobs.token_logprobs[1:] == pytest.approx(want_of(model, ids))
    assert by_ids.usage.prompt_tokens == len(ids)


def want_of(model: Any, ids: list[int]) -> list[float]:
    logp = forward_logprobs(model, ids)
    return [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_echo_with_max_tokens_appends_the_greedy_token(
    client: openai.OpenAI, reference: tuple[Any, Any]
) -> None:
    """lm-evaluation-harness's request: `echo, max_tokens 1, logprobs 1, temperature 0`; it
    sums `token_logprobs[ctxlen:-1]` and calls a token greedy when it has the top log-prob."""
    model, tok = reference
    ids = [tok(t)["input_ids"] for t in TEXTS]
    out = client.completions.create(
        model="tiny-lm", prompt=ids, echo=True, max_tokens=1, logprobs=1, temperature=0, seed=1234
    )
    for choice, p in zip(out.choices, ids, strict=True):
        lp = choice.logprobs
        assert len(lp.token_logprobs) == len(p) + 1
        logp = forward_logprobs(model, p)
        greedy = int(logp[-1].argmax())
        assert lp.tokens[-1] == tok.decode([greedy])
        assert lp.token_logprobs[-1] == pytest.approx(float(logp[-1, greedy]), abs=1e-4)
        assert lp.token_logprobs[1:-1] == pytest.approx(want_of(model, p), abs=1e-4)
        pairs = zip(lp.token_logprobs[1:-1], lp.top_logprobs[1:-1], strict=True)
        is_greedy = [t == max(top.values()) for t, top in pairs]
        want = [int(logp[i - 1].argmax()) == p[i] for i in range(1, len(p))]
        assert is_greedy == want and not all(want)  # top_logprobs holds more than the token
        assert choice.finish_reason in ("length", "stop")
    assert out.usage.completion_tokens == 2


def test_generation_continues_the_text_as_the_model_does(
    client: openai.OpenAI, reference: tuple[Any, Any]
) -> None:
    model, tok = reference
    ids = tok(TEXTS[1])["input_ids"]
    with torch.no_grad():
        want = model.generate(
            torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id
        )[0, len(ids) :].tolist()
    out = client.completions.create(model="base", prompt=TEXTS[1], max_tokens=6, temperature=0)
    text = tok.decode(want, skip_special_tokens=True)
    if tok.eos_token_id in want:
        text = tok.decode(want[: want.index(tok.eos_token_id)], skip_special_tokens=True)
    assert out.choices[0].text == text
    sampled = [
        client.completions.create(
            model="base", prompt=TEXTS[1], max_tokens=6, temperature=1.0, seed=7, n=2
        ).choices
        for _ in range(2)
    ]
    assert [c.text for c in sampled[0]] == [c.text for c in sampled[1]]  # seeded
    stopped = client.completions.create(
        model="base", prompt=TEXTS[1], max_tokens=6, temperature=0, stop=[text[2:4]]
    )
    assert stopped.choices[0].text == text[:2] and stopped.choices[0].finish_reason == "stop"


def test_bad_completion_requests_name_the_field(lm_api: TestClient) -> None:
    cases = [
        ({"prompt": "x", "echo": True, "max_tokens": 0, "model": "nope"}, 404, "model"),
        ({"prompt": "x", "echo": True, "max_tokens": 0, "model": "base", "n": 2}, 400, "n"),
        ({"prompt": [], "echo": True, "max_tokens": 0, "model": "base"}, 400, "prompt"),
        ({"prompt": "x", "max_tokens": 0, "model": "base"}, 400, "echo"),
        ({"prompt": "x", "max_tokens": 1, "model": "base", "stream": True}, 400, "stream"),
        ({"prompt": "x", "max_tokens": 1, "model": "base", "top_p": 0}, 400, "top_p"),
        ({"prompt": "x " * 5000, "echo": True, "max_tokens": 0, "model": "base"}, 400, "prompt"),
    ]
    for body, status, param in cases:
        res = lm_api.post("/v1/completions", json=body)
        assert res.status_code == status, (body, res.text)
        assert res.json()["error"]["param"] == param, res.text


def test_models_lists_every_name(lm_api: TestClient, tiny_models: dict[str, Path]) -> None:
    data = lm_api.get("/v1/models").json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == [str(tiny_models["lm"]), "tiny-lm", "base"]
    info = lm_api.get("/info").json()
    assert "prompt_format" in info["openai"]["completions_prompt"]
    assert info["openai"]["served_model_names"] == [str(tiny_models["lm"]), "tiny-lm"]


def test_a_generation_past_its_deadline_stops_and_frees_the_model(lm_api: TestClient) -> None:
    """Raw-text generation holds the engine's lock on a worker thread: past the request's
    deadline it stops at its next token, so the next request does not wait for it."""
    import time

    # 8 choices of 1000 tokens: about 23 s of model work on 2 idle cores
    body = {"model": "base", "prompt": TEXTS[0], "max_tokens": 1000, "n": 8, "temperature": 0}
    start = time.monotonic()
    res = lm_api.post("/v1/completions", json=body, headers={"x-request-timeout-ms": "300"})
    assert res.status_code == 504, res.text
    quick = lm_api.post("/v1/completions", json={**body, "max_tokens": 1, "n": 1})
    assert quick.status_code == 200 and time.monotonic() - start < 8
