"""`selfreward pairs export --format hf DIR`: called as a user calls it (the CLI), from a JSONL
file and from a service dataset; `datasets.load_from_disk` reads it back in TRL's vision
preference format, and a plain TRL `DPOTrainer` trains a step on it with no conversion."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from selfreward_vlm.cli import app
from selfreward_vlm.client import ScoringClient
from selfreward_vlm.core.schemas import PreferencePair, ResponseScore

COLORS = [(200, 30, 30), (20, 200, 40)]


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def make_pairs(image_ids: list[str]) -> list[PreferencePair]:
    texts = [("There is a red circle.", "There is a dog."), ("A green square.", "A blue sky.")]
    return [
        PreferencePair(
            id=f"p{i}",
            prompt_id=f"q{i}",
            prompt="Describe the image.",
            chosen=c,
            rejected=r,
            images=[image_ids[i]],
            method="csr",
            chosen_score=ResponseScore(reward=2.0),
            rejected_score=ResponseScore(reward=1.0),
        )
        for i, (c, r) in enumerate(texts)
    ]


def check_dataset(out: Path, pairs: list[PreferencePair]) -> None:
    from datasets import load_from_disk

    data = load_from_disk(str(out))
    assert {"prompt", "chosen", "rejected", "images"} <= set(data.column_names)
    for row, pair, color in zip(data, pairs, COLORS, strict=True):
        assert row["prompt"] == [{"role": "user", "content": [
            {"type": "image", "text": None}, {"type": "text", "text": pair.prompt}]}]  # fmt: skip
        assert row["chosen"][0]["role"] == "assistant"
        assert row["chosen"][0]["content"][0]["text"] == pair.chosen
        assert row["rejected"][0]["content"][0]["text"] == pair.rejected
        (image,) = row["images"]
        assert image.getpixel((5, 5)) == color


def test_export_from_jsonl_then_dpo_trainer_takes_it(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    ids = []
    for k, color in enumerate(COLORS):
        (folder / f"img{k}.png").write_bytes(png(color))
        ids.append(hashlib.sha256(png(color)).hexdigest())
    pairs = make_pairs(ids)
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(p.model_dump_json() + "\n" for p in pairs))
    out = tmp_path / "hf"
    res = CliRunner().invoke(app, ["pairs", "export", "--format", "hf", "--pairs", str(source),
                                   "--images", str(folder), str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "wrote 2 pairs" in res.output
    check_dataset(out, pairs)

    # TRL's DPOTrainer on the tiny VLM, fed the folder as it is
    from datasets import load_from_disk
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForImageTextToText.from_pretrained(tiny_models["vlm"])
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2,
        bf16=False, use_cpu=True, report_to="none", save_strategy="no",
        dataloader_pin_memory=False, gradient_checkpointing=False,
    )  # fmt: skip
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=load_from_disk(str(out)),
        processing_class=AutoProcessor.from_pretrained(tiny_models["vlm"]),
    )  # fmt: skip
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss == pytest.approx(0.6931, abs=0.05)


def test_export_from_a_service_dataset(live_server: str, tmp_path: Path) -> None:
    with ScoringClient(live_server) as client:
        ids = [client.upload_image(png(c)) for c in COLORS]
        pairs = make_pairs(ids)
        client.upsert_pairs("export-test", pairs)
    out = tmp_path / "hf"
    url = f"{live_server}/v1/datasets/export-test"
    res = CliRunner().invoke(app, ["pairs", "export", "--pairs", url, str(out)])
    assert res.exit_code == 0, res.output
    check_dataset(out, pairs)
    bad = CliRunner().invoke(app, ["pairs", "export", "--format", "csv", "--pairs", url,
                                   str(tmp_path / "x")])  # fmt: skip
    assert bad.exit_code == 2
    missing = CliRunner().invoke(app, ["pairs", "export", "--pairs", str(tmp_path / "none.jsonl"),
                                       str(tmp_path / "y")])  # fmt: skip
    assert missing.exit_code == 1 and "error" in missing.output
    assert json.loads((out / "dataset_info.json").read_text())  # a datasets folder
