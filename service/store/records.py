"""What the store holds and how it names it: rows, dataset names, page cursors, JSONL exports
(shared by both back ends and by the routes)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from selfreward_vlm.core.schemas import PreferencePair
from selfreward_vlm.service.errors import InvalidRequestError

DATASET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ImageRow:
    """A stored image: its file bytes as uploaded and what Pillow read from them."""

    id: str
    data: bytes
    width: int
    height: int
    format: str


@dataclass(frozen=True)
class AdapterRecord:
    """An adapter in the shared registry: its files are `digest` in the shared adapter
    directory; `version` grows by one at every upload or delete of the name."""

    name: str
    version: int
    digest: str | None  # None once deleted
    deleted: bool
    created: float


class MissingImagesError(Exception):
    """Pairs name images the store does not hold (checked inside the write transaction)."""

    def __init__(self, missing: set[str]) -> None:
        super().__init__(f"{len(missing)} unknown image id(s)")
        self.missing = missing


@dataclass(frozen=True)
class GcReport:
    """What `Store.gc` deleted (or, with `dry_run`, would delete) and what it kept."""

    images_deleted: int
    image_bytes_freed: int
    images_kept_referenced: int
    images_kept_recent: int
    dry_run: bool


def validate_dataset_name(name: str, field: str = "name") -> str:
    """Return `name` if it is a valid dataset name, else a 422 naming `field`."""
    if not DATASET_NAME_RE.match(name):
        raise InvalidRequestError(
            f"invalid dataset name {name!r}: 1-128 of [A-Za-z0-9._-], starting with a letter "
            "or digit",
            field=field,
        )
    return name


# A page cursor: "p" and the insertion number of the last pair of the page. Opaque to callers
# (they pass `next_cursor` back); the OpenAPI document states the pattern so that a cursor is
# valid exactly when it matches. Cursors of earlier versions (base64 of "s<seq>") still work.
CURSOR_RE = re.compile(r"^p[0-9]{1,18}$")


def encode_cursor(seq: int) -> str:
    """An opaque page cursor for the pair with insertion number `seq`."""
    return f"p{seq}"


def decode_cursor(cursor: str, field: str = "after") -> int:
    """The insertion number inside a cursor from `encode_cursor` (422 naming `field` if bad)."""
    if CURSOR_RE.match(cursor):
        return int(cursor[1:])
    try:  # an earlier version's cursor: base64url of "s<seq>"
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("s"):
            raise ValueError(raw)
        return int(raw[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequestError(f"invalid cursor {cursor!r}", field=field) from None


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
