"""`iterate --iterations 2` end to end on the tiny models through a real server on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import start_server, stop_server


def make_prompts(root: Path, n: int = 3) -> tuple[Path, Path]:
    """n tiny coloured-shape images and a prompts JSONL `{"id", "image", "prompt"}`."""
    from PIL import Image, ImageDraw

    images = root / "images"
    images.mkdir(parents=True)
    lines = []
    for i, colour in enumerate(["red", "blue", "green", "yellow"][:n]):
        img = Image.new("RGB", (32, 32), "white")
        ImageDraw.Draw(img).ellipse((4, 4, 20 + i, 24), fill=colour)
        img.save(images / f"{i}.png")
        lines.append(json.dumps({"id": f"q{i}", "image": f"{i}.png",
                                 "prompt": "Describe the image."}))  # fmt: skip
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    return prompts, images


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_iterate_two_rounds_then_resume(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from selfreward_vlm.client import ScoringClient
    from selfreward_vlm.trainer.iterate import iterate

    prompts, images = make_prompts(tmp_path)
    work = tmp_path / "work"
    proc, url = start_server(tiny_models, tmp_path / "data")
    try:
        kwargs: dict[str, Any] = {
            "service_url": url, "method": "csr", "prompts": prompts, "images": images,
            "iterations": 2, "work_dir": work, "model": str(tiny_models["vlm"]), "run": "t",
            "train_overrides": {"max_steps": 2, "lr": 1e-3, "lora_r": 8, "lora_alpha": 16,
                                "batch_size": 2, "device": "cpu"},
            "method_options": {"num_candidates": 2, "num_beam_groups": 2,
                               "max_new_tokens": 8, "max_steps": 2},
        }  # fmt: skip
        records = iterate(**kwargs)
        rows = json.loads((work / "iterations.json").read_text())
        assert [r["iteration"] for r in rows] == [1, 2]
        assert all(r["pairs"] > 0 and r["steps"] == 2 for r in rows)
        assert [r["policy"] for r in rows] == ["base", "t-iter1"]
        iter2 = [json.loads(x) for x in (work / "iter2" / "pairs.jsonl").read_text().split("\n")
                 if x.strip()]  # fmt: skip
        assert {p["model"] for p in iter2} == {"t-iter1"} and {p["iteration"] for p in iter2} == {2}
        summary2 = json.loads((work / "iter2" / "train" / "train_summary.json").read_text())
        assert summary2["config"]["init_adapter"].endswith("iter1/train/adapter")
        with ScoringClient(url) as client:
            assert {"t-iter1", "t-iter2"} <= {a.name for a in client.list_adapters().adapters}
            assert {"t-iter1", "t-iter2"} <= {d.name for d in client.list_datasets().datasets}

        before = snapshot(work)
        again = iterate(**kwargs)  # everything is done: nothing is redone or rewritten
        assert again == records
        assert snapshot(work) == before
    finally:
        stop_server(proc)
