"""The store interface and its SQL, written once for both back ends.

A back end supplies connections (`_read`, `_write`: the latter one transaction, committed on
success, rolled back on error) whose `execute(sql, params)` takes `?` placeholders, and its
migrations; everything else lives here, so SQLite and PostgreSQL behave the same by construction
(and are tested by the same suite).

Semantics both back ends keep:
- Upserts are idempotent by `(dataset, pair.id)`: the first write of an id wins; posting it
  again (same or different content) is ignored and counted as a duplicate, so a retried batch
  never changes what a trainer already read. A batch is one transaction.
- Pages are in insertion order, addressed by an opaque cursor (the row's `seq`). Writers of one
  dataset are serialized on its row in the `datasets` index, so `seq` order is commit order:
  a reader paging while writers add pairs sees every pair exactly once (PostgreSQL hands out
  sequence numbers before commit, so without that lock a later `seq` could commit first).
"""

from __future__ import annotations

import abc
import itertools
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from selfreward_vlm.core.schemas import PreferencePair
from selfreward_vlm.service.errors import NotFoundError
from selfreward_vlm.service.store.faults import StoreHealth
from selfreward_vlm.service.store.records import (
    AdapterRecord,
    GcReport,
    ImageRow,
    MissingImagesError,
    decode_cursor,
    encode_cursor,
    iter_jsonl_pairs,
    validate_dataset_name,
)

# A back end's connection: `execute(sql, params)` / `executemany(sql, rows)` with `?`
# placeholders, returning a DB-API cursor (sqlite3's, or psycopg's through postgres._Conn).
Conn = Any
_IN_CHUNK = 1000  # ids per `IN (...)` list


class Store(abc.ABC):
    """Pairs, the dataset index, images and the adapter registry; thread-safe."""

    kind: str  # "sqlite" | "postgresql"
    health: StoreHealth  # the last outcome, errors by kind; translates failures (faults.py)

    # ------------------------------------------------------------------ back end

    @abc.abstractmethod
    def _read(self) -> AbstractContextManager[Conn]:
        """A connection for reads."""

    @abc.abstractmethod
    def _write(self) -> AbstractContextManager[Conn]:
        """One write transaction: committed on success, rolled back on any error."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every connection; later calls raise."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the data lives, without secrets (for logs)."""

    def ping(self, timeout_s: float = 1.0) -> None:
        """One round trip to the store (for `/health`); raises what a store call raises."""
        with self._read() as conn:
            conn.execute("SELECT 1").fetchone()

    def physical_check(self) -> list[str]:
        """The engine's own consistency check (pages, indexes); problems found."""
        return []

    def schema_version(self) -> int:
        with self._read() as conn:
            row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    # ------------------------------------------------------------------ pairs

    def upsert(
        self, dataset: str, pairs: list[PreferencePair], check_images: bool = False
    ) -> tuple[int, int, int]:
        """Insert the pairs whose ids are new to `dataset` in one transaction.

        Returns `(inserted, duplicates, total)`; `total` is the dataset's size afterwards.
        With `check_images`, every image a new pair names must be stored, checked inside the
        transaction (so `gc` cannot delete one in between): else `MissingImagesError`.
        """
        validate_dataset_name(dataset)
        now = time.time()
        rows = [(dataset, p.id, p.model_dump_json(), now) for p in pairs]
        if not rows:
            return 0, 0, self._count(dataset)
        with self._write() as conn:
            self._gc_lock(conn, exclusive=False)
            # Creates or row-locks the dataset's index entry first: this serializes the
            # writers of one dataset (see the module docstring).
            conn.execute(
                "INSERT INTO datasets (name, count, created) VALUES (?, 0, ?) "
                "ON CONFLICT (name) DO UPDATE SET count = datasets.count",
                (dataset, now),
            )
            new = self._new_pairs(conn, dataset, pairs)
            named = {image for pair in new for image in pair.images}
            if check_images and named:
                missing = named - stored_images(conn, named)
                if missing:
                    raise MissingImagesError(missing)
            conn.executemany(
                "INSERT INTO pair_images (dataset, pair_id, image) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(dataset, pair.id, image) for pair in new for image in set(pair.images)],
            )
            cur = conn.executemany(
                "INSERT INTO pairs (dataset, id, json, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (dataset, id) DO NOTHING",
                rows,
            )
            inserted = max(cur.rowcount, 0)
            # (no RETURNING: SQLite has it only since 3.35, and older ones still ship)
            conn.execute(
                "UPDATE datasets SET count = count + ? WHERE name = ?", (inserted, dataset)
            )
            total = conn.execute(
                "SELECT count FROM datasets WHERE name = ?", (dataset,)
            ).fetchone()[0]
        return inserted, len(rows) - inserted, int(total)

    @staticmethod
    def _new_pairs(conn: Conn, dataset: str, pairs: list[PreferencePair]) -> list[PreferencePair]:
        """The pairs of a batch that the insert will keep: ids not in `dataset` yet, first
        occurrence in the batch (the dataset's row lock keeps this true until commit)."""
        known: set[str] = set()
        ids = sorted({p.id for p in pairs})
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT id FROM pairs WHERE dataset = ? AND id IN ({marks})", [dataset, *chunk]
            ).fetchall()
            known.update(r[0] for r in rows)
        new = []
        for pair in pairs:
            if pair.id not in known:
                known.add(pair.id)
                new.append(pair)
        return new

    def delete_dataset(self, dataset: str) -> int:
        """Delete a dataset and all its pairs in one transaction; returns how many pairs.
        An unknown dataset is a 404. Its images stay until `gc` finds them unreferenced."""
        validate_dataset_name(dataset)
        with self._write() as conn:
            if not self._exists(conn, dataset):
                raise NotFoundError(f"no dataset named {dataset!r}", field="name")
            count = conn.execute("DELETE FROM pairs WHERE dataset = ?", (dataset,)).rowcount
            conn.execute("DELETE FROM pair_images WHERE dataset = ?", (dataset,))
            conn.execute("DELETE FROM datasets WHERE name = ?", (dataset,))
        return int(count)

    # ------------------------------------------------------------------ retention

    def _gc_lock(self, conn: Conn, exclusive: bool) -> None:  # noqa: B027  (a hook)
        """Keep `gc` and pair writes apart (a back end whose writers are not serialized
        anyway takes a lock here; SQLite's `BEGIN IMMEDIATE` already does)."""

    def gc(self, min_age_s: float, dry_run: bool = False) -> GcReport:
        """Delete every image no pair names that is older than `min_age_s` (one
        transaction, which pair writes wait for). Kept: images a pair names (a trainer reads
        them), and recent ones (a search uploads its images before it posts their pairs)."""
        cutoff = time.time() - min_age_s
        unreferenced = "NOT EXISTS (SELECT 1 FROM pair_images r WHERE r.image = images.id)"
        with self._write() as conn:
            self._gc_lock(conn, exclusive=True)
            total = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            doomed, size = conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM(LENGTH(bytes)), 0) FROM images "
                f"WHERE created < ? AND {unreferenced}",
                (cutoff,),
            ).fetchone()
            recent = conn.execute(
                f"SELECT COUNT(*) FROM images WHERE created >= ? AND {unreferenced}", (cutoff,)
            ).fetchone()[0]
            if not dry_run and doomed:
                conn.execute(f"DELETE FROM images WHERE created < ? AND {unreferenced}", (cutoff,))
        kept_referenced = int(total) - int(doomed) - int(recent)
        return GcReport(int(doomed), int(size), kept_referenced, int(recent), dry_run)

    def _count(self, dataset: str) -> int:
        with self._read() as conn:
            row = conn.execute("SELECT count FROM datasets WHERE name = ?", (dataset,)).fetchone()
        return 0 if row is None else int(row[0])

    def page(
        self, dataset: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[PreferencePair], str | None]:
        """Up to `limit` pairs after cursor `after`, in insertion order, and the next cursor
        (None at the end). An unknown dataset is a 404."""
        validate_dataset_name(dataset)
        start = decode_cursor(after) if after is not None else 0
        with self._read() as conn:
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

    @staticmethod
    def _exists(conn: Conn, dataset: str) -> bool:
        row = conn.execute("SELECT 1 FROM datasets WHERE name = ?", (dataset,))
        return row.fetchone() is not None

    def iter_pairs(self, dataset: str, batch: int = 500) -> Iterator[PreferencePair]:
        """Every pair of `dataset` in insertion order (pages of `batch`)."""
        after: str | None = None
        while True:
            pairs, after = self.page(dataset, after, batch)
            yield from pairs
            if after is None:
                return

    def datasets(self) -> list[tuple[str, int]]:
        """Every dataset with its pair count, by name (from the index: no table scan)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, count FROM datasets WHERE count > 0 ORDER BY name"
            ).fetchall()
        return [(str(name), int(count)) for name, count in rows]

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
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO images (id, bytes, width, height, format, created) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (row.id, row.data, row.width, row.height, row.format, time.time()),
            )
            return cur.rowcount > 0

    def get_image(self, image_id: str) -> ImageRow | None:
        """The stored image with this id, or None."""
        with self._read() as conn:
            r = conn.execute(
                "SELECT id, bytes, width, height, format FROM images WHERE id = ?", (image_id,)
            ).fetchone()
        return None if r is None else ImageRow(r[0], bytes(r[1]), r[2], r[3], r[4])

    def image_size(self, image_id: str) -> tuple[int, int] | None:
        """(width, height) of a stored image without reading its bytes, or None."""
        with self._read() as conn:
            r = conn.execute(
                "SELECT width, height FROM images WHERE id = ?", (image_id,)
            ).fetchone()
        return None if r is None else (int(r[0]), int(r[1]))

    def image_ids(self) -> list[str]:
        """Every stored image id, sorted."""
        with self._read() as conn:
            return [r[0] for r in conn.execute("SELECT id FROM images ORDER BY id").fetchall()]

    def missing_images(self, ids: list[str]) -> set[str]:
        """The ids among `ids` that are not stored."""
        wanted = set(ids)
        if not wanted:
            return set()
        with self._read() as conn:
            return wanted - stored_images(conn, wanted)

    # ------------------------------------------------------------------ adapter registry

    def register_adapter(self, name: str, digest: str) -> AdapterRecord:
        """Point `name` at the adapter files `digest`; returns the record with its new version."""
        return self._set_adapter(name, digest)

    def unregister_adapter(self, name: str) -> AdapterRecord | None:
        """Mark `name` deleted (a new version, no files); None if it was never registered.
        The check and the write are one transaction."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM adapters WHERE name = ?", (name,)).fetchone() is None:
                return None
            return self._put_adapter(conn, name, None)

    def _set_adapter(self, name: str, digest: str | None) -> AdapterRecord:
        with self._write() as conn:
            return self._put_adapter(conn, name, digest)

    @staticmethod
    def _put_adapter(conn: Conn, name: str, digest: str | None) -> AdapterRecord:
        now = time.time()
        conn.execute(
            "INSERT INTO adapters (name, version, digest, deleted, created) "
            "VALUES (?, 1, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "version = adapters.version + 1, digest = excluded.digest, "
            "deleted = excluded.deleted, created = excluded.created",
            (name, digest, int(digest is None), now),
        )
        version = conn.execute("SELECT version FROM adapters WHERE name = ?", (name,)).fetchone()[0]
        return AdapterRecord(name, int(version), digest, digest is None, now)

    def adapter(self, name: str) -> AdapterRecord | None:
        """The registry's record of `name` (deleted ones included), or None."""
        with self._read() as conn:
            r = conn.execute(
                "SELECT name, version, digest, deleted, created FROM adapters WHERE name = ?",
                (name,),
            ).fetchone()
        return None if r is None else _adapter_record(r)

    def adapters(self) -> list[AdapterRecord]:
        """Every registry record, by name."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, version, digest, deleted, created FROM adapters ORDER BY name"
            ).fetchall()
        return [_adapter_record(r) for r in rows]

    # ------------------------------------------------------------------ integrity

    def integrity_check(self) -> list[str]:
        """Every problem found (empty = healthy): the engine's own check, then the logical
        invariants (see `integrity.check_invariants`). Reads the whole store."""
        from selfreward_vlm.service.store.integrity import check_invariants

        with self._read() as conn:
            logical = check_invariants(conn)
        return self.physical_check() + logical


def stored_images(conn: Conn, ids: set[str]) -> set[str]:
    """The ids among `ids` that the images table holds, asked `_IN_CHUNK` at a time: one
    `IN (?, …)` per id would pass libpq's 65,535 and SQLite's 32,766 parameter limits."""
    found: set[str] = set()
    wanted = sorted(ids)
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT id FROM images WHERE id IN ({marks})", chunk).fetchall()
        found.update(r[0] for r in rows)
    return found


def _adapter_record(r: Any) -> AdapterRecord:
    return AdapterRecord(str(r[0]), int(r[1]), r[2], bool(r[3]), float(r[4]))
