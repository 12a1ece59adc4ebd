"""State that replicas share, behind one small interface (`Store`), with two back ends.

- `SQLiteStore` (`sqlite.py`): one file under `data_dir`, the embedded default for one replica.
- `PostgresStore` (`postgres.py`): psycopg 3 with a `psycopg_pool` connection pool, for several
  replicas and clients sharing one database.

Both hold the preference pairs, the dataset index, images (bytes by sha256) and the adapter
registry; both run the same migrations (`migrations.py`), give the same cursor semantics and
idempotent upserts, and pass the same tests. `open_store(url)` picks one from a URL.
Their failures reach callers the same way too (`faults.py`: 503 `store_unavailable` for "try
again", 507 `insufficient_storage` for a full disk), and `Store.gc` / `delete_dataset` free
space (`service/routes/retention.py` says what is kept and why).
`PairStore` is the SQLite store under its historical name.
"""

from __future__ import annotations

from pathlib import Path

from selfreward_vlm.service.store.base import Store
from selfreward_vlm.service.store.records import (
    DATASET_NAME_RE,
    AdapterRecord,
    ImageRow,
    decode_cursor,
    encode_cursor,
    iter_jsonl_pairs,
    validate_dataset_name,
)
from selfreward_vlm.service.store.sqlite import SQLiteStore

PairStore = SQLiteStore  # the name callers and tests have always used for the SQLite store

__all__ = [
    "DATASET_NAME_RE",
    "AdapterRecord",
    "ImageRow",
    "PairStore",
    "SQLiteStore",
    "Store",
    "decode_cursor",
    "encode_cursor",
    "is_postgres_url",
    "iter_jsonl_pairs",
    "open_store",
    "validate_dataset_name",
]


def is_postgres_url(url: str) -> bool:
    """Whether `url` names a PostgreSQL database (`postgresql://` or `postgres://`)."""
    return url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))


def open_store(url: str | Path, timeout_s: float = 5.0, reconnect_s: float = 2.0) -> Store:
    """Open (and migrate) the store a URL names: `postgresql://…` or a SQLite file path
    (`sqlite:///abs/path.db` is accepted too). A store call waits at most `timeout_s` for a
    connection (or a lock) before it answers 503; see `faults.py` and `postgres.py`."""
    text = str(url)
    if is_postgres_url(text):
        try:
            from selfreward_vlm.service.store.postgres import PostgresStore
        except ImportError as exc:  # the client-only or plain service install
            raise RuntimeError(
                f"a PostgreSQL store needs psycopg: pip install 'selfreward-vlm[postgres]' ({exc})"
            ) from None
        return PostgresStore(
            text.replace("postgresql+psycopg://", "postgresql://", 1),
            timeout_s=timeout_s,
            reconnect_s=reconnect_s,
        )
    if text.startswith("sqlite://"):
        text = text.removeprefix("sqlite://")
    return SQLiteStore(text, timeout_s=timeout_s)
