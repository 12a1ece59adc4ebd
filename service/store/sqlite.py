"""The embedded store: one SQLite file, the default for a single replica.

WAL mode with `synchronous=FULL`: a batch the service acknowledged is on disk and survives
`kill -9` of the server. Every write is one `BEGIN IMMEDIATE` transaction, so writers are
serialized and insertion order is commit order. Connections come from a small pool, so the
store is safe to call from FastAPI's worker threads.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selfreward_vlm.service.store.base import Store
from selfreward_vlm.service.store.faults import StoreHealth
from selfreward_vlm.service.store.migrations import migrate

_POOL_SIZE = 8


class SQLiteStore(Store):
    """The store in one SQLite file; thread-safe."""

    kind = "sqlite"

    def __init__(self, path: str | Path, timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s  # how long a write waits for another process's lock
        self.health = StoreHealth(self.describe())
        self._pool: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        with self._conn() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        with self._write() as conn:
            migrate(conn, "sqlite")

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """Borrow a pooled connection (autocommit mode: callers open their transactions)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            conn = self._pool.pop() if self._pool else None
        conn = conn or self._connect()
        try:
            yield conn
        finally:
            with self._lock:
                keep = not self._closed and len(self._pool) < _POOL_SIZE
                if keep:
                    self._pool.append(conn)
            if not keep:
                conn.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self.health.guard(writing=False), self._conn() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self.health.guard(writing=True), self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")  # inside: a failed COMMIT (disk full, I/O) rolls back too,
            except BaseException:  # so no connection goes back to the pool mid-transaction
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()

    def physical_check(self) -> list[str]:
        """SQLite's `PRAGMA integrity_check` (b-trees, indexes, free lists)."""
        with self._conn() as conn:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        return [] if [r[0] for r in rows] == ["ok"] else [f"sqlite: {r[0]}" for r in rows]
