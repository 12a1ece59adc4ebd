"""What the store's failures mean to a caller, decided in one place for both back ends.

Every store call runs inside `StoreHealth.guard()`: a database exception leaves it as a
`ServiceError` the app already knows how to answer.

- "Try again" (connection lost or refused, server shutting down, pool exhausted, timeout,
  serialization failure, deadlock, a locked SQLite file): 503 `store_unavailable` with
  `Retry-After`. The transaction was rolled back, so nothing was written.
- A full disk (SQLite `SQLITE_FULL`, PostgreSQL `disk_full`, `ENOSPC`/`EDQUOT` from a file the
  store writes): 507 `insufficient_storage`, naming the store.
- Anything else (a bug, a constraint this code never expects to break) propagates
  unchanged and stays a 500.

`StoreHealth` also remembers the last outcome, for `/health`, and counts errors by kind (the
`selfreward_store_errors_total{kind}` metric, wired by the app).
"""

from __future__ import annotations

import contextvars
import errno
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from selfreward_vlm.service.errors import (
    InsufficientStorageError,
    ServiceError,
    StoreUnavailableError,
)

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# A cap on how long the current call may wait for a connection (seconds; None: the store's
# own timeout). The event loop's own store lookups set a short one: they stall every request.
wait_cap: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "selfreward_store_wait_cap", default=None
)
# sqlite3 primary result codes (extended codes keep them in the low byte)
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN = 5, 6, 10, 13, 14
# PostgreSQL SQLSTATE classes / codes that mean "try again"
_PG_RETRY_CLASSES = ("08", "57", "53")  # connection exception, operator intervention, resources
_PG_RETRY_CODES = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock not available
_PG_DISK_FULL = "53100"


def classify(exc: BaseException) -> tuple[str, bool] | None:
    """`(kind, full)` for a store exception that is not a bug, else None.

    `full` is True for a full disk (507); otherwise `kind` is a "try again" (503) reason.
    """
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return "disk_full", True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == _SQLITE_FULL or "database or disk is full" in str(exc):
            return "disk_full", True
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "database is locked" in str(exc):
            return "busy", False
        if code in (_SQLITE_IOERR, _SQLITE_CANTOPEN):
            return "io_error", False
        return None
    return _classify_postgres(exc)


def _classify_postgres(exc: BaseException) -> tuple[str, bool] | None:
    try:
        import psycopg
        from psycopg_pool import PoolTimeout, TooManyRequests
    except ImportError:  # no PostgreSQL support installed: no psycopg errors either
        return None
    if isinstance(exc, PoolTimeout | TooManyRequests):
        return "pool_timeout", False
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate or ""
    if state == _PG_DISK_FULL:
        return "disk_full", True
    if state in _PG_RETRY_CODES:
        return "conflict", False
    if state.startswith("57P"):  # admin_shutdown, crash_shutdown, cannot_connect_now
        return "shutdown", False
    if state.startswith(_PG_RETRY_CLASSES):
        return "connection" if state.startswith("08") else "resources", False
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not state:
        return "connection", False  # client side: closed connection, server unreachable
    return None


class StoreHealth:
    """Translates a back end's failures (see module doc) and remembers how the store is."""

    def __init__(self, where: str) -> None:
        self.where = where  # `Store.describe()`: no secrets
        self.state = "ok"  # ok | unavailable | full
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.since = time.time()  # when `state` last changed
        self.errors: dict[str, int] = {}
        self.on_error: Callable[[str], None] = lambda kind: None  # the metric, set by the app
        self._lock = threading.Lock()

    @contextmanager
    def guard(self, writing: bool) -> Iterator[None]:
        """Run one store call; translate what it raises (module doc)."""
        try:
            yield
        except ServiceError:
            raise
        except Exception as exc:
            found = classify(exc)
            if found is None:
                raise
            kind, full = found
            self._record(kind, "full" if full else "unavailable", f"{type(exc).__name__}: {exc}")
            if full:
                raise InsufficientStorageError(
                    f"the store ({self.where}) is out of disk space; nothing was written. "
                    "Free space (or run the store's gc); no restart is needed",
                    field="store",
                ) from None
            raise StoreUnavailableError(
                f"the store ({self.where}) is unavailable ({kind}: {_first_line(exc)}); "
                "nothing was written, retry",
                kind=kind,
            ) from None
        else:
            if writing or self.state == "unavailable":  # a read proves the store answers
                self._record_ok(writing)

    def _record(self, kind: str, state: str, message: str) -> None:
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            self.last_error, self.last_error_at = message[:500], time.time()
            if self.state != state:
                self.state, self.since = state, time.time()
        self.on_error(kind)

    def _record_ok(self, writing: bool) -> None:
        # A read succeeding does not prove a full disk has space again; a write does.
        if self.state == "ok" or (self.state == "full" and not writing):
            return
        with self._lock:
            self.state, self.since = "ok", time.time()

    def report(self) -> dict[str, object]:
        """What `/health` shows about the store."""
        return {
            "state": self.state,
            "since": round(self.since, 3),
            "where": self.where,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at and round(self.last_error_at, 3),
            "errors": dict(self.errors),
        }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def storage_full(what: str, field: str, exc: OSError) -> InsufficientStorageError:
    """The 507 for a full disk under a folder the service writes files to (`what` names it,
    e.g. "the adapter directory /data/adapters")."""
    return InsufficientStorageError(
        f"{what} is out of disk space ({exc.strerror}); nothing was kept. Free space (or run "
        "the store's gc); no restart is needed",
        field=field,
    )


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS
