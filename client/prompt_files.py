"""`selfreward prompts convert`: prompt sets a CSR user already has → the prompts JSONL that
`pairs` and `iterate` read (one `{"id", "image", "prompt"}` per line).

Two formats, each a JSON array (or JSON lines) of objects:
- `csr`: the official `inference_csr/data/CSR-Prompt-Dataset-12k.json` of
  github.com/YiyangZhou/CSR, `{"id", "image", "input"}`. As its `sample.py` does, "<image>" and
  the line break beside it are removed from `input`, and the image file is
  `"COCO_train2014_" + image` (`--image-prefix` changes the prefix; "" keeps the name as given).
- `llava`: LLaVA-Instruct-150K (`llava_instruct_150k.json`, `detail_23k.json`, …),
  `{"id", "image", "conversations": [{"from": "human", "value"}, {"from": "gpt", …}, …]}`: the
  prompt is the first human turn (later turns depend on the answers before them); the image
  name is kept (no prefix unless given). Entries without an image keep `"image": null`.

Ids must be unique in a prompts file; LLaVA's merged files repeat an image's id across its
subsets, so a repeated id gets `-2`, `-3`, … in order of appearance. `convert` reports how
many entries it wrote, renamed and skipped (no prompt text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("auto", "csr", "llava")
CSR_IMAGE_PREFIX = (
    "COCO_train2014_"  # sample.py: os.path.join(images_dir, 'COCO_train2014_' + image)
)


def strip_image_token(text: str) -> str:
    """sample.py's cleaning: "<image>\\n", "\\n<image>", then any "<image>" removed; stripped."""
    return text.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "").strip()


def read_entries(path: str | Path) -> list[dict[str, Any]]:
    """A JSON array or JSON lines of objects; anything else is a ValueError naming the file."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()
        ]  # fmt: skip
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a JSON array or JSON lines ({exc})") from exc
    if not all(isinstance(e, dict) for e in data):
        raise ValueError(f"{path}: every entry must be a JSON object")
    return data


def detect_format(entries: list[dict[str, Any]]) -> str:
    """`csr` when entries carry `input`, `llava` when they carry `conversations`."""
    first = entries[0] if entries else {}
    if "conversations" in first:
        return "llava"
    if "input" in first:
        return "csr"
    raise ValueError("cannot tell the format: entries have neither 'input' (csr) nor "
                     "'conversations' (llava); pass --format")  # fmt: skip


def _first_human_turn(entry: dict[str, Any]) -> str:
    for turn in entry.get("conversations") or []:
        if isinstance(turn, dict) and turn.get("from") == "human":
            return str(turn.get("value", ""))
    return ""


@dataclass
class ConvertReport:
    """What a conversion did."""

    format: str
    written: int = 0
    renamed: int = 0  # repeated ids given a -k suffix
    skipped: list[str] = field(default_factory=list)  # ids without prompt text


def convert_entries(
    entries: list[dict[str, Any]], fmt: str = "auto", image_prefix: str | None = None
) -> tuple[list[dict[str, Any]], ConvertReport]:
    """(prompt records, report) of `entries` in format `fmt` (see the module docstring);
    `image_prefix` None is the format's default (csr: "COCO_train2014_", llava: "")."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, not {fmt!r}")
    fmt = detect_format(entries) if fmt == "auto" else fmt
    prefix = (
        image_prefix if image_prefix is not None else (CSR_IMAGE_PREFIX if fmt == "csr" else "")
    )
    report, seen, out = ConvertReport(fmt), dict[str, int](), list[dict[str, Any]]()
    for n, entry in enumerate(entries, 1):
        if "id" not in entry:
            raise ValueError(f"entry {n} has no 'id'")
        raw = entry.get("input", "") if fmt == "csr" else _first_human_turn(entry)
        prompt, base_id = strip_image_token(str(raw)), str(entry["id"])
        if not prompt:
            report.skipped.append(base_id)
            continue
        seen[base_id] = seen.get(base_id, 0) + 1
        rid = base_id if seen[base_id] == 1 else f"{base_id}-{seen[base_id]}"
        report.renamed += rid != base_id
        image = entry.get("image")
        out.append({"id": rid, "image": None if image is None else prefix + str(image),
                    "prompt": prompt})  # fmt: skip
    report.written = len(out)
    return out, report


def iter_lines(records: list[dict[str, Any]]) -> Iterator[str]:
    """The prompts JSONL, one line per record."""
    for r in records:
        yield json.dumps(r, ensure_ascii=False) + "\n"


def convert_file(
    src: str | Path, dst: str | Path, fmt: str = "auto", image_prefix: str | None = None
) -> ConvertReport:
    """Convert `src` into the prompts JSONL `dst` (written whole, then renamed into place)."""
    records, report = convert_entries(read_entries(src), fmt, image_prefix)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_text("".join(iter_lines(records)), encoding="utf-8")
    tmp.replace(dst)
    return report
