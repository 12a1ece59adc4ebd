"""The service shell in-process: probes, info, metrics, auth, error shapes, request ids.

Runs on a deterministic fake model (like infinity's dummytransformer), so it tests the HTTP
layer alone; the other service-layer tests import `FakeModels` / `FakeBatcher` / `make_client`
from here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from selfreward_vlm.core.schemas import AdapterInfo, InfoResponse, ModelInfo
from selfreward_vlm.service.app import build_app
from selfreward_vlm.service.errors import InvalidRequestError, NotFoundError
from selfreward_vlm.service.settings import ServiceSettings

# --------------------------------------------------------------------------- fakes


class FakeAdapters:
    """The engine's adapter registry, minus the model: records what it was asked to load."""

    def __init__(self) -> None:
        self._info: dict[str, AdapterInfo] = {}
        self.loads: list[tuple[str, Path, list[str], str]] = []  # name, dir, files, source
        self.fail_next: Exception | None = None

    def names(self) -> list[str]:
        return ["base", *sorted(self._info)]

    def info(self, name: str) -> AdapterInfo:
        if name == "base":
            return AdapterInfo(name="base", source="startup")
        if name not in self._info:
            raise NotFoundError(f"unknown adapter {name!r}", field="model")
        return self._info[name]

    def load(self, name: str, path: str | Path, source: str = "upload") -> AdapterInfo:
        path = Path(path)
        self.loads.append((name, path, sorted(p.name for p in path.iterdir()), source))
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        config = json.loads((path / "adapter_config.json").read_text())
        info = AdapterInfo(
            name=name,
            rank=config.get("r"),
            alpha=config.get("lora_alpha"),
            size_bytes=sum(p.stat().st_size for p in path.iterdir()),
            source="startup" if source == "startup" else "upload",
        )
        self._info[name] = info
        return info

    def delete(self, name: str) -> None:
        if name == "base":
            raise InvalidRequestError("the base model cannot be deleted", "name")
        self.info(name)
        del self._info[name]


class FakeEngine:
    kind = "vlm"

    def __init__(self) -> None:
        self.adapters = FakeAdapters()


class FakeModels:
    """Deterministic stand-in for `service.engine.Models`."""

    def __init__(self) -> None:
        self.engine = FakeEngine()
        self.clip = object()
        self.warmups = 0

    def info(self) -> ModelInfo:
        return ModelInfo(
            model="fake-vlm",
            kind="vlm",
            clip="fake-clip",
            clip_context_length=77,
            device="cpu",
            dtype="float32",
            eos_token="</s>",
        )

    def warmup(self) -> None:
        self.warmups += 1


class FakeBatcher:
    """Stand-in for `service.engine.batcher.Batcher`: only the lifecycle the shell drives."""

    def __init__(self, models: Any, settings: ServiceSettings, metrics: Any = None) -> None:
        self.models, self.settings, self.metrics = models, settings, metrics
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False


def fake_settings(tmp_path: Path, **overrides: Any) -> ServiceSettings:
    return ServiceSettings(model="fake-vlm", data_dir=tmp_path / "data", **overrides)


@contextmanager
def make_client(
    tmp_path: Path, models: FakeModels | None = None, **overrides: Any
) -> Iterator[TestClient]:
    """A started in-process app on `FakeModels` (ready on entry)."""
    fake: Any = models or FakeModels()  # duck-typed stand-in for service.engine.Models
    app = build_app(fake_settings(tmp_path, **overrides), fake, batcher_factory=FakeBatcher)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def assert_error(response: Any, status: int, type_: str, field: str | None = None) -> dict:
    """The one error shape, with the given status/type (and field, when given)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type_, error
    assert isinstance(error["message"], str) and error["message"]
    if field is not None:
        assert error["field"] == field, error
    return error


# --------------------------------------------------------------------------- tests


def test_health_ready_info_with_injected_models(tmp_path: Path) -> None:
    models = FakeModels()
    with make_client(tmp_path, models, max_items=7) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["store"]["state"] == "ok"
        assert client.get("/ready").json() == {"status": "ready", "store": "ok"}
        info = InfoResponse.model_validate(client.get("/info").json())
        state = client.app.state.selfreward  # type: ignore[attr-defined]
    assert models.warmups == 1 and state.batcher.running is False  # stopped on shutdown
    assert info.model.model == "fake-vlm" and info.model.kind == "vlm"
    assert info.adapters == ["base"]
    assert info.limits["max_items"] == 7 and info.limits["max_image_pixels"] == 40_000_000
    assert info.naive_mode is False
    assert {"python", "torch", "transformers", "open_clip_torch", "selfreward-vlm"} <= set(
        info.versions
    )
    assert info.versions["selfreward-vlm"] != "not installed"  # the distribution's real name


def test_ready_is_503_while_loading_then_200(tmp_path: Path, monkeypatch) -> None:
    release = threading.Event()

    def slow_load(settings: ServiceSettings) -> FakeModels:
        release.wait(10)
        return FakeModels()

    monkeypatch.setattr("selfreward_vlm.service.engine.load_models", slow_load, raising=False)
    app = build_app(fake_settings(tmp_path, warmup=False), batcher_factory=FakeBatcher)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        error = assert_error(client.get("/ready"), 503, "not_ready")
        assert "loading" in error["message"]
        assert_error(client.get("/info"), 503, "not_ready")
        assert_error(client.get("/v1/adapters"), 503, "not_ready")
        # the stores work before the models do
        assert client.get("/v1/datasets").json() == {"datasets": []}
        release.set()
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_failed_load_keeps_health_up_and_says_why(tmp_path: Path, monkeypatch) -> None:
    def broken_load(settings: ServiceSettings) -> FakeModels:
        raise OSError("no such model: fake-vlm")

    monkeypatch.setattr("selfreward_vlm.service.engine.load_models", broken_load, raising=False)
    app = build_app(fake_settings(tmp_path), batcher_factory=FakeBatcher)
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.app.state.selfreward.phase != "failed":  # type: ignore[attr-defined]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.get("/health").status_code == 200
        error = assert_error(client.get("/ready"), 503, "not_ready")
        assert "no such model" in error["message"]


def test_metrics_exposition_names(tmp_path: Path) -> None:
    with make_client(tmp_path) as client:
        client.get("/health")
        client.get("/nope")
        state = client.app.state.selfreward  # type: ignore[attr-defined]
        state.metrics.observe_batch(4, 0.001, 0.01)
        text = client.get("/metrics").text
    for name in (
        "selfreward_requests_total",
        "selfreward_request_duration_seconds_bucket",
        "selfreward_queue_duration_seconds",
        "selfreward_inference_duration_seconds",
        "selfreward_batch_size_bucket",
        "selfreward_tokens_scored_total",
        "selfreward_tokens_forwarded_total",
        "selfreward_tokens_cached_total",
        "selfreward_image_cache_hits_total",
        "selfreward_ready 1.0",
    ):
        assert name in text, name
    assert 'route="/health",status="200"' in text
    assert 'route="unmatched",status="404"' in text
    assert "selfreward_batch_size_count 1.0" in text


def test_bearer_auth(tmp_path: Path) -> None:
    with make_client(tmp_path, api_key="s3cret") as client:
        assert_error(client.get("/v1/datasets"), 401, "unauthorized", "authorization")
        wrong = client.get("/v1/datasets", headers={"Authorization": "Bearer nope"})
        assert_error(wrong, 401, "unauthorized")
        assert wrong.headers["www-authenticate"] == "Bearer"
        basic = client.get("/v1/datasets", headers={"Authorization": "Basic s3cret"})
        assert_error(basic, 401, "unauthorized")
        ok = client.get("/v1/datasets", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        for open_path in ("/health", "/ready", "/metrics", "/info"):
            assert client.get(open_path).status_code == 200, open_path


def test_404_405_and_request_ids(tmp_path: Path) -> None:
    with make_client(tmp_path) as client:
        missing = client.get("/v2/whatever")
        assert_error(missing, 404, "not_found")
        assert "/v2/whatever" in missing.json()["error"]["message"]
        wrong_method = client.put("/health")
        assert_error(wrong_method, 405, "method_not_allowed")
        assert "GET" in wrong_method.headers["allow"]
        first, second = client.get("/health"), client.get("/health")
        assert first.headers["x-request-id"] != second.headers["x-request-id"]
        assert float(first.headers["x-total-time-ms"]) >= 0
        echoed = client.get("/health", headers={"x-request-id": "trace-42"})
        assert echoed.headers["x-request-id"] == "trace-42"
        assert "x-request-id" in missing.headers


def test_unexpected_exception_is_a_500_and_the_next_request_works(tmp_path: Path) -> None:
    fake: Any = FakeModels()
    app = build_app(fake_settings(tmp_path), fake, batcher_factory=FakeBatcher)

    def boom() -> None:
        raise RuntimeError("kaboom")

    app.add_api_route("/v1/boom", boom)
    with TestClient(app) as client:  # raise_server_exceptions on: nothing may escape the app
        response = client.get("/v1/boom", headers={"x-request-id": "req-1"})
        error = assert_error(response, 500, "internal_error")
        assert "kaboom" not in error["message"] and "req-1" in error["message"]
        assert response.headers["x-request-id"] == "req-1"
        assert client.get("/health").status_code == 200


def test_cli_flags_fall_back_to_env(monkeypatch, tmp_path: Path) -> None:
    from selfreward_vlm.service.cli import build_settings

    monkeypatch.setenv("SELFREWARD_MODEL", "env-model")
    monkeypatch.setenv("SELFREWARD_PORT", "9123")
    monkeypatch.setenv("SELFREWARD_API_KEY", "from-env")
    settings = build_settings({"port": 9000, "model": None, "data_dir": tmp_path})
    assert settings.model == "env-model" and settings.port == 9000
    assert settings.api_key == "from-env" and settings.data_dir == tmp_path
    with pytest.raises(ValueError):
        build_settings({"device": "tpu"})


def test_set_flag_reaches_any_setting(monkeypatch, tmp_path: Path) -> None:
    """`--set FIELD=VALUE` sets fields without a flag of their own; a dedicated flag wins; an
    unknown field or a bad value is a usage error naming it, not a traceback."""
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from selfreward_vlm.service import app as app_module
    from selfreward_vlm.service.cli import serve_command

    seen: list[ServiceSettings] = []
    monkeypatch.setattr(app_module, "build_app", lambda settings: seen.append(settings))
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: None)
    cli = typer.Typer()
    cli.command()(serve_command)
    base = ["--model", "m", "--data-dir", str(tmp_path)]
    res = CliRunner().invoke(cli, [
        *base, "--set", "max_queue=512", "--set", "request-timeout-s=12.5",
        "--port", "9001", "--set", "port=1",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    (settings,) = seen
    assert (settings.max_queue, settings.request_timeout_s, settings.port) == (512, 12.5, 9001)
    res = CliRunner().invoke(cli, [*base, "--set", "max_qeue=1"])
    assert res.exit_code == 2 and "max_qeue" in res.output
    res = CliRunner().invoke(cli, [*base, "--set", "max_queue=lots"])
    assert res.exit_code == 2 and "max_queue" in res.output


def test_every_serve_flag_reaches_its_field(monkeypatch, tmp_path: Path) -> None:
    """Each dedicated flag (`service.cli.SERVE_FLAGS`, a line each) sets its settings field."""
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from selfreward_vlm.service import app as app_module
    from selfreward_vlm.service.cli import SERVE_FLAGS, serve_command

    seen: list[ServiceSettings] = []
    monkeypatch.setattr(app_module, "build_app", lambda settings: seen.append(settings))
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: None)
    cli = typer.Typer()
    cli.command()(serve_command)
    expected = {
        "model": "m", "clip": "c", "adapters": {"a": "/x"}, "served_model_name": ["s1", "s2"],
        "host": "0.0.0.0", "port": 9002, "device": "cpu", "dtype": "float32", "api_key": "k",
        "data_dir": tmp_path, "store": str(tmp_path / "s.db"), "adapter_store": tmp_path / "as",
        "naive_mode": True, "warmup": False, "torch_threads": 3, "model_path": "generic",
        "allow_image_urls": True, "image_url_allow_hosts": ["h"], "openrlhf_reward": "implicit",
        "openrlhf_aggregation": "sum",
    }  # fmt: skip
    assert {flag.field for flag in SERVE_FLAGS} == set(expected)
    res = CliRunner().invoke(cli, [
        "--model", "m", "--clip", "c", "--adapter", "a=/x", "--served-model-name", "s1",
        "--served-model-name", "s2", "--host", "0.0.0.0", "--port", "9002", "--device", "cpu",
        "--dtype", "float32", "--api-key", "k", "--data-dir", str(tmp_path),
        "--store", str(tmp_path / "s.db"), "--adapter-store", str(tmp_path / "as"), "--naive",
        "--no-warmup", "--torch-threads", "3", "--model-path", "generic", "--allow-image-urls",
        "--image-url-allow-host", "h", "--openrlhf-reward", "implicit",
        "--openrlhf-aggregation", "sum",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    (settings,) = seen
    assert {name: getattr(settings, name) for name in expected} == expected
    res = CliRunner().invoke(cli, ["--model", "m", "--adapter", "no-equals-sign"])
    assert res.exit_code == 2 and "NAME=DIR" in res.output


def test_grouped_params_take_one_parameters_place() -> None:
    """`core.params.grouped`: the table's parameters stand where the group was, every one is
    passed in the dict (defaults too), and a name given twice is refused."""
    import inspect

    from selfreward_vlm.core.params import grouped, keyword

    @grouped("opts", [keyword("a", int), keyword("b", str, "x")])
    def f(first: int, opts: dict, last: bool = False) -> tuple:
        return first, opts, last

    assert list(inspect.signature(f).parameters) == ["first", "a", "b", "last"]
    assert f(first=1, a=2) == (1, {"a": 2, "b": "x"}, False)
    with pytest.raises(ValueError, match="twice"):
        grouped("opts", [keyword("last", int)])(f.__wrapped__)
