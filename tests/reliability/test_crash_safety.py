"""kill -9 the service while clients publish pairs and upload adapters, then restart it.

After the restart: the store passes its integrity check; every pair a 2xx acknowledged is there
exactly once (a batch is all there or not at all); retrying the POSTs whose answer was lost
never duplicates anything; the adapter served under the name is one of the uploaded adapters,
whole (never a half-written mix), and every file in the shared adapter store matches its digest.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from selfreward_vlm.client import ScoringClient
from selfreward_vlm.service.adapters.shared import FILES, adapter_digest
from selfreward_vlm.service.store import open_store
from tests.api.test_store import make_pair
from tests.conftest import start_server, stop_server
from tests.reliability.test_replicas import lora, sum_logprob

BATCH = 10


def _publish(url: str, acked: list[int], tried: list[int], stop: threading.Event) -> None:
    """POST batches of 10 new pairs; record each batch tried and each one acknowledged."""
    with httpx.Client(timeout=30) as http:
        for b in range(100_000):
            if stop.is_set():
                return
            pairs = [make_pair(b * BATCH + k).model_dump(mode="json") for k in range(BATCH)]
            tried.append(b)
            try:
                response = http.post(f"{url}/v1/datasets/crash/pairs", json={"pairs": pairs})
            except httpx.HTTPError:
                return
            if response.status_code == 200:
                acked.append(b)


def _upload(url: str, dirs: list[Path], acked: list[int], stop: threading.Event) -> None:
    """Upload two different adapters under one name, in turn; record each acknowledged."""
    with ScoringClient(url, max_retries=0, timeout=30) as client:
        for i in range(100_000):
            if stop.is_set():
                return
            try:
                client.upload_adapter("hot", dirs[i % 2])
            except Exception:
                return
            acked.append(i % 2)


@pytest.mark.slow
def test_kill_9_while_publishing_and_uploading(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    dirs = [lora(tiny_models, tmp_path / f"lora{i}", 10 + i) for i in range(2)]
    data = tmp_path / "data"
    proc, url = start_server(tiny_models, data, "--torch-threads", "1")
    acked_pairs: list[int] = []
    tried_pairs: list[int] = []
    acked_adapters: list[int] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_publish, args=(url, acked_pairs, tried_pairs, stop)),
        threading.Thread(target=_upload, args=(url, dirs, acked_adapters, stop)),
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while (len(acked_pairs) < 10 or len(acked_adapters) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: both clients have requests in flight
    proc.wait()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert len(acked_pairs) >= 10 and len(acked_adapters) >= 2

    store = open_store(data / "selfreward.db")  # what the crash left, before any restart
    try:
        assert store.integrity_check() == []
    finally:
        store.close()
    for folder in (data / "adapter-store").iterdir():  # only whole, digest-true copies
        if folder.name != ".tmp":
            assert adapter_digest(folder) == folder.name

    proc, url = start_server(tiny_models, data, "--torch-threads", "1")
    try:
        with ScoringClient(url) as client:
            _check_pairs(client, acked_pairs, tried_pairs)
            _check_adapter(client, dirs, data)
    finally:
        stop_server(proc)


def _check_pairs(client: ScoringClient, acked: list[int], tried: list[int]) -> None:
    ids = [p.id for p in client.iter_pairs("crash", page_size=500)]
    assert len(ids) == len(set(ids))
    batches = {int(i[1:]) // BATCH for i in ids}
    for b in batches:  # a batch is one transaction: all of it or none of it
        assert {f"p{b * BATCH + k:04d}" for k in range(BATCH)} <= set(ids)
    assert set(acked) <= batches  # every acknowledged batch survived
    # the client retries every POST whose answer it did not get: nothing is added twice
    lost = [b for b in tried if b not in acked]
    for b in [*lost, acked[-1]]:
        out = client.upsert_pairs("crash", [make_pair(b * BATCH + k) for k in range(BATCH)])
        assert out.inserted + out.duplicates == BATCH
    again = [p.id for p in client.iter_pairs("crash", page_size=500)]
    assert len(again) == len(set(again)) == BATCH * len(set(tried))
    assert client.list_datasets().datasets[0].count == len(again)


def _check_adapter(client: ScoringClient, dirs: list[Path], data: Path) -> None:
    served = sum_logprob(client, "hot")
    for i, folder in enumerate(dirs):
        client.upload_adapter(f"ref{i}", folder)
    refs = [sum_logprob(client, f"ref{i}") for i in range(2)]
    assert abs(refs[0] - refs[1]) > 1e-3
    assert min(abs(served - r) for r in refs) < 1e-4  # exactly one of the uploads, whole
    local = data / "adapters" / "hot"
    if local.is_dir():  # the replica's own copy is whole too
        blobs = [tuple((d / f).read_bytes() for f in FILES) for d in dirs]
        assert tuple((local / f).read_bytes() for f in FILES) in blobs
