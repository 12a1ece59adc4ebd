"""Retention on both back ends: deleting a dataset, gc of unreferenced images and adapter files
(what is kept and why), the gc CLI, and the in-transaction image check that keeps gc from
deleting an image a pair being written names."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfreward_vlm.service.adapters.shared import gc_adapter_files
from selfreward_vlm.service.errors import NotFoundError
from selfreward_vlm.service.store import ImageRow, Store, open_store
from selfreward_vlm.service.store.__main__ import main as store_main
from selfreward_vlm.service.store.records import MissingImagesError
from tests.api.test_store import BACKENDS, make_pair

__all__ = ["BACKENDS"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (
        str(tmp_path / "selfreward.db")
        if request.param == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    s = open_store(url)
    yield s
    s.close()


def image(n: int, created_ago_s: float = 0.0) -> ImageRow:
    data = f"image bytes {n}".encode() * 10
    return ImageRow(hashlib.sha256(data).hexdigest(), data, 4, 4, "PNG")


def put(store: Store, n: int, age_s: float = 0.0) -> str:
    row = image(n)
    store.put_image(row)
    if age_s:
        with store._write() as conn:
            conn.execute(
                "UPDATE images SET created = ? WHERE id = ?", (time.time() - age_s, row.id)
            )
    return row.id


def test_delete_dataset_removes_its_pairs_and_nothing_else(store: Store) -> None:
    a = put(store, 1)
    store.upsert("keep", [make_pair(i, images=[a]) for i in range(3)], check_images=True)
    store.upsert("drop", [make_pair(i, images=[a]) for i in range(5)], check_images=True)
    assert store.delete_dataset("drop") == 5
    assert store.datasets() == [("keep", 3)]
    with pytest.raises(NotFoundError):
        store.page("drop")
    with pytest.raises(NotFoundError):
        store.delete_dataset("drop")
    # the name starts empty when written again; ids are new to it
    assert store.upsert("drop", [make_pair(0)])[:2] == (1, 0)
    assert store.integrity_check() == []


def test_gc_keeps_referenced_and_recent_images(store: Store) -> None:
    named = put(store, 1, age_s=3600)
    old = put(store, 2, age_s=3600)
    recent = put(store, 3)
    of_deleted = put(store, 4, age_s=3600)
    store.upsert("d", [make_pair(0, images=[named])], check_images=True)
    store.upsert("gone", [make_pair(0, images=[of_deleted])], check_images=True)
    store.delete_dataset("gone")

    dry = store.gc(min_age_s=600, dry_run=True)
    assert (dry.images_deleted, dry.images_kept_referenced, dry.images_kept_recent) == (2, 1, 1)
    assert len(store.image_ids()) == 4  # a dry run deletes nothing

    report = store.gc(min_age_s=600)
    assert report.images_deleted == 2 and report.image_bytes_freed == 2 * len(image(2).data)
    assert set(store.image_ids()) == {named, recent}
    assert store.integrity_check() == []
    # a pair naming a collected image is refused, naming it, inside the write transaction
    with pytest.raises(MissingImagesError) as err:
        store.upsert("d", [make_pair(9, images=[old])], check_images=True)
    assert err.value.missing == {old}
    assert store.datasets() == [("d", 1)]


def test_duplicates_do_not_add_references(store: Store) -> None:
    """First write wins: a duplicate id posted with other images does not keep them alive."""
    a, b = put(store, 1, age_s=3600), put(store, 2, age_s=3600)
    store.upsert("d", [make_pair(0, images=[a])], check_images=True)
    assert store.upsert("d", [make_pair(0, images=[b])], check_images=True)[:2] == (0, 1)
    assert store.gc(min_age_s=0).images_deleted == 1
    assert store.image_ids() == [a]


def test_adapter_gc_keeps_what_a_name_points_to(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "adapter-store"
    for digest in ("live", "old", "fresh"):
        (root / digest).mkdir(parents=True)
        (root / digest / "adapter_model.safetensors").write_bytes(b"x" * 100)
    (root / ".tmp" / "crashed-upload").mkdir(parents=True)
    hour_ago = time.time() - 3600
    for folder in ("live", "old", ".tmp/crashed-upload"):
        os.utime(root / folder, (hour_ago, hour_ago))
    store.register_adapter("a", "old")
    store.register_adapter("a", "live")  # "old" is a previous version now
    store.register_adapter("b", "gone")
    store.unregister_adapter("b")

    assert gc_adapter_files(store, root, 600, dry_run=True) == (1, 100, 2)
    assert (root / "old").is_dir()
    assert gc_adapter_files(store, root, 600) == (1, 100, 2)
    assert sorted(p.name for p in root.iterdir()) == [".tmp", "fresh", "live"]
    assert not (root / ".tmp" / "crashed-upload").exists()


def test_gc_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(tmp_path / "s.db")
    store = open_store(url)
    put(store, 1, age_s=7200)
    store.close()
    (tmp_path / "adapters").mkdir()
    assert store_main(["gc", url, "--min-age-s", "3600", "--dry-run"]) == 0
    assert "would delete 1" in capsys.readouterr().out
    args = ["gc", url, "--min-age-s", "3600", "--adapter-store", str(tmp_path / "adapters")]
    assert store_main(args) == 0
    out = capsys.readouterr().out
    assert "images: deleted 1" in out and "adapter files: deleted 0" in out
    store = open_store(url)
    assert store.image_ids() == []
    store.close()


def test_delete_and_gc_over_http_need_the_admin_key(tmp_path: Path) -> None:
    """In-process app (fake models): the routes, their auth and their answers."""
    from tests.api.test_service_shell import make_client

    keys = {"api_key": "k-api", "admin_key": "k-admin"}
    api = {"Authorization": "Bearer k-api"}
    admin = {"Authorization": "Bearer k-admin"}
    with make_client(tmp_path, **keys) as client:
        store: Store = client.app.state.selfreward.store  # type: ignore[attr-defined]
        old = put(store, 1, age_s=7200)
        body = {"pairs": [make_pair(i, images=[old]).model_dump() for i in range(3)]}
        assert client.post("/v1/datasets/d/pairs", json=body, headers=api).status_code == 200
        assert client.delete("/v1/datasets/d", headers=api).status_code == 403
        assert client.post("/v1/admin/gc", json={}, headers=api).status_code == 403
        gc = client.post("/v1/admin/gc", json={"min_age_s": 3600}, headers=admin).json()
        assert gc["images_deleted"] == 0 and gc["images_kept_referenced"] == 1
        r = client.delete("/v1/datasets/d", headers=admin)
        assert r.status_code == 200 and r.json() == {"dataset": "d", "deleted": 3}
        assert client.delete("/v1/datasets/d", headers=admin).status_code == 404
        gc = client.post("/v1/admin/gc", json={"min_age_s": 3600}, headers=admin).json()
        assert gc["images_deleted"] == 1 and gc["image_bytes_freed"] == len(image(1).data)
        assert client.get(f"/v1/images/{old}", headers=api).status_code == 404
        refused = client.post("/v1/admin/gc", json={"dry_run": "yes"}, headers=admin)
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "dry_run"
