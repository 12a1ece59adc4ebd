"""The scoring endpoints over HTTP (in-process app on the tiny models): numbers and bad input."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from selfreward_vlm.core.rewards import calibrated_reward, clip_relevance
from selfreward_vlm.service.app import build_app
from selfreward_vlm.service.settings import ServiceSettings
from tests.engine.test_engine import direct_logprobs

PROMPT = "Describe the image."


def png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def api(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    settings = ServiceSettings(
        model=str(tiny_models["vlm"]), clip=str(tiny_models["clip"]), max_items=8,
        max_text_tokens=96, data_dir=tmp_path_factory.mktemp("api-data"),
    )  # fmt: skip
    with TestClient(build_app(settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        client.image_id = client.post(  # type: ignore[attr-defined]
            "/v1/images", content=png(), headers={"content-type": "image/png"}
        ).json()["id"]
        yield client


def models_of(api: TestClient):
    return api.app.state.selfreward.models  # type: ignore[attr-defined]


def test_logprobs_endpoint_matches_direct_forward(api: TestClient) -> None:
    conts = ["There is a red circle.", " blue", "The sky is blue and the grass is green."]
    body = {"image": {"id": api.image_id}, "prompt": PROMPT, "prefix": "There is",
            "continuations": conts}  # fmt: skip
    res = api.post("/v1/logprobs", json=body)
    assert res.status_code == 200, res.text
    data = res.json()
    img = Image.open(io.BytesIO(png())).convert("RGB")
    for cont, r in zip(conts, data["results"], strict=True):
        want = direct_logprobs(models_of(api), PROMPT, "There is", cont, img)
        assert r["token_logprobs"] == pytest.approx(want, abs=1e-4)
        assert r["sum_logprob"] == pytest.approx(sum(want), abs=1e-4)
        assert r["mean_logprob"] == pytest.approx(sum(want) / len(want), abs=1e-4)
        assert r["num_tokens"] == len(r["tokens"]) == len(r["token_ids"])
    assert data["usage"]["tokens_scored"] == sum(r["num_tokens"] for r in data["results"])
    assert "x-inference-time-ms" in res.headers and "x-queue-time-ms" in res.headers


def test_reward_combines_clip_and_language_score(api: TestClient) -> None:
    cands = ["There is a red circle.", "The sky is blue."]
    for lam, kind in [(0.9, "prob"), (0.5, "mean_logprob"), (0.0, "sum_logprob")]:
        body = {"image": {"id": api.image_id}, "prompt": PROMPT, "candidates": cands,
                "lambda": lam, "language_score": kind}  # fmt: skip
        data = api.post("/v1/reward", json=body).json()
        lp = api.post(
            "/v1/logprobs",
            json={"image": {"id": api.image_id}, "prompt": PROMPT, "continuations": cands},
        ).json()["results"]
        clip = api.post("/v1/clip", json={"image": {"id": api.image_id}, "texts": cands}).json()
        assert data["lambda"] == lam and data["language_score"] == kind
        for r, lp_r, c in zip(data["results"], lp, clip["results"], strict=True):
            r_t = {
                "prob": torch.tensor(lp_r["sum_logprob"]).exp().item(),
                "mean_logprob": lp_r["mean_logprob"],
                "sum_logprob": lp_r["sum_logprob"],
            }[kind]
            assert r["r_t"] == pytest.approx(r_t, rel=1e-4, abs=1e-6)
            assert r["r_i"] == pytest.approx(clip_relevance(c["cosine"]), abs=1e-4)
            assert r["reward"] == pytest.approx(
                calibrated_reward(r["r_i"], r["r_t"], lam), abs=1e-4
            )


def test_implicit_reward_is_zero_for_same_policy_and_reference(api: TestClient) -> None:
    body = {"policy": "base", "reference": "base", "image": {"id": api.image_id},
            "prompt": PROMPT, "responses": ["There is a red circle.", "Blue."]}  # fmt: skip
    data = api.post("/v1/implicit-reward", json=body).json()
    for r in data["results"]:
        assert r["reward_sum"] == 0.0 and r["reward_avg"] == 0.0
        assert r["policy_logprob"] == pytest.approx(r["reference_logprob"])


def test_implicit_reward_matches_direct_lora_computation(api: TestClient, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base_dir = models_of(api).settings.model
    torch.manual_seed(1)
    peft_model = get_peft_model(
        AutoModelForImageTextToText.from_pretrained(base_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                   init_lora_weights=False),
    )  # fmt: skip
    peft_model.save_pretrained(tmp_path / "rand")
    files = {
        "adapter_config.json": (tmp_path / "rand" / "adapter_config.json").read_bytes(),
        "adapter_model.safetensors": (tmp_path / "rand" / "adapter_model.safetensors").read_bytes(),
    }
    up = api.post("/v1/adapters", data={"name": "rand"},
                  files={k: (k, v) for k, v in files.items()})  # fmt: skip
    assert up.status_code == 201, up.text
    responses = ["There is a red circle.", "The sky is blue and the grass is green."]
    body = {"policy": "rand", "reference": "base", "beta": 0.1, "image": {"id": api.image_id},
            "prompt": PROMPT, "responses": responses}  # fmt: skip
    data = api.post("/v1/implicit-reward", json=body).json()
    img = Image.open(io.BytesIO(png())).convert("RGB")
    models = models_of(api)
    eos = models.engine.tokenizer.eos_token
    for text, r in zip(responses, data["results"], strict=True):
        with models.engine.adapters.active("base"):
            ref = sum(direct_logprobs(models, PROMPT, "", text + eos, img))
        with models.engine.adapters.active("rand"):
            pol = sum(direct_logprobs(models, PROMPT, "", text + eos, img))
        assert r["reference_logprob"] == pytest.approx(ref, abs=1e-4)
        assert r["policy_logprob"] == pytest.approx(pol, abs=1e-4)
        assert r["reward_sum"] == pytest.approx(0.1 * (pol - ref), abs=1e-5)
        assert r["reward_avg"] == pytest.approx(0.1 * (pol - ref) / r["num_tokens"], abs=1e-5)
        assert abs(pol - ref) > 1e-3  # the adapter really changed the model
    assert api.delete("/v1/adapters/rand").status_code in (200, 204)


def test_generate_returns_candidates_with_raw_logprobs(api: TestClient) -> None:
    body = {"image": {"id": api.image_id}, "prompt": PROMPT, "n": 5, "max_new_tokens": 6}
    data = api.post("/v1/generate", json=body).json()
    assert len(data["candidates"]) == 5
    first = data["candidates"][0]
    rescored = api.post(
        "/v1/logprobs",
        json={"image": {"id": api.image_id}, "prompt": PROMPT, "continuations": [first["text"]]},
    ).json()
    if rescored["results"][0]["token_ids"] == first["token_ids"]:
        assert rescored["results"][0]["token_logprobs"] == pytest.approx(
            first["token_logprobs"], abs=1e-4
        )


def test_base64_image_and_text_only_requests(api: TestClient) -> None:
    b64 = base64.b64encode(png((10, 200, 10))).decode()
    res = api.post("/v1/clip", json={"image": {"base64": b64}, "texts": ["a green square"]})
    assert res.status_code == 200, res.text
    res = api.post("/v1/logprobs", json={"prompt": "Hello", "continuations": ["world"]})
    assert res.status_code == 200, res.text


BAD = [
    ("/v1/logprobs", {"prompt": "p", "continuations": []}, 422, "continuations"),
    ("/v1/logprobs", {"prompt": "p", "continuations": ["a"] * 9}, 422, "continuations"),
    ("/v1/logprobs", {"prompt": "p", "continuations": ["word " * 200]}, 422, "continuations"),
    ("/v1/logprobs", {"prompt": "p", "continuations": ["a"], "model": "nope"}, 404, "model"),
    ("/v1/logprobs", {"prompt": "p", "continuations": ["a"], "colour": 1}, 422, "colour"),
    ("/v1/logprobs", {"continuations": ["a"]}, 422, "prompt"),
    ("/v1/logprobs", {"prompt": 3, "continuations": ["a"]}, 422, "prompt"),
    ("/v1/logprobs", {"prompt": "p", "continuations": "a"}, 422, "continuations"),
    ("/v1/logprobs", {"prompt": "p", "continuations": ["<image>"]}, 422, "continuations"),
    ("/v1/logprobs", {"prompt": "p", "image": {"id": "0" * 64}, "continuations": ["a"]}, 404,
     "image"),
    ("/v1/reward", {"image": {"id": "ID"}, "prompt": "p", "candidates": ["a"], "lambda": 1.5},
     422, "lambda"),
    ("/v1/reward", {"image": {"id": "ID"}, "prompt": "p", "candidates": ["a"],
                    "language_score": "best"}, 422, "language_score"),
    ("/v1/implicit-reward", {"policy": "base", "prompt": "p", "responses": ["a"], "beta": 0},
     422, "beta"),
    ("/v1/implicit-reward", {"policy": "ghost", "prompt": "p", "responses": ["a"]}, 404, "policy"),
    ("/v1/clip", {"image": {"id": "ID"}, "texts": []}, 422, "texts"),
    ("/v1/clip", {"image": {"id": "ID", "base64": "AA=="}, "texts": ["a"]}, 422, "image"),
    ("/v1/generate", {"prompt": "p", "n": 9}, 422, "n"),
    ("/v1/generate", {"prompt": "p", "n": 4, "num_beam_groups": 3}, 422, "num_beam_groups"),
    ("/v1/generate", {"prompt": "p", "max_new_tokens": 5000}, 422, "max_new_tokens"),
    ("/v1/generate", {"prompt": "p", "strategy": "nucleus"}, 422, "strategy"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "field"), BAD)
def test_bad_scoring_input_is_a_clear_4xx(api: TestClient, path, body, status, field) -> None:
    body = {**body}
    if isinstance(body.get("image"), dict) and body["image"].get("id") == "ID":
        body["image"] = {**body["image"], "id": api.image_id}
    res = api.post(path, json=body)
    assert res.status_code == status, res.text
    error = res.json()["error"]
    assert error["type"] and error["message"]
    assert field in (error.get("field") or "") or field in error["message"]
    # ...and the service still scores correctly afterwards.
    ok = api.post("/v1/logprobs", json={"prompt": PROMPT, "continuations": ["There is"]})
    assert ok.status_code == 200


def test_metrics_split_the_workers_time_by_phase(api: TestClient) -> None:
    """`selfreward_worker_busy_seconds_total{phase}`: where the model worker's time went."""

    def busy() -> dict[str, float]:
        out = {}
        for line in api.get("/metrics").text.splitlines():
            if line.startswith("selfreward_worker_busy_seconds_total{"):
                phase = line.split('phase="')[1].split('"')[0]
                out[phase] = float(line.rsplit(" ", 1)[1])
        return out

    before = busy()
    assert api.post("/v1/logprobs", json={"prompt": PROMPT, "continuations": ["a"]}).is_success
    body = {"prompt": PROMPT, "n": 2, "max_new_tokens": 3, "strategy": "sample", "seed": 1}
    assert api.post("/v1/generate", json=body).is_success
    after = busy()
    for phase in ("scoring", "prefill", "decode"):
        assert after[phase] > before.get(phase, 0.0), phase
