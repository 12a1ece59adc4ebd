"""Schema migrations, numbered, for both back ends; applied in one transaction at open.

`schema_migrations` records what a database has. A store opened on an older database applies
the missing steps (replicas starting together: PostgreSQL takes an advisory lock, SQLite a
write lock, so one of them migrates and the others find it done); a database newer than this
code is refused rather than misread. Migration 1 is the schema of the SQLite-only versions
(`IF NOT EXISTS`), so their files open unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selfreward_vlm.service.store.base import Conn


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer selfreward than this one."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "pairs and images",
        sqlite=(
            "CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, bytes BLOB NOT NULL, "
            "width INTEGER NOT NULL, height INTEGER NOT NULL, format TEXT NOT NULL, "
            "created REAL NOT NULL)",
            "CREATE TABLE IF NOT EXISTS pairs (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "dataset TEXT NOT NULL, id TEXT NOT NULL, json TEXT NOT NULL, "
            "created REAL NOT NULL, UNIQUE (dataset, id))",
            "CREATE INDEX IF NOT EXISTS pairs_dataset_seq ON pairs (dataset, seq)",
        ),
        postgresql=(
            "CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, bytes BYTEA NOT NULL, "
            "width INTEGER NOT NULL, height INTEGER NOT NULL, format TEXT NOT NULL, "
            "created DOUBLE PRECISION NOT NULL)",
            "CREATE TABLE IF NOT EXISTS pairs (seq BIGINT GENERATED ALWAYS AS IDENTITY "
            "PRIMARY KEY, dataset TEXT NOT NULL, id TEXT NOT NULL, json TEXT NOT NULL, "
            "created DOUBLE PRECISION NOT NULL, UNIQUE (dataset, id))",
            "CREATE INDEX IF NOT EXISTS pairs_dataset_seq ON pairs (dataset, seq)",
        ),
    ),
    Migration(
        2,
        "dataset index",
        sqlite=(
            "CREATE TABLE datasets (name TEXT PRIMARY KEY, count INTEGER NOT NULL, "
            "created REAL NOT NULL)",
            "INSERT INTO datasets (name, count, created) "
            "SELECT dataset, COUNT(*), MIN(created) FROM pairs GROUP BY dataset",
        ),
        postgresql=(
            "CREATE TABLE datasets (name TEXT PRIMARY KEY, count BIGINT NOT NULL, "
            "created DOUBLE PRECISION NOT NULL)",
            "INSERT INTO datasets (name, count, created) "
            "SELECT dataset, COUNT(*), MIN(created) FROM pairs GROUP BY dataset",
        ),
    ),
    Migration(
        3,
        "adapter registry",
        sqlite=(
            "CREATE TABLE adapters (name TEXT PRIMARY KEY, version INTEGER NOT NULL, "
            "digest TEXT, deleted INTEGER NOT NULL, created REAL NOT NULL)",
        ),
        postgresql=(
            "CREATE TABLE adapters (name TEXT PRIMARY KEY, version BIGINT NOT NULL, "
            "digest TEXT, deleted INTEGER NOT NULL, created DOUBLE PRECISION NOT NULL)",
        ),
    ),
    Migration(
        4,
        "image references of pairs (for gc)",
        sqlite=(
            "CREATE TABLE pair_images (dataset TEXT NOT NULL, pair_id TEXT NOT NULL, "
            "image TEXT NOT NULL, PRIMARY KEY (dataset, pair_id, image))",
            "CREATE INDEX pair_images_image ON pair_images (image)",
            "INSERT OR IGNORE INTO pair_images (dataset, pair_id, image) "
            "SELECT p.dataset, p.id, j.value FROM pairs p, json_each(p.json, '$.images') j",
        ),
        postgresql=(
            "CREATE TABLE pair_images (dataset TEXT NOT NULL, pair_id TEXT NOT NULL, "
            "image TEXT NOT NULL, PRIMARY KEY (dataset, pair_id, image))",
            "CREATE INDEX pair_images_image ON pair_images (image)",
            "INSERT INTO pair_images (dataset, pair_id, image) "
            "SELECT DISTINCT p.dataset, p.id, j.image FROM pairs p, "
            "jsonb_array_elements_text(p.json::jsonb -> 'images') AS j(image)",
        ),
    ),
)
LATEST = MIGRATIONS[-1].version


def migrate(conn: Conn, dialect: str) -> list[int]:
    """Apply the missing migrations inside the caller's transaction; returns those applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
        "name TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL)"
    )
    current = int(
        conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
    )
    if current > LATEST:
        raise SchemaTooNewError(
            f"the store's schema is version {current}; this selfreward knows up to {LATEST}: "
            "upgrade selfreward"
        )
    applied = []
    for m in MIGRATIONS[current:]:
        for statement in getattr(m, dialect):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)",
            (m.version, m.name, time.time()),
        )
        applied.append(m.version)
    return applied
