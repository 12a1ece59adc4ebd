"""The store's logical invariants, checked the same way on both back ends.

What a crash (or a bug) must never leave behind, beyond what the database engine checks itself:
every pair row parses as a `PreferencePair` whose id is the row's id; the dataset index counts
exactly the rows it indexes; every image's id is the sha256 of its bytes and every image a pair
names is stored, and indexed in `pair_images` (which gc keeps images by); every live adapter
record points at files, every deleted one at none.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from pydantic import ValidationError

from selfreward_vlm.core.schemas import PreferencePair
from selfreward_vlm.service.store.base import stored_images

if TYPE_CHECKING:
    from selfreward_vlm.service.store.base import Conn

_BATCH = 1000


def check_invariants(conn: Conn) -> list[str]:
    """Problems found, as sentences (empty: all invariants hold)."""
    problems = _check_pairs(conn)
    problems += _check_index(conn)
    problems += _check_images(conn)
    problems += _check_adapters(conn)
    return problems


def _check_pairs(conn: Conn) -> list[str]:
    problems: list[str] = []
    named_images: set[str] = set()
    references = 0  # (pair, image) pairs: what the gc index `pair_images` must hold
    last = 0
    while True:  # in seq batches: a big store is never loaded at once
        rows = conn.execute(
            "SELECT seq, dataset, id, json FROM pairs WHERE seq > ? ORDER BY seq LIMIT ?",
            (last, _BATCH),
        ).fetchall()
        if not rows:
            break
        for seq, dataset, pair_id, js in rows:
            try:
                pair = PreferencePair.model_validate_json(js)
            except ValidationError as e:
                problems.append(f"pair row {seq} ({dataset}/{pair_id}) does not parse: {e}")
                continue
            if pair.id != pair_id:
                problems.append(f"pair row {seq}: json id {pair.id!r} != row id {pair_id!r}")
            named_images.update(pair.images)
            references += len(set(pair.images))
        last = int(rows[-1][0])
    if named_images:
        for missing in sorted(named_images - stored_images(conn, named_images)):
            problems.append(f"a pair names image {missing} that is not stored")
    return problems + _check_references(conn, references)


def _check_references(conn: Conn, expected: int) -> list[str]:
    """`pair_images` (what gc keeps images by) indexes exactly the pairs' images."""
    indexed = int(conn.execute("SELECT COUNT(*) FROM pair_images").fetchone()[0])
    orphans = int(
        conn.execute(
            "SELECT COUNT(*) FROM pair_images r WHERE NOT EXISTS "
            "(SELECT 1 FROM pairs p WHERE p.dataset = r.dataset AND p.id = r.pair_id)"
        ).fetchone()[0]
    )
    problems = []
    if orphans:
        problems.append(f"pair_images: {orphans} row(s) name a pair that does not exist")
    if indexed - orphans != expected:
        problems.append(
            f"pair_images indexes {indexed - orphans} pair images; pairs name {expected}"
        )
    return problems


def _check_index(conn: Conn) -> list[str]:
    counted = dict(conn.execute("SELECT dataset, COUNT(*) FROM pairs GROUP BY dataset").fetchall())
    indexed = dict(conn.execute("SELECT name, count FROM datasets").fetchall())
    problems = []
    for name in sorted(set(counted) | set(indexed)):
        if int(counted.get(name, 0)) != int(indexed.get(name, 0)):
            problems.append(
                f"dataset {name!r}: index says {indexed.get(name, 0)} pairs, "
                f"the table holds {counted.get(name, 0)}"
            )
    return problems


def _check_images(conn: Conn) -> list[str]:
    problems = []
    ids = [r[0] for r in conn.execute("SELECT id FROM images ORDER BY id").fetchall()]
    for image_id in ids:  # one at a time: images may be large
        row = conn.execute(
            "SELECT bytes, width, height FROM images WHERE id = ?", (image_id,)
        ).fetchone()
        if hashlib.sha256(bytes(row[0])).hexdigest() != image_id:
            problems.append(f"image {image_id}: bytes do not hash to the id")
        if row[1] <= 0 or row[2] <= 0:
            problems.append(f"image {image_id}: size {row[1]}x{row[2]}")
    return problems


def _check_adapters(conn: Conn) -> list[str]:
    problems = []
    rows = conn.execute("SELECT name, version, digest, deleted FROM adapters").fetchall()
    for name, version, digest, deleted in rows:
        if int(version) < 1:
            problems.append(f"adapter {name!r}: version {version}")
        if bool(deleted) != (digest is None):
            problems.append(f"adapter {name!r}: deleted={bool(deleted)} but digest={digest!r}")
    return problems
