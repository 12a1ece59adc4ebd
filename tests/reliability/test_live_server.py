"""A real server on loopback (`python -m selfreward_vlm.service`, uvicorn, tiny models): the
shell's routes over real HTTP, and concurrent requests that all come back right."""

from __future__ import annotations

import asyncio
import io
import signal
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.api.test_store import make_pair

pytestmark = pytest.mark.slow


def png(seed: int, size: tuple[int, int] = (32, 32)) -> bytes:
    image = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_probes_and_info(live_server: str, tiny_models: dict[str, Path]) -> None:
    health = httpx.get(f"{live_server}/health").json()
    assert health["status"] == "ok" and health["store"]["state"] == "ok"
    assert health["store"]["where"].startswith("sqlite:") and health["store"]["errors"] == {}
    assert httpx.get(f"{live_server}/ready").json() == {"status": "ready", "store": "ok"}
    info = httpx.get(f"{live_server}/info").json()
    assert info["model"]["kind"] == "vlm"
    assert info["model"]["model"] == str(tiny_models["vlm"])
    assert info["model"]["clip"] is not None
    assert "base" in info["adapters"]
    assert info["limits"]["max_items"] > 0 and "torch" in info["versions"]
    metrics = httpx.get(f"{live_server}/metrics").text
    assert "selfreward_requests_total" in metrics and "selfreward_ready 1.0" in metrics
    for name in (
        "selfreward_live_rows",
        "selfreward_live_generations",
        "selfreward_decode_step_rows_bucket",
        "selfreward_decode_step_duration_seconds",
    ):
        assert name in metrics  # fmt: skip
    response = httpx.get(f"{live_server}/nowhere")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"
    assert response.headers["x-request-id"] and float(response.headers["x-total-time-ms"]) >= 0


def test_image_round_trip(live_server: str) -> None:
    data = png(1, (40, 24))
    uploaded = httpx.post(
        f"{live_server}/v1/images", content=data, headers={"content-type": "image/png"}
    )
    assert uploaded.status_code == 200, uploaded.text
    body = uploaded.json()
    assert (body["width"], body["height"]) == (40, 24)
    again = httpx.post(f"{live_server}/v1/images", files={"file": ("a.png", data, "image/png")})
    assert again.json()["id"] == body["id"]
    fetched = httpx.get(f"{live_server}/v1/images/{body['id']}")
    assert fetched.content == data and fetched.headers["content-type"] == "image/png"


def test_store_round_trip(live_server: str) -> None:
    pairs = [make_pair(i).model_dump(mode="json") for i in range(12)]
    url = f"{live_server}/v1/datasets/live-rt/pairs"
    first = httpx.post(url, json={"pairs": pairs}).json()
    assert (first["inserted"], first["duplicates"], first["total"]) == (12, 0, 12)
    second = httpx.post(url, json={"pairs": pairs[:5]}).json()
    assert (second["inserted"], second["duplicates"], second["total"]) == (0, 5, 12)
    got, after = [], None
    while True:
        params = {"limit": 5, **({"after": after} if after else {})}
        page = httpx.get(url, params=params).json()
        got += page["pairs"]
        after = page["next_cursor"]
        if after is None:
            break
    assert got == pairs
    names = {
        d["name"]: d["count"] for d in httpx.get(f"{live_server}/v1/datasets").json()["datasets"]
    }
    assert names["live-rt"] == 12


def test_concurrent_uploads_and_upserts(live_server: str) -> None:
    """16 clients at once: each uploads its own image and writes pairs that reference it;
    every response is right and every pair lands exactly once."""
    n = 16

    async def one(client: httpx.AsyncClient, i: int) -> tuple[str, dict]:
        data = png(100 + i)
        up = await client.post("/v1/images", content=data, headers={"content-type": "image/png"})
        up.raise_for_status()
        image_id = up.json()["id"]
        fetched = await client.get(f"/v1/images/{image_id}")
        assert fetched.content == data
        pairs = [
            make_pair(i * 10 + k).model_copy(update={"images": [image_id]}).model_dump(mode="json")
            for k in range(3)
        ]
        res = await client.post("/v1/datasets/live-conc/pairs", json={"pairs": pairs})
        res.raise_for_status()
        return image_id, res.json()

    async def main() -> list[tuple[str, dict]]:
        async with httpx.AsyncClient(base_url=live_server, timeout=60) as client:
            return await asyncio.gather(*(one(client, i) for i in range(n)))

    start = time.monotonic()
    results = asyncio.run(main())
    assert time.monotonic() - start < 60
    assert len({image_id for image_id, _ in results}) == n
    assert all(r["inserted"] == 3 and r["duplicates"] == 0 for _, r in results)
    page = httpx.get(f"{live_server}/v1/datasets/live-conc/pairs", params={"limit": 1000}).json()
    ids = [p["id"] for p in page["pairs"]]
    assert len(ids) == len(set(ids)) == 3 * n and page["next_cursor"] is None


def test_acknowledged_writes_survive_kill_9_of_the_server(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Pairs and images the server acknowledged are there after SIGKILL and a restart."""
    from tests.conftest import start_server, stop_server

    data_dir = tmp_path / "data"
    proc, url = start_server(tiny_models, data_dir, "--no-warmup")
    try:
        image = httpx.post(f"{url}/v1/images", content=png(7), timeout=30).json()
        pairs = [
            make_pair(i).model_copy(update={"images": [image["id"]]}).model_dump(mode="json")
            for i in range(20)
        ]
        ack = httpx.post(f"{url}/v1/datasets/durable/pairs", json={"pairs": pairs}, timeout=30)
        assert ack.json()["inserted"] == 20
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    proc, url = start_server(tiny_models, data_dir, "--no-warmup")
    try:
        page = httpx.get(f"{url}/v1/datasets/durable/pairs", params={"limit": 100}).json()
        assert [p["id"] for p in page["pairs"]] == [p["id"] for p in pairs]
        assert httpx.get(f"{url}/v1/images/{image['id']}").content == png(7)
    finally:
        stop_server(proc)
