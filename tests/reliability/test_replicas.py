"""Replicas that share state.

- Images: two replicas with separate stores; the client round-robins between them, and a
  replica that lacks an image answers `404 image_not_found`, which the client answers by
  uploading the bytes there and retrying (sync and async clients; in-process apps).
- Two real replicas + one PostgreSQL on loopback: an adapter uploaded through A is used by B
  (and replaced or deleted through either, neither serves a stale version); `selfreward pairs`
  spreads over both, B is `kill -9`ed mid-run, the run finishes on A, and every prompt's pairs
  are in the store exactly once.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient

from selfreward_vlm.client import AsyncScoringClient, ScoringClient
from selfreward_vlm.client.errors import NotFoundError
from selfreward_vlm.core.schemas import PreferencePair
from selfreward_vlm.service.adapters.shared import REGISTRY_CACHE_S, adapter_digest
from selfreward_vlm.service.store import open_store
from tests.api.test_store import make_pair
from tests.client.test_pairs_cli import cli, env, read_pairs, wait_for_done
from tests.conftest import ROOT, stop_server, wait_ready

PROMPT, TEXT = "Describe the image.", " There is a red circle."


def png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- images


class Router(httpx.BaseTransport):
    """Sends each request to the in-process app its host names; counts image uploads."""

    def __init__(self, apps: dict[str, TestClient]) -> None:
        self.apps = apps
        self.uploads: Counter[str] = Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if request.url.path == "/v1/images":
            self.uploads[host] += 1
        request.read()
        response = self.apps[host].request(
            request.method, str(request.url), content=request.content, headers=request.headers
        )
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.content
        )


class AsyncRouter(httpx.AsyncBaseTransport):
    def __init__(self, router: Router) -> None:
        self.router = router

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return await anyio.to_thread.run_sync(self.router.handle_request, request)


@pytest.fixture(scope="module")
def two_apps(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Router]:
    """Replicas `a` and `b` in-process: the tiny models, two separate SQLite stores."""
    from selfreward_vlm.service.app import build_app
    from selfreward_vlm.service.engine import load_models
    from selfreward_vlm.service.settings import ServiceSettings

    settings = {"model": str(tiny_models["vlm"]), "clip": str(tiny_models["clip"])}
    apps = {}
    for name in ("a", "b"):
        data = tmp_path_factory.mktemp(f"replica-{name}")
        models = load_models(ServiceSettings(**settings))  # each replica its own engine
        app = build_app(ServiceSettings(**settings, data_dir=data, warmup=False), models)
        apps[name] = TestClient(app).__enter__()
    yield Router(apps)
    for client in apps.values():
        client.__exit__(None, None, None)


def test_client_reuploads_an_image_a_replica_lacks(two_apps: Router) -> None:
    router = two_apps
    client = ScoringClient(["http://a", "http://b"], transport=router)
    image = client.upload_image(png((200, 30, 30)))  # turn 0: replica a
    assert dict(router.uploads) == {"a": 1}
    raw = httpx.Client(transport=router).get(f"http://b/v1/images/{image}")
    assert raw.status_code == 404 and raw.json()["error"]["type"] == "image_not_found"
    on_b = client.clip(image, ["a red square", "a cat"])  # turn 1: b lacks it, gets it, answers
    on_a = client.clip(image, ["a red square", "a cat"])  # turn 2: a
    assert dict(router.uploads) == {"a": 1, "b": 1}
    assert [r.cosine for r in on_b.results] == pytest.approx([r.cosine for r in on_a.results])
    client.clip(image, ["a dog"])
    assert dict(router.uploads) == {"a": 1, "b": 1}  # each replica got the bytes once
    # a pair naming an image one replica lacks: the pair upsert re-uploads too
    second = client.upload_image(png((10, 200, 30)))  # turn 4: a
    pair = make_pair(1, images=[second])
    assert client.upsert_pairs("ds", [pair]).inserted == 1  # turn 5: b, after a re-upload
    assert dict(router.uploads) == {"a": 2, "b": 2}
    page = httpx.Client(transport=router).get("http://b/v1/datasets/ds/pairs").json()
    assert [p["id"] for p in page["pairs"]] == ["p0001"]
    client.close()


def test_async_client_reuploads_too(two_apps: Router) -> None:
    router = two_apps
    before = dict(router.uploads)

    async def run() -> list[float]:
        async with AsyncScoringClient(["http://a", "http://b"], transport=AsyncRouter(router)) as c:
            image = await c.upload_image(png((30, 30, 220)))
            out = await asyncio.gather(*(c.clip(image, ["a blue square"]) for _ in range(4)))
            return [r.results[0].cosine for r in out]

    cosines = asyncio.run(run())
    assert cosines == pytest.approx([cosines[0]] * 4)
    after = dict(router.uploads)
    assert after["a"] == before["a"] + 1
    # b lacked it: each of its two concurrent requests may have re-uploaded (idempotent)
    assert 1 <= after["b"] - before["b"] <= 2


def test_registry_adapter_without_files_is_a_clear_503(two_apps: Router) -> None:
    """A registry entry whose files this replica cannot read (adapter store not shared): the
    request that triggers the load gets 503 adapter_loading, the next 503 adapter_unavailable
    naming the adapter store; the replica keeps serving everything else."""
    client = two_apps.apps["b"]
    state = client.app.state.selfreward  # type: ignore[attr-defined]
    state.store.register_adapter("ghost", "0" * 64)
    body = {"prompt": PROMPT, "continuations": [TEXT], "model": "ghost"}
    first = client.post("/v1/logprobs", json=body)
    assert first.status_code == 503 and first.json()["error"]["type"] == "adapter_loading"
    deadline = time.monotonic() + 30
    while (again := client.post("/v1/logprobs", json=body)).json()["error"]["type"] != (
        "adapter_unavailable"
    ):
        assert time.monotonic() < deadline, again.json()
        time.sleep(0.05)
    assert again.status_code == 503 and "adapter store" in again.json()["error"]["message"]
    assert client.post("/v1/logprobs", json={**body, "model": "base"}).status_code == 200
    assert client.get("/health").status_code == 200


def test_an_unavailable_adapter_is_retried_later(
    two_apps: Router, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Review finding 3: a version whose files could not be read once stayed 503
    `adapter_unavailable` until a restart; it is tried again after `retry_failed_s`."""
    client = two_apps.apps["b"]
    state = client.app.state.selfreward  # type: ignore[attr-defined]
    shared = state.shared_adapters
    folder = lora(tiny_models, tmp_path / "lora", seed=7)
    digest = adapter_digest(folder)
    state.store.register_adapter("later", digest)  # its files are not there yet
    body = {"prompt": PROMPT, "continuations": [TEXT], "model": "later"}

    def kind_after(wanted: str) -> httpx.Response:
        deadline = time.monotonic() + 60
        while (r := client.post("/v1/logprobs", json=body)).status_code != 200 and (
            r.json()["error"]["type"] != wanted
        ):
            assert time.monotonic() < deadline, r.json()
            time.sleep(0.05)
        return r

    assert kind_after("adapter_unavailable").status_code == 503
    shutil.copytree(folder, shared.root / digest)  # the shared dir is readable again
    shared.retry_failed_s = 0.5
    assert kind_after("none: answered").status_code == 200


def test_requests_do_not_ask_the_store_each_time(
    two_apps: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding 4: every request naming an adapter queried the store on the event loop
    (a slow store or an exhausted pool stalled every request and probe); a lookup now serves
    the requests of the next `REGISTRY_CACHE_S`."""
    client = two_apps.apps["a"]
    state = client.app.state.selfreward  # type: ignore[attr-defined]
    asked: list[str] = []
    lookup = state.store.adapter
    monkeypatch.setattr(state.store, "adapter", lambda n: asked.append(n) or lookup(n))
    state.shared_adapters.cache_s = 60.0  # this test's requests all fall within it
    body = {"prompt": PROMPT, "continuations": [TEXT], "model": "nobody"}
    for _ in range(10):
        r = client.post("/v1/logprobs", json=body)
        assert r.status_code == 404 and r.json()["error"]["field"] == "model", r.text
    assert asked == ["nobody"]
    state.shared_adapters.cache_s = 0.0
    client.post("/v1/logprobs", json=body)
    assert asked == ["nobody", "nobody"]  # past the cache time: asked again


def _past_the_deadline(fn):  # type: ignore[no-untyped-def]
    """`fn`, run in a worker thread, finishing only after the request's deadline passed."""
    from selfreward_vlm.service.deadlines import current_deadline

    calls = []

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = fn(*args, **kwargs)
        calls.append(args[0])
        time.sleep(max(0.0, (current_deadline.get() or 0) - time.perf_counter()) + 0.3)
        return out

    return slow, calls


def test_a_deadline_never_cuts_an_upload_or_delete_in_half(
    two_apps: Router, tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding 1: a deadline that passes while this replica loads an upload (or
    unloads a deleted adapter) used to cancel the registry update that follows: this replica
    served files no other replica would ever load. The pair now runs to its end."""
    client = two_apps.apps["a"]
    state = client.app.state.selfreward  # type: ignore[attr-defined]
    adapters, shared = state.models.engine.adapters, state.shared_adapters
    folder = lora(tiny_models, tmp_path / "lora", seed=5)
    files = {f: (f, (folder / f).read_bytes()) for f in ("adapter_config.json",
                                                         "adapter_model.safetensors")}  # fmt: skip
    slow_load, loads = _past_the_deadline(adapters.load)
    monkeypatch.setattr(adapters, "load", slow_load)
    headers = {"x-request-timeout-ms": "3000"}
    up = client.post("/v1/adapters", data={"name": "cut"}, files=files, headers=headers)
    assert loads == ["cut"], up.text  # the deadline passed during the load
    record = state.store.adapter("cut")
    assert record is not None and not record.deleted, up.text
    assert shared.loaded["cut"] == record.version and "cut" in adapters.names()

    slow_delete, deletes = _past_the_deadline(adapters.delete)
    monkeypatch.setattr(adapters, "delete", slow_delete)
    gone = client.delete("/v1/adapters/cut", headers=headers)
    assert deletes == ["cut"], gone.text
    record = state.store.adapter("cut")
    assert record is not None and record.deleted, gone.text
    assert shared.loaded["cut"] == record.version and "cut" not in adapters.names()


# --------------------------------------------------------------------------- PostgreSQL


def lora(tiny_models: dict[str, Path], out: Path, seed: int) -> Path:
    """A PEFT LoRA on the tiny VLM's language model with random (non-zero) A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_models["vlm"])
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)",
        lora_dropout=0.0, init_lora_weights=False,
    )  # fmt: skip
    get_peft_model(model, config).save_pretrained(str(out))
    return out


def start_replicas(
    tiny_models: dict[str, Path], root: Path, store: str, n: int = 2
) -> list[tuple[subprocess.Popen, str]]:
    """n real servers on loopback, started together, sharing `store` and one adapter store."""
    from selfreward_vlm.localserver import free_port

    started, logs = [], []
    for i in range(n):
        port = free_port()
        cmd = [
            sys.executable, "-m", "selfreward_vlm.service", "--model", str(tiny_models["vlm"]),
            "--clip", str(tiny_models["clip"]), "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(root / f"replica-{i}"), "--store", store,
            "--adapter-store", str(root / "adapter-store"), "--torch-threads", "1",
        ]  # fmt: skip
        log = root / f"replica-{i}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT)
        started.append((proc, f"http://127.0.0.1:{port}"))
        logs.append(log)
    for (proc, url), log in zip(started, logs, strict=True):
        wait_ready(url, proc, log=log)
    return started


def sum_logprob(client: ScoringClient, model: str) -> float:
    return client.logprobs(PROMPT, [TEXT], model=model).results[0].sum_logprob


def requests_served(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("selfreward_requests_total{") and "/v1/" in line
    )


@pytest.mark.slow
def test_two_replicas_one_postgres(
    tiny_models: dict[str, Path], pg_url: str, tmp_path: Path
) -> None:
    replicas = start_replicas(tiny_models, tmp_path, pg_url)
    (_, url_a), (proc_b, url_b) = replicas
    try:
        _adapters_follow_the_registry(tiny_models, tmp_path, url_a, url_b)
        _pairs_survive_a_dead_replica(tmp_path, pg_url, url_a, url_b, proc_b)
    finally:
        for proc, _ in replicas:
            if proc.poll() is None:
                stop_server(proc)


def _adapters_follow_the_registry(
    tiny_models: dict[str, Path], tmp: Path, url_a: str, url_b: str
) -> None:
    first, second = lora(tiny_models, tmp / "lora1", 1), lora(tiny_models, tmp / "lora2", 2)
    with ScoringClient(url_a) as a, ScoringClient(url_b) as b:
        base = sum_logprob(b, "base")
        a.upload_adapter("iter1", first)
        # B loads it in a worker thread: meanwhile a 503 (the client retries), never a stall
        raw = httpx.post(f"{url_b}/v1/logprobs", json={"prompt": PROMPT, "continuations": [TEXT],
                                                      "model": "iter1"})  # fmt: skip
        assert raw.status_code == 503 and raw.json()["error"]["type"] == "adapter_loading"
        on_b, on_a = sum_logprob(b, "iter1"), sum_logprob(a, "iter1")
        assert on_b == pytest.approx(on_a, abs=1e-4) and abs(on_b - base) > 1e-3
        assert a.info().adapter_versions == b.info().adapter_versions == {"iter1": 1}
        b.upload_adapter("iter1", second)  # replaced through B: A must not serve v1 any more
        time.sleep(REGISTRY_CACHE_S)  # ... once A's last registry lookup has expired
        v2 = sum_logprob(a, "iter1")
        assert v2 == pytest.approx(sum_logprob(b, "iter1"), abs=1e-4)
        assert abs(v2 - on_a) > 1e-3
        assert a.info().adapter_versions == {"iter1": 2}
        a.delete_adapter("iter1")
        time.sleep(REGISTRY_CACHE_S)
        with pytest.raises(NotFoundError):
            sum_logprob(b, "iter1")
        assert b.info().adapter_versions == {}
        assert [x.name for x in b.list_adapters().adapters] == ["base"]


def _pairs_survive_a_dead_replica(
    tmp: Path, pg_url: str, url_a: str, url_b: str, proc_b: subprocess.Popen
) -> None:
    from PIL import Image

    images = tmp / "images"
    images.mkdir()
    lines = []
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 100, 200)).save(images / f"r{i}.png")
        lines.append({"id": f"r{i}", "image": f"r{i}.png", "prompt": PROMPT})
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp / "pairs.jsonl"
    cmd = cli(f"{url_a},{url_b}", prompts, images, out, "--method", "csr", "--max-steps", "2",
              "--max-new-tokens", "8", "--concurrency", "2", "--publish", "shared")  # fmt: skip
    served_by_a = requests_served(url_a)
    run = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_done(out, 2, run, timeout=300)
    assert requests_served(url_b) > 0 and requests_served(url_a) > served_by_a  # both served
    os.kill(proc_b.pid, signal.SIGKILL)
    proc_b.wait()
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr
    done = [json.loads(d)["prompt_id"] for d in Path(f"{out}.done").read_text().splitlines()]
    assert sorted(done) == sorted(x["id"] for x in lines)  # every prompt finished
    written = [PreferencePair.model_validate(p) for p in read_pairs(out)]
    store = open_store(pg_url)
    try:
        stored = list(store.iter_pairs("shared"))
        assert store.integrity_check() == []
    finally:
        store.close()
    ids = [p.id for p in stored]
    assert len(ids) == len(set(ids))  # exactly once
    assert sorted(ids) == sorted(p.id for p in written)
    per_prompt = Counter(p.prompt_id for p in stored)
    assert per_prompt == Counter(p.prompt_id for p in written)
