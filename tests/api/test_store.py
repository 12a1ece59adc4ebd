"""The store, on both back ends (SQLite and PostgreSQL, one parametrized fixture): idempotent
upserts, cursor paging under concurrent writers, durability across kill -9, migrations, the
adapter registry, the integrity check, JSONL round trip."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfreward_vlm.core.schemas import PreferencePair, ResponseScore, SentenceScore
from selfreward_vlm.service.errors import InvalidRequestError, NotFoundError
from selfreward_vlm.service.store import (
    ImageRow,
    PairStore,
    SQLiteStore,
    Store,
    iter_jsonl_pairs,
    open_store,
)
from selfreward_vlm.service.store.migrations import LATEST, SchemaTooNewError

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ["sqlite", "postgresql"]


def make_pair(i: int, chosen: str | None = None, images: list[str] | None = None):
    return PreferencePair(
        id=f"p{i:04d}",
        prompt_id=f"q{i // 3}",
        prompt="Describe the image.",
        chosen=chosen or f"There is a red circle {i}.",
        rejected=f"There is a blue square {i}.",
        images=images or [],
        method="csr",
        model="base",
        reference=None,
        params={"lambda": 0.9, "keep_top": 1},
        iteration=1,
        chosen_score=ResponseScore(
            reward=1.5 + i, sentences=[SentenceScore(text="There is.", r_t=0.1, r_i=20.0)]
        ),
        rejected_score=ResponseScore(reward=-0.5),
    )


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store lives: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "selfreward.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture()
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def test_open_store_picks_the_back_end(store: Store, store_url: str) -> None:
    assert store.kind == ("postgresql" if store_url.startswith("postgresql") else "sqlite")
    assert store.schema_version() == LATEST
    assert "***@" in store.describe() or store.kind == "sqlite"
    assert PairStore is SQLiteStore  # the historical name


def test_upsert_is_idempotent(store: Store) -> None:
    pairs = [make_pair(i) for i in range(5)]
    assert store.upsert("ds", pairs) == (5, 0, 5)
    assert store.upsert("ds", pairs[:3]) == (0, 3, 5)
    # same id, different content: ignored (first write wins) and counted as a duplicate
    assert store.upsert("ds", [make_pair(1, chosen="changed"), make_pair(9)]) == (1, 1, 6)
    # duplicates inside one batch count once
    assert store.upsert("ds", [make_pair(20), make_pair(20)]) == (1, 1, 7)
    assert store.upsert("ds", []) == (0, 0, 7)
    got, _ = store.page("ds", limit=100)
    assert [p.id for p in got] == ["p0000", "p0001", "p0002", "p0003", "p0004", "p0009", "p0020"]
    assert got[1].chosen == "There is a red circle 1."
    assert got[0] == pairs[0]  # full round trip, nested scores included
    # datasets are separate namespaces
    assert store.upsert("other", pairs[:2]) == (2, 0, 2)
    assert store.datasets() == [("ds", 7), ("other", 2)]
    assert store.integrity_check() == []


def test_cursor_paging_covers_every_pair_once(store: Store) -> None:
    store.upsert("big", [make_pair(i) for i in range(250)])
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page, after = store.page("big", after, limit=7)
        seen += [p.id for p in page]
        pages += 1
        if after is None:
            break
        # pairs added while paging land after the cursor, never inside pages already read
        if pages == 10:
            store.upsert("big", [make_pair(1000)])
    assert pages == 36  # 251 pairs / 7 per page
    assert seen == [f"p{i:04d}" for i in range(250)] + ["p1000"]
    assert len(set(seen)) == len(seen)


def test_bad_names_cursors_and_unknown_datasets(store: Store) -> None:
    with pytest.raises(InvalidRequestError) as e:
        store.upsert("../etc", [make_pair(0)])
    assert e.value.field == "name"
    with pytest.raises(NotFoundError):
        store.page("nothing-here")
    store.upsert("ds", [make_pair(0)])
    with pytest.raises(InvalidRequestError) as e:
        store.page("ds", after="not a cursor!")
    assert e.value.field == "after"


def test_survives_reopen_and_images_stored_once(store_url: str) -> None:
    import hashlib

    store = open_store(store_url)
    store.upsert("ds", [make_pair(i) for i in range(3)])
    data = b"\x89PNG...not really"
    row = ImageRow(hashlib.sha256(data).hexdigest(), data, 4, 3, "PNG")
    assert store.put_image(row) is True
    assert store.put_image(row) is False
    store.close()
    reopened = open_store(store_url)
    assert reopened.datasets() == [("ds", 3)]
    assert reopened.get_image(row.id) == row
    assert reopened.image_size(row.id) == (4, 3)
    assert reopened.missing_images([row.id, "b" * 64]) == {"b" * 64}
    assert reopened.integrity_check() == []
    reopened.close()


def test_concurrent_writers_and_a_paging_reader(store: Store) -> None:
    """Writers of one dataset interleave; a reader paging meanwhile sees every pair exactly
    once (insertion order is commit order on both back ends)."""
    done = threading.Event()

    def write(offset: int) -> None:
        for k in range(10):
            store.upsert("ds", [make_pair(offset + k), make_pair(k)])  # overlapping ids

    seen: list[str] = []

    def read() -> None:
        after: str | None = None
        while True:
            finished = done.is_set()  # read before the page: a last write may land meanwhile
            try:
                page, cursor = store.page("ds", after, limit=3)
            except NotFoundError:  # no write committed yet
                continue
            seen.extend(p.id for p in page)
            if page:  # on the last page there is no next cursor: resume after its last pair
                after = cursor or _cursor_of(store, "ds", page[-1].id)
            elif finished:
                return

    writers = [threading.Thread(target=write, args=(100 * t,)) for t in range(1, 5)]
    reader = threading.Thread(target=read)
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join(timeout=60)
    ids = [p.id for p in store.iter_pairs("ds", batch=9)]
    assert len(ids) == len(set(ids)) == 40 + 10
    assert sorted(seen) == sorted(ids)  # the reader saw each exactly once
    assert store.datasets() == [("ds", 50)]


def _cursor_of(store: Store, dataset: str, pair_id: str) -> str:
    """The cursor just after `pair_id` (what the next page of a tailing reader starts from)."""
    from selfreward_vlm.service.store import encode_cursor

    with store._read() as conn:
        seq = conn.execute(
            "SELECT seq FROM pairs WHERE dataset = ? AND id = ?", (dataset, pair_id)
        ).fetchone()
    return encode_cursor(int(seq[0]))


def test_acknowledged_writes_survive_kill_9(store_url: str) -> None:
    """A child writes batches and acknowledges each on stdout; it is SIGKILLed mid-stream;
    every acknowledged batch must be in the reopened store, each batch whole or absent."""
    child = textwrap.dedent(
        f"""
        import sys, time
        from selfreward_vlm.service.store import open_store
        from tests.api.test_store import make_pair
        store = open_store({store_url!r})
        for b in range(10_000):
            store.upsert("ds", [make_pair(b * 10 + k) for k in range(10)])
            print(b, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acked = -1
    for line in proc.stdout:
        acked = int(line)
        if acked >= 20:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = open_store(store_url)
    try:
        ((name, count),) = store.datasets()
        assert name == "ds"
        assert count >= (acked + 1) * 10
        assert count % 10 == 0  # a batch is one transaction: all of it or none of it
        ids = {p.id for p in store.iter_pairs("ds")}
        assert {f"p{i:04d}" for i in range((acked + 1) * 10)} <= ids
        assert store.integrity_check() == []
    finally:
        store.close()


def test_jsonl_export_import_round_trip(store: Store, tmp_path: Path) -> None:
    pairs = [make_pair(i) for i in range(25)]
    store.upsert("src", pairs)
    out = tmp_path / "export.jsonl"
    assert store.export_jsonl("src", out) == 25
    assert list(iter_jsonl_pairs(out)) == pairs
    assert store.import_jsonl("copy", out, batch=10) == (25, 0)
    assert store.import_jsonl("copy", out) == (0, 25)
    copied, _ = store.page("copy", limit=1000)
    assert copied == pairs
    out.write_text(out.read_text() + '{"id": "broken"}\n')
    with pytest.raises(ValueError, match=r"export.jsonl:26"):
        list(iter_jsonl_pairs(out))


def test_adapter_registry_versions(store: Store) -> None:
    assert store.adapter("iter1") is None and store.unregister_adapter("iter1") is None
    first = store.register_adapter("iter1", "a" * 64)
    assert (first.version, first.digest, first.deleted) == (1, "a" * 64, False)
    second = store.register_adapter("iter1", "b" * 64)
    assert second.version == 2 and store.adapter("iter1") == second
    gone = store.unregister_adapter("iter1")
    assert gone is not None and (gone.version, gone.digest, gone.deleted) == (3, None, True)
    assert store.register_adapter("iter1", "c" * 64).version == 4  # never reuses a version
    store.register_adapter("alpha", "d" * 64)
    assert [r.name for r in store.adapters()] == ["alpha", "iter1"]
    assert store.integrity_check() == []


def test_integrity_check_finds_damage(store: Store) -> None:
    import hashlib

    data = b"image bytes"
    image = ImageRow(hashlib.sha256(data).hexdigest(), data, 2, 2, "PNG")
    store.put_image(image)
    store.upsert("ds", [make_pair(0, images=[image.id]), make_pair(1)])
    assert store.integrity_check() == []
    with store._write() as conn:  # what a torn or buggy write could leave behind
        conn.execute("UPDATE pairs SET json = ? WHERE id = ?", ('{"id": "p0001"}', "p0001"))
        conn.execute("UPDATE images SET bytes = ? WHERE id = ?", (b"other", image.id))
        conn.execute("UPDATE datasets SET count = 5 WHERE name = ?", ("ds",))
        conn.execute(
            "INSERT INTO adapters (name, version, digest, deleted, created) "
            "VALUES (?, 1, NULL, 0, 0)",
            ("broken",),
        )
    problems = "\n".join(store.integrity_check())
    assert "p0001" in problems and "does not parse" in problems
    assert "do not hash" in problems
    assert "index says 5 pairs, the table holds 2" in problems
    assert "'broken'" in problems


def test_seventy_thousand_image_ids_in_one_question(store: Store) -> None:
    """Review finding 5: one `IN (?, …)` per id passed the back ends' parameter limits
    (libpq 65,535; SQLite 32,766): a big upsert was a 500 and the integrity check crashed."""
    import hashlib

    data = b"stored image"
    image = ImageRow(hashlib.sha256(data).hexdigest(), data, 2, 2, "PNG")
    store.put_image(image)
    absent = [f"{i:064x}" for i in range(70_000)]
    assert store.missing_images([image.id, *absent]) == set(absent)
    store.upsert("many", [make_pair(i, images=absent[i::35]) for i in range(35)])
    problems = store.integrity_check()
    assert len(problems) == len(absent) and absent[-1] in problems[-1]


def test_unregister_checks_and_writes_in_one_transaction(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding 11: the existence check and the write were two transactions."""
    store.register_adapter("one", "a" * 64)
    opened: list[str] = []
    for kind in ("_read", "_write"):
        real = getattr(store, kind)
        monkeypatch.setattr(store, kind, lambda real=real, kind=kind: opened.append(kind) or real())
    assert store.unregister_adapter("one").version == 2  # type: ignore[union-attr]
    assert store.unregister_adapter("never") is None
    assert opened == ["_write", "_write"]
    assert store.adapter("never") is None


class _CommitFails:
    """A SQLite connection whose next COMMIT fails (as a full disk would make it)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.fail = conn, True

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.fail:
            self.fail = False
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_a_failed_commit_leaves_no_open_transaction(tmp_path: Path) -> None:
    """Review finding 8: a COMMIT that raised sent its connection back to the pool with the
    transaction still open (its write lock held, its rows pending)."""
    store = open_store(str(tmp_path / "s.db"))
    connect = store._connect  # type: ignore[attr-defined]
    store._connect = lambda: _CommitFails(connect())  # type: ignore[attr-defined]
    store._pool.clear()  # type: ignore[attr-defined]
    with pytest.raises(sqlite3.OperationalError):
        store.upsert("ds", [make_pair(0)])
    pooled = store._pool  # type: ignore[attr-defined]
    assert pooled and not any(c.in_transaction for c in pooled)
    assert store.upsert("ds", [make_pair(1)]) == (1, 0, 1)  # p0000 was rolled back
    store.close()


def test_migrates_an_old_sqlite_file_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A file written by the SQLite-only versions (no migrations table, no dataset index)
    opens with its pairs indexed; a schema newer than the code is refused."""
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript(
        "CREATE TABLE images (id TEXT PRIMARY KEY, bytes BLOB NOT NULL, width INTEGER NOT "
        "NULL, height INTEGER NOT NULL, format TEXT NOT NULL, created REAL NOT NULL);"
        "CREATE TABLE pairs (seq INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, "
        "id TEXT NOT NULL, json TEXT NOT NULL, created REAL NOT NULL, UNIQUE (dataset, id));"
    )
    old.executemany(
        "INSERT INTO pairs (dataset, id, json, created) VALUES (?, ?, ?, 0)",
        [("ds", p.id, p.model_dump_json()) for p in map(make_pair, range(4))],
    )
    old.commit()
    old.close()
    store = SQLiteStore(db)
    assert store.schema_version() == LATEST
    assert store.datasets() == [("ds", 4)]
    assert store.upsert("ds", [make_pair(3), make_pair(4)]) == (1, 1, 5)
    assert store.integrity_check() == []
    with store._write() as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied) VALUES (?, 'future', 0)",
            (LATEST + 1,),
        )
    store.close()
    with pytest.raises(SchemaTooNewError, match="upgrade selfreward"):
        SQLiteStore(db)


def test_an_unreachable_postgres_is_a_clear_error() -> None:
    from selfreward_vlm.localserver import free_port
    from selfreward_vlm.service.store.postgres import PostgresStore, StoreUnavailableError

    url = f"postgresql://someone:secret@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(StoreUnavailableError, match="cannot reach") as e:
        PostgresStore(url, connect_timeout=1.0)
    assert "secret" not in str(e.value) and "***@127.0.0.1" in str(e.value)


def test_copy_sqlite_into_postgres_then_check(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m selfreward_vlm.service.store copy SRC DST` moves a single box's store into
    the shared one (resumable: a second copy adds nothing); `check` and `migrate` report."""
    import hashlib

    from selfreward_vlm.service.store.__main__ import main

    src_path = str(tmp_path / "box.db")
    src = open_store(src_path)
    data = b"an image"
    src.put_image(ImageRow(hashlib.sha256(data).hexdigest(), data, 3, 2, "PNG"))
    src.upsert("first", [make_pair(i) for i in range(7)])
    src.upsert("second", [make_pair(i, images=[hashlib.sha256(data).hexdigest()]) for i in (3, 1)])
    src.register_adapter("iter1", "a" * 64)
    src.close()
    assert main(["copy", src_path, pg_url]) == 0
    assert "1 images, 9 pairs, 1 adapter names" in capsys.readouterr().out
    assert main(["copy", src_path, pg_url]) == 0
    assert "0 images, 0 pairs, 0 adapter names" in capsys.readouterr().out
    src, dst = open_store(src_path), open_store(pg_url)
    try:
        for name in ("first", "second"):
            assert list(dst.iter_pairs(name)) == list(src.iter_pairs(name))  # same order
        assert dst.datasets() == src.datasets()
        adapter = dst.adapter("iter1")
        assert adapter is not None and adapter.digest == "a" * 64
        with dst._write() as conn:
            conn.execute("UPDATE datasets SET count = 99 WHERE name = ?", ("first",))
    finally:
        src.close()
        dst.close()
    assert main(["migrate", pg_url]) == 0
    assert f"schema version {LATEST}" in capsys.readouterr().out
    assert main(["check", src_path]) == 0
    assert main(["check", pg_url]) == 1
    assert "'first': index says 99 pairs" in capsys.readouterr().out
