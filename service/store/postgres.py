"""The shared store: PostgreSQL through psycopg 3 and a `psycopg_pool` connection pool.

For several replicas and clients: every replica opens the same URL (`--store postgresql://…`).
Each `with pool.connection()` block is one transaction (commit on success, rollback on error),
and PostgreSQL's default `synchronous_commit = on` makes an acknowledged batch durable. The
shared SQL (`base.py`) is written with `?` placeholders, turned into psycopg's `%s` here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from selfreward_vlm.service.store.base import Store
from selfreward_vlm.service.store.migrations import migrate

_MIGRATION_LOCK = 0x5E1F8E3A  # pg_advisory_xact_lock key: one replica migrates at a time


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
        self, url: str, min_size: int = 1, max_size: int = 8, connect_timeout: float = 30.0
    ) -> None:
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            name="selfreward-store",
            check=ConnectionPool.check_connection,  # a restarted server is reconnected
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

    @contextmanager
    def _read(self) -> Iterator[_Conn]:
        with self._pool.connection() as conn:
            yield _Conn(conn)

    @contextmanager
    def _write(self) -> Iterator[_Conn]:
        with self._pool.connection() as conn, conn.transaction():
            yield _Conn(conn)

    def close(self) -> None:
        self._pool.close()
