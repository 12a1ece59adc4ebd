"""Start the scoring service as a subprocess on loopback (demo, benchmark, tests)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_service(
    model: str | Path,
    clip: str | Path | None,
    data_dir: str | Path,
    *extra: str,
    log_file: str | Path | None = None,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run `python -m selfreward_vlm.service` on a free loopback port until the block exits.

    Yields the server's base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "selfreward_vlm.service", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data_dir), *extra]  # fmt: skip
    if clip is not None:
        cmd += ["--clip", str(clip)]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **(env or {})}
    log: Any = open(log_file, "a") if log_file else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited with {proc.returncode} (log: {log_file})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service was not ready after {timeout:.0f}s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not subprocess.DEVNULL:
            log.close()
