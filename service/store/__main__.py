"""Store maintenance: `python -m selfreward_vlm.service.store check|migrate|copy|gc`.

- `check URL`: the integrity check (engine + logical invariants); exit 1 when it finds problems.
- `migrate URL`: open the store, which applies any missing migration; prints the version.
- `copy SRC DST`: every image, dataset and adapter-registry name from one store into another
  (e.g. the embedded SQLite file into the PostgreSQL store replicas share). Pairs keep their
  order; upserts are idempotent, so an interrupted copy is resumed by running it again.

- `gc URL [--adapter-store DIR] [--min-age-s S] [--dry-run]`: delete the images no pair names
  and the adapter versions no name points to, older than S seconds (default 1 day); prints what
  was deleted and what was kept (see `service/routes/retention.py` for why).

A URL is a SQLite file path or `postgresql://…`, as for `selfreward serve --store`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfreward_vlm.service.store import Store, open_store


def copy_store(src: Store, dst: Store, batch: int = 500) -> dict[str, int]:
    """Copy images, then pairs (dataset by dataset, in order), then the adapter registry's
    live names; returns what was new in `dst`."""
    counts = {"images": 0, "pairs": 0, "adapters": 0}
    for image_id in src.image_ids():
        row = src.get_image(image_id)
        if row is not None and dst.put_image(row):
            counts["images"] += 1
    for name, _ in src.datasets():
        chunk = []
        for pair in src.iter_pairs(name, batch):
            chunk.append(pair)
            if len(chunk) == batch:
                counts["pairs"] += dst.upsert(name, chunk)[0]
                chunk = []
        counts["pairs"] += dst.upsert(name, chunk)[0]
    known = {r.name: r for r in dst.adapters()}
    for record in src.adapters():
        if (
            not record.deleted
            and record.digest
            and getattr(known.get(record.name), "digest", None) != record.digest
        ):
            dst.register_adapter(record.name, record.digest)
            counts["adapters"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfreward_vlm.service.store")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="integrity check").add_argument("url")
    sub.add_parser("migrate", help="apply missing migrations").add_argument("url")
    copy = sub.add_parser("copy", help="copy one store into another")
    copy.add_argument("src")
    copy.add_argument("dst")
    gc = sub.add_parser("gc", help="delete unreferenced images and adapter files")
    gc.add_argument("url")
    gc.add_argument("--adapter-store", type=Path, help="the shared adapter directory")
    gc.add_argument("--min-age-s", type=float, default=86400.0, help="keep younger [86400]")
    gc.add_argument("--dry-run", action="store_true", help="count only, delete nothing")
    args = parser.parse_args(argv)
    if args.command == "gc":
        return _gc(args.url, args.adapter_store, args.min_age_s, args.dry_run)
    if args.command == "copy":
        src, dst = open_store(args.src), open_store(args.dst)
        try:
            counts = copy_store(src, dst)
        finally:
            src.close()
            dst.close()
        print(
            f"copied {counts['images']} images, {counts['pairs']} pairs, "
            f"{counts['adapters']} adapter names (new in the destination)"
        )
        return 0
    store = open_store(args.url)
    try:
        if args.command == "migrate":
            print(f"{store.describe()}: schema version {store.schema_version()}")
            return 0
        problems = store.integrity_check()
    finally:
        store.close()
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s)" if problems else "ok: no problems found")
    return 1 if problems else 0


def _gc(url: str, adapter_store: Path | None, min_age_s: float, dry_run: bool) -> int:
    from selfreward_vlm.service.adapters.shared import gc_adapter_files

    store = open_store(url)
    try:
        images = store.gc(min_age_s, dry_run)
        adapters = (
            gc_adapter_files(store, adapter_store, min_age_s, dry_run) if adapter_store else None
        )
    finally:
        store.close()
    verb = "would delete" if dry_run else "deleted"
    print(
        f"images: {verb} {images.images_deleted} ({images.image_bytes_freed} bytes); kept "
        f"{images.images_kept_referenced} named by pairs, {images.images_kept_recent} younger "
        f"than {min_age_s:g} s"
    )
    if adapters is not None:
        print(
            f"adapter files: {verb} {adapters[0]} version(s) ({adapters[1]} bytes); kept "
            f"{adapters[2]} (a name points to them, or younger than {min_age_s:g} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
