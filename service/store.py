"""The service's SQLite store: preference pairs by dataset, and image bytes by sha256.

One database file (`data_dir/selfreward.db`) in WAL mode with `synchronous=FULL`: a batch the
service acknowledged is on disk, and survives `kill -9` of the server. Every write is one
transaction. Connections come from a small pool, so the store is safe to call from FastAPI's
worker threads.

Upserts are idempotent by `(dataset, pair.id)`: the first write of an id wins; posting the same
id again (with the same or with different content) is ignored and counted as a duplicate, so a
retried or replayed batch never changes what a trainer already read. Pages are ordered by
insertion and addressed by an opaque cursor, so paging while pairs are being added is stable.
The same `PreferencePair` model reads JSONL exports (`iter_jsonl_pairs`).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from selfreward_vlm.core.schemas import PreferencePair
from selfreward_vlm.service.errors import InvalidRequestError, NotFoundError

DATASET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_POOL_SIZE = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    bytes BLOB NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pairs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    id TEXT NOT NULL,
    json TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (dataset, id)
);
CREATE INDEX IF NOT EXISTS pairs_dataset_seq ON pairs (dataset, seq);
"""


@dataclass(frozen=True)
class ImageRow:
    """A stored image: its file bytes as uploaded and what Pillow read from them."""

    id: str
    data: bytes
    width: int
    height: int
    format: str


def validate_dataset_name(name: str, field: str = "name") -> str:
    """Return `name` if it is a valid dataset name, else a 422 naming `field`."""
    if not DATASET_NAME_RE.match(name):
        raise InvalidRequestError(
            f"invalid dataset name {name!r}: 1-128 of [A-Za-z0-9._-], starting with a letter "
            "or digit",
            field=field,
        )
    return name


def encode_cursor(seq: int) -> str:
    """An opaque page cursor for the pair with insertion number `seq`."""
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, field: str = "after") -> int:
    """The insertion number inside a cursor from `encode_cursor` (422 naming `field` if bad)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("s"):
            raise ValueError(raw)
        return int(raw[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequestError(f"invalid cursor {cursor!r}", field=field) from None


class PairStore:
    """Preference pairs and image bytes in one SQLite file; thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pool: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        with self._conn() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
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
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any error."""
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close every pooled connection; later calls raise."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()

    # ------------------------------------------------------------------ pairs

    def upsert(self, dataset: str, pairs: list[PreferencePair]) -> tuple[int, int, int]:
        """Insert the pairs whose ids are new to `dataset` in one transaction.

        Returns `(inserted, duplicates, total)`; `total` is the dataset's size afterwards.
        """
        validate_dataset_name(dataset)
        now = time.time()
        rows = [(dataset, p.id, p.model_dump_json(), now) for p in pairs]
        with self._transaction() as conn:
            cur = conn.executemany(
                "INSERT OR IGNORE INTO pairs (dataset, id, json, created) VALUES (?, ?, ?, ?)",
                rows,
            )
            inserted = max(cur.rowcount, 0)
            total = conn.execute(
                "SELECT COUNT(*) FROM pairs WHERE dataset = ?", (dataset,)
            ).fetchone()[0]
        return inserted, len(rows) - inserted, int(total)

    def page(
        self, dataset: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[PreferencePair], str | None]:
        """Up to `limit` pairs after cursor `after`, in insertion order, and the next cursor
        (None at the end). An unknown dataset is a 404."""
        validate_dataset_name(dataset)
        start = decode_cursor(after) if after else 0
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT seq, json FROM pairs WHERE dataset = ? AND seq > ? ORDER BY seq LIMIT ?",
                (dataset, start, limit + 1),
            ).fetchall()
            if not rows and not self._exists(conn, dataset):
                raise NotFoundError(f"no dataset named {dataset!r}", field="name")
        more = len(rows) > limit
        rows = rows[:limit]
        pairs = [PreferencePair.model_validate_json(js) for _, js in rows]
        return pairs, encode_cursor(rows[-1][0]) if more else None

    def iter_pairs(self, dataset: str, batch: int = 500) -> Iterator[PreferencePair]:
        """Every pair of `dataset` in insertion order (pages of `batch`)."""
        after: str | None = None
        while True:
            pairs, after = self.page(dataset, after, batch)
            yield from pairs
            if after is None:
                return

    def datasets(self) -> list[tuple[str, int]]:
        """Every dataset with its pair count, by name."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT dataset, COUNT(*) FROM pairs GROUP BY dataset ORDER BY dataset"
            ).fetchall()
        return [(str(name), int(count)) for name, count in rows]

    @staticmethod
    def _exists(conn: sqlite3.Connection, dataset: str) -> bool:
        row = conn.execute("SELECT 1 FROM pairs WHERE dataset = ? LIMIT 1", (dataset,))
        return row.fetchone() is not None

    # ------------------------------------------------------------------ JSONL

    def export_jsonl(self, dataset: str, path: str | Path) -> int:
        """Write `dataset` as JSON lines (one `PreferencePair` a line); returns the count.

        Written to a temp file and renamed, so a reader never sees half an export.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        count = 0
        with tmp.open("w", encoding="utf-8") as f:
            for pair in self.iter_pairs(dataset):
                f.write(pair.model_dump_json() + "\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        return count

    def import_jsonl(self, dataset: str, path: str | Path, batch: int = 1000) -> tuple[int, int]:
        """Upsert every pair of a JSONL export into `dataset`; returns (inserted, duplicates)."""
        inserted = duplicates = 0
        pairs = iter_jsonl_pairs(path)
        while chunk := list(itertools.islice(pairs, batch)):
            i, d, _ = self.upsert(dataset, chunk)
            inserted, duplicates = inserted + i, duplicates + d
        return inserted, duplicates

    # ------------------------------------------------------------------ images

    def put_image(self, row: ImageRow) -> bool:
        """Store an image row unless its id is there already; True if it was new."""
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO images (id, bytes, width, height, format, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (row.id, row.data, row.width, row.height, row.format, time.time()),
            )
            return cur.rowcount > 0

    def get_image(self, image_id: str) -> ImageRow | None:
        """The stored image with this id, or None."""
        with self._conn() as conn:
            r = conn.execute(
                "SELECT id, bytes, width, height, format FROM images WHERE id = ?", (image_id,)
            ).fetchone()
        return None if r is None else ImageRow(r[0], bytes(r[1]), r[2], r[3], r[4])

    def image_size(self, image_id: str) -> tuple[int, int] | None:
        """(width, height) of a stored image without reading its bytes, or None."""
        with self._conn() as conn:
            r = conn.execute(
                "SELECT width, height FROM images WHERE id = ?", (image_id,)
            ).fetchone()
        return None if r is None else (int(r[0]), int(r[1]))

    def missing_images(self, ids: list[str]) -> set[str]:
        """The ids among `ids` that are not stored."""
        wanted = set(ids)
        if not wanted:
            return set()
        with self._conn() as conn:
            marks = ",".join("?" * len(wanted))
            found = conn.execute(f"SELECT id FROM images WHERE id IN ({marks})", list(wanted))
            return wanted - {r[0] for r in found.fetchall()}


def iter_jsonl_pairs(path: str | Path) -> Iterator[PreferencePair]:
    """Read a JSONL export (one `PreferencePair` a line; blank lines skipped).

    A bad line raises `ValueError` naming the file and line number.
    """
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield PreferencePair.model_validate_json(line)
            except ValidationError as e:
                raise ValueError(f"{path}:{lineno}: not a PreferencePair: {e}") from e
