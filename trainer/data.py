"""Preference pairs in, a TRL vision preference `datasets.Dataset` out.

Sources: the service (`http://host:port/v1/datasets/NAME`, streamed page by page through
`client`) or a JSONL file of `PreferencePair` (a torn last line from an interrupted writer is
skipped). Images come from the service by id, or for JSONL from a directory / id->path map.

Pairs whose chosen or rejected text holds a special token (`<image>`, `<s>`, ...) are dropped
and counted: fed back through the processor, a generated `<image>` adds an image placeholder
with no image, and the next round's training fails on it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfreward_vlm.core.schemas import PreferencePair
from selfreward_vlm.trainer.config import is_http, split_dataset_url

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)


@dataclass
class PairsReport:
    """What happened to the pairs on the way into the dataset."""

    total: int = 0
    dropped_special_tokens: int = 0
    dropped_empty: int = 0

    @property
    def used(self) -> int:
        return self.total - self.dropped_special_tokens - self.dropped_empty

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "used": self.used}


# --------------------------------------------------------------------------- reading pairs


def read_pairs_jsonl(path: str | Path) -> Iterator[PreferencePair]:
    """One `PreferencePair` per line; blank lines skipped; a torn *last* line is skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # an interrupted writer leaves half a line at the end
                logger.warning("%s: skipping torn last line %d", path, number)
                return
            raise ValueError(f"{path}:{number}: not valid JSON") from None
        yield PreferencePair.model_validate(record)


def iter_pairs(source: str, page_size: int = 256, client: Any = None) -> Iterator[PreferencePair]:
    """Pairs from a dataset URL (via `client`) or a JSONL file."""
    if not is_http(source):
        yield from read_pairs_jsonl(source)
        return
    base_url, dataset = split_dataset_url(source)
    if client is None:
        from selfreward_vlm.client import ScoringClient

        client = ScoringClient(base_url)
    for pair in client.iter_pairs(dataset, page_size=page_size):
        yield pair if isinstance(pair, PreferencePair) else PreferencePair.model_validate(pair)


# --------------------------------------------------------------------------- images


class ImageLoader:
    """Images by id (sha256 of the file bytes), decoded once and cached.

    `client`: fetch from the service. `images`: a directory (files named `<id>` or `<id>.ext`,
    otherwise every file is hashed once to find its id) or a JSON file mapping id -> path.
    """

    def __init__(self, client: Any = None, images: str | Path | None = None) -> None:
        self._client = client
        self._root = Path(images) if images else None
        self._paths: dict[str, Path] | None = None
        self._cache: dict[str, Image] = {}

    def get(self, image_id: str) -> Image:
        if image_id not in self._cache:
            self._cache[image_id] = _decode(self._read(image_id))
        return self._cache[image_id]

    def _read(self, image_id: str) -> bytes:
        if self._client is not None and self._root is None:
            return bytes(self._client.get_image(image_id))
        if self._root is None:
            raise FileNotFoundError(f"image {image_id}: pass --images DIR for JSONL pairs")
        path = self._lookup(image_id)
        if path is None:
            raise FileNotFoundError(f"image {image_id} not found under {self._root}")
        return path.read_bytes()

    def _lookup(self, image_id: str) -> Path | None:
        assert self._root is not None
        if self._root.is_file():  # a JSON map id -> path (relative to the map's folder)
            if self._paths is None:
                raw = json.loads(self._root.read_text())
                self._paths = {k: self._root.parent / v for k, v in raw.items()}
            return self._paths.get(image_id)
        named = [self._root / image_id, *sorted(self._root.glob(f"{image_id}.*"))]
        for path in named:
            if path.is_file():
                return path
        if self._paths is None:  # files not named by id: the id is the sha256 of the bytes
            self._paths = {
                hashlib.sha256(p.read_bytes()).hexdigest(): p
                for p in sorted(self._root.rglob("*"))
                if p.is_file()
            }
        return self._paths.get(image_id)


def _decode(data: bytes) -> Image:
    from PIL import Image as PILImage

    image = PILImage.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


# --------------------------------------------------------------------------- filtering


def special_token_texts(processing_class: Any) -> set[str]:
    """Every special token's text (BOS, EOS, PAD, UNK, `<image>`, added special tokens)."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    texts = {str(t) for t in tokenizer.all_special_tokens}
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            texts.add(str(added.content))
    image_token = getattr(processing_class, "image_token", None)
    if image_token:
        texts.add(str(image_token))
    return {t for t in texts if t}


def clean_response(text: str, eos_text: str | None) -> str:
    """Drop one trailing EOS text: the trainer appends EOS to every response itself."""
    return text.removesuffix(eos_text) if eos_text else text


def filter_pairs(
    pairs: Iterable[PreferencePair], specials: set[str], eos_text: str | None
) -> tuple[list[PreferencePair], PairsReport]:
    """Keep pairs whose responses are non-empty and hold no special-token text, in pair-id order.

    The order is the pairs' ids, not the order the store returns them in: a concurrent search
    publishes prompts as they finish, so the same pairs arrive in a different order run to run,
    and the trainer's seeded shuffle would then give a different model from the same data."""
    report = PairsReport()
    kept: list[PreferencePair] = []
    for pair in pairs:
        report.total += 1
        chosen = clean_response(pair.chosen, eos_text)
        rejected = clean_response(pair.rejected, eos_text)
        if not chosen.strip() or not rejected.strip():
            report.dropped_empty += 1
            continue
        if any(s in text for s in specials for text in (chosen, rejected)):
            report.dropped_special_tokens += 1
            continue
        kept.append(pair.model_copy(update={"chosen": chosen, "rejected": rejected}))
    if report.dropped_special_tokens or report.dropped_empty:
        logger.warning(
            "dropped %d pair(s) with special tokens and %d with an empty response (of %d)",
            report.dropped_special_tokens, report.dropped_empty, report.total,
        )  # fmt: skip
    kept.sort(key=lambda pair: pair.id)
    return kept, report


# --------------------------------------------------------------------------- TRL rows


def to_trl_row(pair: PreferencePair, images: ImageLoader) -> dict[str, Any]:
    """TRL's conversational vision preference format (plus the pair id, for auditing)."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in pair.images]
    content.append({"type": "text", "text": pair.prompt})
    return {
        "pair_id": pair.id,
        "prompt": [{"role": "user", "content": content}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": pair.chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": pair.rejected}]}],
        "images": [images.get(i) for i in pair.images],
    }


def build_dataset(rows: list[dict[str, Any]]) -> Any:
    """A `datasets.Dataset`; the `images` column only when some pair has an image, so a
    text-only LM gets a text dataset."""
    from datasets import Dataset

    if not rows:
        raise ValueError("no usable preference pairs")
    if not any(row["images"] for row in rows):
        rows = [{k: v for k, v in row.items() if k != "images"} for row in rows]
    return Dataset.from_list(rows)


def message_text(messages: list[dict[str, Any]]) -> str:
    """The text of a one-message conversation (content as a string or a list of parts)."""
    content = messages[0]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if part.get("type") == "text")
