"""`selfreward prompts convert` on hand-written files in both formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selfreward_vlm.client.pairs import load_prompts
from selfreward_vlm.client.prompt_files import convert_entries, convert_file

CSR_12K = [  # the official file's first entries, as published
    {"id": "000000442786", "image": "000000442786.jpg",
     "input": "What do you see happening in this image?\n<image>"},
    {"id": "000000539056", "image": "000000539056.jpg",
     "input": "<image>\nWhat do you think is going on in this snapshot?"},
    {"id": "000000131697", "image": "000000131697.jpg",
     "input": "Can you elaborate on the elements of the picture provided?<image>"},
]  # fmt: skip

LLAVA = [
    {"id": "000000033471", "image": "000000033471.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "The back of the bus features an advertisement."}]},
    {"id": "000000033471", "image": "000000033471.jpg", "conversations": [
        {"from": "human", "value": "Describe the image in detail.\n<image>"},
        {"from": "gpt", "value": "A bus."}]},
    {"id": "text-only-1", "conversations": [
        {"from": "human", "value": "Write a haiku."}, {"from": "gpt", "value": "…"}]},
    {"id": "empty", "image": "x.jpg", "conversations": [{"from": "gpt", "value": "no question"}]},
]  # fmt: skip


def test_csr_12k_as_sample_py_reads_it(tmp_path: Path) -> None:
    src = tmp_path / "CSR-Prompt-Dataset-12k.json"
    src.write_text(json.dumps(CSR_12K))
    report = convert_file(src, tmp_path / "prompts.jsonl")
    assert (report.format, report.written, report.renamed) == ("csr", 3, 0)
    records = load_prompts(tmp_path / "prompts.jsonl")  # what `pairs` reads
    assert [(r.id, r.image, r.prompt) for r in records] == [
        ("000000442786", "COCO_train2014_000000442786.jpg",
         "What do you see happening in this image?"),
        ("000000539056", "COCO_train2014_000000539056.jpg",
         "What do you think is going on in this snapshot?"),
        ("000000131697", "COCO_train2014_000000131697.jpg",
         "Can you elaborate on the elements of the picture provided?"),
    ]  # fmt: skip
    records_bare, _ = convert_entries(CSR_12K, "csr", image_prefix="")
    assert records_bare[0]["image"] == "000000442786.jpg"


def test_llava_instruct_first_human_turn_unique_ids(tmp_path: Path) -> None:
    src = tmp_path / "llava_instruct_150k.jsonl"  # JSON lines are read too
    src.write_text("".join(json.dumps(e) + "\n" for e in LLAVA))
    report = convert_file(src, tmp_path / "prompts.jsonl")
    assert (report.format, report.written, report.renamed, report.skipped) == (
        "llava", 3, 1, ["empty"])  # fmt: skip
    records = load_prompts(tmp_path / "prompts.jsonl")
    assert [(r.id, r.image, r.prompt) for r in records] == [
        ("000000033471", "000000033471.jpg", "What are the colors of the bus in the image?"),
        ("000000033471-2", "000000033471.jpg", "Describe the image in detail."),
        ("text-only-1", None, "Write a haiku."),
    ]  # fmt: skip


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot tell the format"):
        convert_entries([{"id": 1, "question": "?"}])
    with pytest.raises(ValueError, match="format must be one of"):
        convert_entries(CSR_12K, "sharegpt")


def test_cli_prompts_convert(tmp_path: Path) -> None:
    from selfreward_vlm.cli import app

    src = tmp_path / "csr.json"
    src.write_text(json.dumps(CSR_12K))
    out = tmp_path / "p.jsonl"
    res = CliRunner().invoke(app, ["prompts", "convert", str(src), str(out)])
    assert res.exit_code == 0, res.output
    assert "csr: 3 prompts" in res.output and len(load_prompts(out)) == 3
    res = CliRunner().invoke(app, ["prompts", "convert", str(tmp_path / "nope.json"), str(out)])
    assert res.exit_code == 2
