"""Adapter upload / list / delete over HTTP, on the fake engine with a real PEFT LoRA adapter."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from selfreward_vlm.service.errors import InvalidRequestError
from selfreward_vlm.service.routes.adapters import check_safetensors
from tests.api.test_service_shell import FakeModels, assert_error, make_client


@pytest.fixture(scope="module")
def lora_dir(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT LoRA adapter (r=4) on the tiny VLM's language model, saved by PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_models["vlm"])
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", lora_dropout=0.0
    )
    out = tmp_path_factory.mktemp("lora")
    get_peft_model(model, config).save_pretrained(str(out))
    assert (out / "adapter_model.safetensors").is_file()
    return out


@pytest.fixture()
def fake() -> FakeModels:
    return FakeModels()


@pytest.fixture()
def client(tmp_path: Path, fake: FakeModels) -> Iterator[TestClient]:
    with make_client(tmp_path, fake, max_adapter_bytes=200_000) as c:
        yield c


def files_of(lora_dir: Path, **replace: bytes) -> dict[str, tuple[str, bytes]]:
    files = {}
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        files[name] = (name, replace.get(name.split(".")[0], (lora_dir / name).read_bytes()))
    return files


def upload(client: TestClient, name: str, files: dict):
    return client.post("/v1/adapters", data={"name": name}, files=files)


def test_valid_upload_reaches_the_engine_with_exactly_two_files(
    client: TestClient, fake: FakeModels, lora_dir: Path, tmp_path: Path
) -> None:
    response = upload(client, "iter1", files_of(lora_dir))
    assert response.status_code == 201, response.text
    info = response.json()
    assert info["name"] == "iter1" and info["rank"] == 4 and info["source"] == "upload"
    ((name, path, files, source),) = fake.engine.adapters.loads
    assert (name, source) == ("iter1", "upload")
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    assert path == tmp_path / "data" / "adapters" / "iter1"
    stored = (path / "adapter_model.safetensors").read_bytes()
    assert stored == (lora_dir / "adapter_model.safetensors").read_bytes()
    assert list((tmp_path / "data" / "adapters" / ".tmp").iterdir()) == []

    listed = client.get("/v1/adapters").json()["adapters"]
    assert [a["name"] for a in listed] == ["base", "iter1"]
    # replacing is allowed: the engine is asked to load the new files under the same name
    assert upload(client, "iter1", files_of(lora_dir)).status_code == 201
    assert len(fake.engine.adapters.loads) == 2

    assert client.delete("/v1/adapters/iter1").status_code == 204
    assert not path.exists()
    assert [a["name"] for a in client.get("/v1/adapters").json()["adapters"]] == ["base"]
    assert_error(client.delete("/v1/adapters/iter1"), 404, "not_found", "name")
    assert_error(client.delete("/v1/adapters/base"), 409, "conflict", "name")


def test_rejects_non_safetensors_weights(client: TestClient, fake: FakeModels, lora_dir: Path):
    pickled = b"\x80\x04\x95" + b"\x00" * 64  # what torch.save writes: a pickle
    error = assert_error(
        upload(client, "bad", files_of(lora_dir, adapter_model=pickled)),
        422, "invalid_adapter", "adapter_model.safetensors",
    )  # fmt: skip
    assert "safetensors" in error["message"]
    assert fake.engine.adapters.loads == []


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "-x", "x" * 65, "a b", "base"])
def test_rejects_path_like_and_reserved_names(
    client: TestClient, fake: FakeModels, lora_dir: Path, name: str
) -> None:
    assert_error(upload(client, name, files_of(lora_dir)), 422, "invalid_request", "name")
    assert fake.engine.adapters.loads == []


def test_rejects_oversized_upload(client: TestClient, lora_dir: Path) -> None:
    big = (lora_dir / "adapter_model.safetensors").read_bytes() + b"\x00" * 250_000
    response = upload(client, "big", files_of(lora_dir, adapter_model=big))
    assert_error(response, 413, "payload_too_large")


def test_rejects_missing_or_wrong_config(client: TestClient, lora_dir: Path) -> None:
    files = files_of(lora_dir)
    del files["adapter_config.json"]
    assert_error(upload(client, "nocfg", files), 422, "invalid_request", "adapter_config.json")
    prefix = files_of(lora_dir, adapter_config=json.dumps({"peft_type": "IA3"}).encode())
    assert_error(upload(client, "ia3", prefix), 422, "invalid_adapter", "adapter_config.json")
    not_json = files_of(lora_dir, adapter_config=b"r = 4")
    assert_error(upload(client, "nj", not_json), 422, "invalid_adapter", "adapter_config.json")
    extra = {**files_of(lora_dir), "README.md": ("README.md", b"# hi")}
    assert_error(upload(client, "extra", extra), 422, "invalid_request", "README.md")


def test_engine_load_failure_is_a_422_and_leaves_nothing(
    client: TestClient, fake: FakeModels, lora_dir: Path, tmp_path: Path
) -> None:
    fake.engine.adapters.fail_next = InvalidRequestError("size mismatch for lora_A", "files")
    error = assert_error(upload(client, "wrong", files_of(lora_dir)), 422, "invalid_adapter")
    assert "size mismatch" in error["message"]
    assert not (tmp_path / "data" / "adapters" / "wrong").exists()
    fake.engine.adapters.fail_next = RuntimeError("unexpected")
    assert_error(upload(client, "wrong", files_of(lora_dir)), 422, "invalid_adapter")
    assert "wrong" not in fake.engine.adapters.names()


def test_uploaded_adapters_come_back_after_restart(tmp_path: Path, lora_dir: Path) -> None:
    with make_client(tmp_path) as client:
        assert upload(client, "kept", files_of(lora_dir)).status_code == 201
    second = FakeModels()
    with make_client(tmp_path, second) as client:
        assert [a["name"] for a in client.get("/v1/adapters").json()["adapters"]] == [
            "base",
            "kept",
        ]
    assert [(n, s) for n, _, _, s in second.engine.adapters.loads] == [("kept", "upload")]


def test_startup_adapters_cannot_be_replaced_or_deleted(
    client: TestClient, fake: FakeModels, lora_dir: Path
) -> None:
    fake.engine.adapters.load("ref", lora_dir, source="startup")
    assert_error(upload(client, "ref", files_of(lora_dir)), 409, "conflict", "name")
    assert_error(client.delete("/v1/adapters/ref"), 409, "conflict", "name")


def test_safetensors_header_checks(tmp_path: Path, lora_dir: Path) -> None:
    assert check_safetensors(lora_dir / "adapter_model.safetensors") >= 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    bad = tmp_path / "w.safetensors"
    for blob in (
        b"",  # empty
        struct.pack("<Q", 10**12) + b"{}",  # header length past the end
        struct.pack("<Q", len(header)) + header + b"\x00" * 8,  # data shorter than offsets
        struct.pack("<Q", 2) + b"{}",  # no tensors
    ):
        bad.write_bytes(blob)
        with pytest.raises(InvalidRequestError):
            check_safetensors(bad)
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    assert check_safetensors(bad) == 1
