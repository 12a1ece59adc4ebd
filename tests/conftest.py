"""Shared fixtures: tiny offline models, an in-process app, a real server on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from selfreward_vlm.localserver import free_port
from tests.families_fixtures import (  # noqa: F401  (session fixtures shared by test_families*)
    family_adapters,
    family_dirs,
    family_engine,
    reference_model,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models, and a test process plus server subprocesses sharing two cores: one torch thread
# each is much faster than competing thread pools (see ServiceSettings.torch_threads).
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
# Tests send SIGINT to the CLIs they start (Ctrl-C, then resume). A test run started in the
# background by a script (`make test &`) begins with SIGINT ignored, and an ignored signal
# stays ignored across fork and exec: the CLIs would not see it. A handled one is reset to
# the default on exec, so the children start as from a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random VLM, text LM and open_clip model, built offline into a temp dir."""
    from selfreward_vlm.tiny import build_all

    return build_all(tmp_path_factory.mktemp("tiny-models"))


def wait_ready(
    base_url: str,
    proc: subprocess.Popen | None = None,
    timeout: float = 120,
    log: Path | None = None,
) -> None:
    """Poll GET /ready until 200 (or fail with the end of the server's `log`, if given).
    Servers write to a log file, never a pipe (see `start_server`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = log.read_text(errors="replace")[-20000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base_url} not ready after {timeout}s")


def start_server(
    tiny_models: dict[str, Path], data_dir: Path, *extra: str, model_key: str = "vlm"
) -> tuple[subprocess.Popen, str]:
    """Start the service on loopback with the tiny models; return (process, base_url).

    The server's output goes to `data_dir/server.log`, never to a pipe: nobody reads a pipe
    while tests run, and once its 64 KiB buffer fills with access-log lines the server blocks
    on its next log write and every request hangs (it did, late in a CI run).
    """
    port = free_port()
    cmd = [
        sys.executable, "-m", "selfreward_vlm.service",
        "--model", str(tiny_models[model_key]),
        "--clip", str(tiny_models["clip"]),
        "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(data_dir),
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    wait_ready(base_url, proc, log=log)
    return proc, base_url


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def live_server(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real uvicorn server on loopback serving the tiny VLM + tiny CLIP; yields its URL."""
    proc, base_url = start_server(tiny_models, tmp_path_factory.mktemp("live-data"))
    try:
        yield base_url
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server URL for the session (see tests/pgserver.py; skips without one)."""
    from tests.pgserver import server_url

    yield from server_url()


@pytest.fixture()
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    from tests.pgserver import fresh_database

    yield from fresh_database(pg_server)
