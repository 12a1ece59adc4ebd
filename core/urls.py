"""Where pairs come from: a service dataset URL or a local file (plain strings, no I/O).

Shared by the client (`pairs export`'s source), the trainer (its `pairs` setting) and anything
else that takes "a JSONL file, or `http://host:port[/prefix]/v1/datasets/NAME`".
"""

from __future__ import annotations

DATASET_MARKER = "/v1/datasets/"


def is_http(source: str) -> bool:
    """True for an `http://` or `https://` URL, false for a file path."""
    return source.startswith(("http://", "https://"))


def split_dataset_url(url: str) -> tuple[str, str]:
    """`http://h:p[/prefix]/v1/datasets/NAME[/pairs]` -> (`http://h:p[/prefix]`, `NAME`).

    Raises ValueError when the URL names no dataset."""
    if DATASET_MARKER not in url:
        raise ValueError(f"pairs: expected .../v1/datasets/NAME, got {url!r}")
    base, rest = url.split(DATASET_MARKER, 1)
    name = rest.strip("/").removesuffix("/pairs")
    if not name or "/" in name:
        raise ValueError(f"pairs: no dataset name in {url!r}")
    return base.rstrip("/"), name
