"""Helpers of the reliability suite (fuzz, load, deadlines, shutdown, auth walk).

Servers here are real `python -m selfreward_vlm.service` processes on loopback with the tiny
models, configured through `SELFREWARD_*` environment variables; their output goes to a file
(a pipe nobody reads would block a chatty server).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from selfreward_vlm.localserver import free_port
from tests.conftest import ROOT, wait_ready

KEYS = {"api": "test-api-key-1", "read": "test-read-key-2", "admin": "test-admin-key-3"}
OPENAPI = json.loads((ROOT / "openapi" / "openapi.json").read_text())


@dataclass
class Server:
    """A running service process."""

    proc: subprocess.Popen
    url: str
    log: Path
    data_dir: Path

    def headers(self, role: str = "admin") -> dict[str, str]:
        # Capitalised: Schemathesis drops exactly "Authorization" to probe for ignored auth.
        return {"Authorization": f"Bearer {KEYS[role]}"}

    def rss_kib(self) -> tuple[int, int]:
        """(current RSS, peak RSS) of the server process, KiB, from /proc."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        now = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        return now, peak

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the server's /metrics (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(name):
                head, _, value = line.rpartition(" ")
                inner = head[len(name) :].strip("{}")
                if ",".join(sorted(inner.split(","))) == want or (not want and not inner):
                    return float(value)
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start(
    tiny_models: dict[str, Path], data_dir: Path, *, keys: bool = False,
    log_level: str = "warning", **env: object,
) -> Server:  # fmt: skip
    """Start a service on loopback; `env` items become `SELFREWARD_<NAME>` variables."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    environ.update({f"SELFREWARD_{k.upper()}": str(v) for k, v in env.items()})
    if keys:
        environ.update({f"SELFREWARD_{r.upper()}_KEY": k for r, k in KEYS.items()})
    log = data_dir / "server.log"
    cmd = [
        sys.executable, "-m", "selfreward_vlm.service",
        "--model", str(tiny_models["vlm"]), "--clip", str(tiny_models["clip"]),
        "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
        "--torch-threads", "1", "--log-level", log_level,
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log, data_dir)
    try:
        wait_ready(server.url, proc)
    except Exception:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}") from None
    return server


_SHARED: dict[str, Server] = {}


@pytest.fixture(scope="session")
def keyed_server(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server with all three keys, a small queue (so overload is cheap to reach),
    `request_timeout_s` of 60 and an info-level log (access lines: keys must not leak there);
    shared by the auth walk, the fuzzer, the load test and others.

    Each test module imports this fixture, which pytest registers once per module: the server
    itself is kept here, so the whole session starts one (stopped at exit)."""
    server = _SHARED.get("keyed")
    if server is None or server.proc.poll() is not None:
        server = start(
            tiny_models, tmp_path_factory.mktemp("keyed-server"), keys=True,
            log_level="info", max_queue=16, request_timeout_s=60,
        )  # fmt: skip
        _SHARED["keyed"] = server
        atexit.register(server.stop)
    yield server


def operations() -> Iterator[tuple[str, str, dict]]:
    """(method, path, operation) of every operation in openapi/openapi.json."""
    for path, item in OPENAPI["paths"].items():
        for method, op in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield method.upper(), path, op


def concrete(path: str) -> str:
    """A path template with its parameters filled by harmless values."""
    return re.sub(r"\{[^}]+\}", "x" * 8, path)


def reference_numbers(server: Server, image_id: str) -> dict[str, list[float]]:
    """Scores that must not change under fuzzing or load: logprobs and reward of fixed text."""
    body = {"prompt": "Describe the image.", "image": {"id": image_id}}
    lp = httpx.post(
        f"{server.url}/v1/logprobs", headers=server.headers("api"), timeout=60,
        json={**body, "continuations": ["A red square.", "Blue sky"]},
    )  # fmt: skip
    rw = httpx.post(
        f"{server.url}/v1/reward", headers=server.headers("api"), timeout=60,
        json={**body, "candidates": ["A red square.", "Blue sky"]},
    )  # fmt: skip
    assert lp.status_code == 200 and rw.status_code == 200, (lp.text, rw.text)
    return {
        "logprobs": [t for r in lp.json()["results"] for t in r["token_logprobs"]],
        "reward": [r["reward"] for r in rw.json()["results"]],
    }


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 32) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


def upload_png(server: Server, data: bytes | None = None) -> str:
    r = httpx.post(
        f"{server.url}/v1/images", content=data or png_bytes(), timeout=30,
        headers={**server.headers("api"), "content-type": "image/png"},
    )  # fmt: skip
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def report(kind: str, **figures: object) -> None:
    """Append figures as a JSON line to `$SELFREWARD_RELIABILITY_REPORT` (make reliability)."""
    path = os.environ.get("SELFREWARD_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": kind, **figures}) + "\n")
