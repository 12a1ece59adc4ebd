"""The SQLite pair store: idempotent upserts, cursor paging, durability, JSONL round trip."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from selfreward_vlm.core.schemas import PreferencePair, ResponseScore, SentenceScore
from selfreward_vlm.service.errors import InvalidRequestError, NotFoundError
from selfreward_vlm.service.store import ImageRow, PairStore, iter_jsonl_pairs

ROOT = Path(__file__).resolve().parent.parent


def make_pair(i: int, chosen: str | None = None) -> PreferencePair:
    return PreferencePair(
        id=f"p{i:04d}",
        prompt_id=f"q{i // 3}",
        prompt="Describe the image.",
        chosen=chosen or f"There is a red circle {i}.",
        rejected=f"There is a blue square {i}.",
        images=[],
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


@pytest.fixture()
def store(tmp_path: Path):
    s = PairStore(tmp_path / "selfreward.db")
    yield s
    s.close()


def test_upsert_is_idempotent(store: PairStore) -> None:
    pairs = [make_pair(i) for i in range(5)]
    assert store.upsert("ds", pairs) == (5, 0, 5)
    assert store.upsert("ds", pairs[:3]) == (0, 3, 5)
    # same id, different content: ignored (first write wins) and counted as a duplicate
    assert store.upsert("ds", [make_pair(1, chosen="changed"), make_pair(9)]) == (1, 1, 6)
    # duplicates inside one batch count once
    assert store.upsert("ds", [make_pair(20), make_pair(20)]) == (1, 1, 7)
    got, _ = store.page("ds", limit=100)
    assert [p.id for p in got] == ["p0000", "p0001", "p0002", "p0003", "p0004", "p0009", "p0020"]
    assert got[1].chosen == "There is a red circle 1."
    assert got[0] == pairs[0]  # full round trip, nested scores included
    # datasets are separate namespaces
    assert store.upsert("other", pairs[:2]) == (2, 0, 2)
    assert store.datasets() == [("ds", 7), ("other", 2)]


def test_cursor_paging_covers_every_pair_once(store: PairStore) -> None:
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


def test_bad_names_cursors_and_unknown_datasets(store: PairStore) -> None:
    with pytest.raises(InvalidRequestError) as e:
        store.upsert("../etc", [make_pair(0)])
    assert e.value.field == "name"
    with pytest.raises(NotFoundError):
        store.page("nothing-here")
    store.upsert("ds", [make_pair(0)])
    with pytest.raises(InvalidRequestError) as e:
        store.page("ds", after="not a cursor!")
    assert e.value.field == "after"


def test_survives_reopen_and_images_stored_once(tmp_path: Path) -> None:
    db = tmp_path / "selfreward.db"
    store = PairStore(db)
    store.upsert("ds", [make_pair(i) for i in range(3)])
    row = ImageRow("a" * 64, b"\x89PNG...", 4, 3, "PNG")
    assert store.put_image(row) is True
    assert store.put_image(row) is False
    store.close()
    reopened = PairStore(db)
    assert reopened.datasets() == [("ds", 3)]
    assert reopened.get_image("a" * 64) == row
    assert reopened.missing_images(["a" * 64, "b" * 64]) == {"b" * 64}
    reopened.close()


def test_concurrent_writers_from_threads(store: PairStore) -> None:
    def write(offset: int) -> None:
        for k in range(10):
            store.upsert("ds", [make_pair(offset + k), make_pair(k)])  # overlapping ids

    threads = [threading.Thread(target=write, args=(100 * t,)) for t in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [p.id for p in store.iter_pairs("ds", batch=9)]
    assert len(ids) == len(set(ids)) == 40 + 10


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    """A child writes batches and acknowledges each on stdout; it is SIGKILLed mid-stream;
    every acknowledged batch must be in the reopened store."""
    db = tmp_path / "selfreward.db"
    child = textwrap.dedent(
        f"""
        import sys, time
        from selfreward_vlm.service.store import PairStore
        from tests.test_store import make_pair
        store = PairStore({str(db)!r})
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
    store = PairStore(db)
    try:
        ((name, count),) = store.datasets()
        assert name == "ds"
        assert count >= (acked + 1) * 10
        assert count % 10 == 0  # a batch is one transaction: all of it or none of it
        ids = {p.id for p in store.iter_pairs("ds")}
        assert {f"p{i:04d}" for i in range((acked + 1) * 10)} <= ids
    finally:
        store.close()


def test_jsonl_export_import_round_trip(store: PairStore, tmp_path: Path) -> None:
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
