"""The shared store: PostgreSQL through psycopg 3 and a `psycopg_pool` connection pool.

For several replicas and clients: every replica opens the same URL (`--store postgresql://…`).
Each `with pool.connection()` block is one transaction (commit on success, rollback on error),
and PostgreSQL's default `synchronous_commit = on` makes an acknowledged batch durable. The
shared SQL (`base.py`) is written with `?` placeholders, turned into psycopg's `%s` here.

Outages (see `faults.py`): a call waits for a pooled connection at most `timeout_s` (never past
the request's deadline), then answers 503 `store_unavailable`; a connection the server dropped
is noticed by the pool's check and replaced. psycopg_pool retries a failed connect with an
exponential backoff for `reconnect_timeout` and then gives up until the next request asks
for a connection, which starts a fresh attempt at once: keeping `reconnect_timeout` short
(`reconnect_s`, 2 s) is what bounds the time from the server's return to the first answered
request, however long the outage was (with psycopg_pool's default of 5 minutes, the backoff
had grown to 16 s waits after a 40 s outage).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from selfreward_vlm.service.store.base import Store
from selfreward_vlm.service.store.faults import StoreHealth, wait_cap
from selfreward_vlm.service.store.migrations import migrate

_MIGRATION_LOCK = 0x5E1F8E3A  # pg_advisory_xact_lock key: one replica migrates at a time
_GC_LOCK = 0x5E1F8E3B  # pair writes share it, gc takes it alone
_GC_LOCK_WAIT = "3s"  # a pair write waits this long for a running gc, then answers 503


class StoreUnavailableError(RuntimeError):
    """The database does not answer (wrong URL, down, refused)."""


class _Conn:
    """A psycopg connection speaking the shared SQL's `?` placeholders."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor:
        return self._conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]

    def executemany(self, sql: str, rows: list[Any]) -> psycopg.Cursor:
        cur = self._conn.cursor()
        cur.executemany(sql.replace("?", "%s"), rows)  # type: ignore[arg-type]
        return cur  # rowcount: the sum over the rows (psycopg >= 3.1)


class PostgresStore(Store):
    """The store in a PostgreSQL database; thread-safe (a pool of `max_size` connections)."""

    kind = "postgresql"

    def __init__(
        self,
        url: str,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout: float = 30.0,
        timeout_s: float = 5.0,
        reconnect_s: float = 2.0,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.health = StoreHealth(self.describe())
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            name="selfreward-store",
            check=ConnectionPool.check_connection,  # a restarted server is reconnected
            timeout=timeout_s,
            reconnect_timeout=reconnect_s,
            # libpq's own connect timeout (whole seconds, at least 2): an unreachable host
            # must not hold a pool worker for the OS's minutes of SYN retries
            kwargs={"connect_timeout": max(2, round(timeout_s))},
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as exc:  # say where, without the password
            self._pool.close()
            raise StoreUnavailableError(
                f"cannot reach the PostgreSQL store {self.describe()} within "
                f"{connect_timeout:.0f} s: {exc}"
            ) from None
        try:
            with self._write() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
                migrate(conn, "postgresql")
        except BaseException:
            self._pool.close()
            raise

    def describe(self) -> str:
        return "postgresql:" + re.sub(r"://[^@/]*@", "://***@", self.url)

    def _wait_s(self) -> float:
        """How long to wait for a connection: `timeout_s`, or less when the request's
        deadline comes sooner (its thread cannot be interrupted once it waits)."""
        from selfreward_vlm.service.deadlines import current_deadline

        wait = min(self.timeout_s, wait_cap.get() or self.timeout_s)
        deadline = current_deadline.get()
        if deadline is None:
            return wait
        return max(0.05, min(wait, deadline - time.perf_counter()))

    @contextmanager
    def _read(self) -> Iterator[_Conn]:
        with self.health.guard(writing=False), self._pool.connection(self._wait_s()) as conn:
            yield _Conn(conn)

    @contextmanager
    def _write(self) -> Iterator[_Conn]:
        with (
            self.health.guard(writing=True),
            self._pool.connection(self._wait_s()) as conn,
            conn.transaction(),
        ):
            yield _Conn(conn)

    def _gc_lock(self, conn: _Conn, exclusive: bool) -> None:
        """Pair writes hold the gc lock shared and gc alone, so an image a new pair names
        cannot be collected between the write's check and its commit (READ COMMITTED)."""
        conn.execute(f"SET LOCAL lock_timeout = '{_GC_LOCK_WAIT}'")
        lock = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        conn.execute(f"SELECT {lock}(?)", (_GC_LOCK,))

    def ping(self, timeout_s: float = 1.0) -> None:
        """One round trip, waiting at most `timeout_s` for a connection (for `/health`)."""
        with self.health.guard(writing=False), self._pool.connection(timeout_s) as conn:
            conn.execute("SELECT 1")

    def close(self) -> None:
        self._pool.close()
