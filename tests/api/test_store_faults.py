"""What store failures mean to a caller (service.store.faults), fast and in-process: the
classification of each back end's errors, and a locked SQLite store answered 503 with
Retry-After (never a 500), reported by /health and counted by kind."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from selfreward_vlm.service.errors import InsufficientStorageError, StoreUnavailableError
from selfreward_vlm.service.store.faults import StoreHealth, classify
from tests.api.test_service_shell import make_client
from tests.api.test_store import make_pair


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (psycopg.errors.AdminShutdown("terminating connection"), ("shutdown", False)),
        (psycopg.OperationalError("connection is lost"), ("connection", False)),
        (PoolTimeout("couldn't get a connection after 1.00 sec"), ("pool_timeout", False)),
        (psycopg.errors.SerializationFailure("could not serialize"), ("conflict", False)),
        (psycopg.errors.DeadlockDetected("deadlock"), ("conflict", False)),
        (psycopg.errors.DiskFull("could not extend file"), ("disk_full", True)),
        (psycopg.errors.TooManyConnections("too many clients"), ("resources", False)),
        (sqlite3.OperationalError("database or disk is full"), ("disk_full", True)),
        (sqlite3.OperationalError("database is locked"), ("busy", False)),
        (OSError(errno.ENOSPC, "No space left on device"), ("disk_full", True)),
        # bugs stay bugs (500): a constraint this code never expects to break, a typo in SQL
        (psycopg.errors.UniqueViolation("duplicate key"), None),
        (sqlite3.OperationalError("no such table: pairz"), None),
        (ValueError("bug"), None),
    ],
)
def test_classify(exc: BaseException, expected: tuple[str, bool] | None) -> None:
    assert classify(exc) == expected


def test_guard_translates_and_remembers() -> None:
    health = StoreHealth("sqlite:/x")
    seen: list[str] = []
    health.on_error = seen.append
    with pytest.raises(StoreUnavailableError) as err, health.guard(writing=True):
        raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    assert err.value.status_code == 503 and err.value.retry_after == 1.0
    assert health.state == "unavailable" and seen == ["shutdown"]
    with health.guard(writing=False):
        pass  # a read that works: the store is back
    assert health.state == "ok"
    with pytest.raises(InsufficientStorageError) as full, health.guard(writing=True):
        raise sqlite3.OperationalError("database or disk is full")
    assert full.value.status_code == 507 and full.value.field == "store"
    with health.guard(writing=False):
        pass
    assert health.state == "full"  # a read proves nothing about space; a write does
    with health.guard(writing=True):
        pass
    assert health.state == "ok" and health.report()["errors"] == {"shutdown": 1, "disk_full": 1}
    with pytest.raises(ValueError), health.guard(writing=True):
        raise ValueError("a bug is not translated")


def test_locked_sqlite_store_is_a_503_with_retry_after(tmp_path: Path) -> None:
    with make_client(tmp_path, store_timeout_s=0.2) as client:
        db = client.app.state.selfreward.store.path  # type: ignore[attr-defined]
        body = {"pairs": [make_pair(0).model_dump()]}
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
        try:
            r = client.post("/v1/datasets/d/pairs", json=body)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["type"] == "store_unavailable"
            assert r.headers["retry-after"] == "1"
            assert client.get("/ready").json() == {"status": "ready", "store": "unavailable"}
            metrics = client.get("/metrics").text
            assert 'selfreward_store_errors_total{kind="busy"} 1.0' in metrics
            # /health's own round trip is a read, which WAL mode still serves: reads work
            health = client.get("/health").json()["store"]
            assert health["errors"] == {"busy": 1} and "database is locked" in health["last_error"]
            assert health["state"] == "ok"
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert client.post("/v1/datasets/d/pairs", json=body).status_code == 200
        assert client.get("/health").json()["store"]["state"] == "ok"
