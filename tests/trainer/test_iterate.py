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


def test_iterate_sbspo_without_init_adapter_is_refused(tmp_path: Path) -> None:
    """t = 1 would score the base against the base (every implicit reward 0): refused before
    any request (the URL is never contacted), by the library and by the CLI."""
    from typer.testing import CliRunner

    from selfreward_vlm.trainer.cli import build_app
    from selfreward_vlm.trainer.iterate import iterate

    with pytest.raises(ValueError, match="needs --init-adapter"):
        iterate("http://127.0.0.1:9", "sbspo", tmp_path / "p.jsonl", tmp_path, 1, tmp_path / "w")
    args = ["iterate", "--service", "http://127.0.0.1:9", "--prompts", "p.jsonl", "--images",
            str(tmp_path), "--work", str(tmp_path / "w"), "--method", "sbspo"]  # fmt: skip
    res = CliRunner().invoke(build_app(), args, env={"COLUMNS": "400"})
    assert res.exit_code == 2 and "--init-adapter" in " ".join(res.output.split())
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_iterate_sbspo_starts_from_init_adapter(
    live_server: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """With `init_adapter` (the paper's M1′) iteration 1 samples from it, scores it against
    the base (non-zero rewards), and trains from it with it as the reference."""
    from selfreward_vlm.trainer.iterate import iterate
    from tests.trainer.test_trainer import random_adapter

    prompts, images = make_prompts(tmp_path, 2)
    init = random_adapter(tiny_models, tmp_path / "m1")
    iterate(live_server, "sbspo", prompts, images, 1, tmp_path / "w", model=str(tiny_models["vlm"]),
            run="sb", init_adapter=init,
            train_overrides={"max_steps": 1, "lora_r": 4, "lora_alpha": 8, "device": "cpu"},
            method_options={"num_samples": 4, "max_new_tokens": 6})  # fmt: skip
    pairs = [json.loads(x) for x in (tmp_path / "w" / "iter1" / "pairs.jsonl").open()]
    assert pairs and {(p["model"], p["reference"]) for p in pairs} == {("sb-iter0", "base")}
    assert all(p["chosen_score"]["extra"]["reward_sum"] != 0.0 for p in pairs)
    summary = json.loads((tmp_path / "w" / "iter1" / "train" / "train_summary.json").read_text())
    assert summary["config"]["init_adapter"] == str(init)
    assert summary["config"]["reference"] == str(init)


def test_iteration_levers_schedule_lr_and_sft_weight() -> None:
    """`lr_decay` and `sft_weight_growth` give each iteration its own lr and SFT weight; the
    loop levers never reach DPOTrainConfig."""
    from selfreward_vlm.trainer.iterate import _iteration_overrides

    levers = {"lr": 2e-4, "loss_type": ["sigmoid", "sft"], "lr_decay": 0.5,
              "sft_weight_growth": 2.0, "fresh_adapter": True}  # fmt: skip
    third = _iteration_overrides(levers, 3)
    assert third == {"lr": 5e-5, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 4.0]}
    assert _iteration_overrides({"lr": 1e-3}, 2) == {"lr": 1e-3}


def test_pair_stats_do_not_depend_on_the_order_pairs_were_written() -> None:
    """Concurrent searches write pairs in the order they finish; the iteration table's means
    must be the same in any order (a plain running sum was not, in the last digits)."""
    import random

    from selfreward_vlm.core.schemas import PreferencePair, ResponseScore, SentenceScore
    from selfreward_vlm.trainer.report import pair_stats

    def pair(k: int, reward: float) -> PreferencePair:
        score = ResponseScore(reward=reward, sentences=[SentenceScore(text="x", r_i=reward / 3)])
        low = ResponseScore(reward=-reward, sentences=[])
        return PreferencePair(id=f"p{k}", prompt_id=f"q{k}", prompt="p", chosen="a b",
                              rejected="c", method="csr", chosen_score=score,
                              rejected_score=low)  # fmt: skip

    rewards = [0.1, 0.2, 0.3, 1e16, 1.0, -1e16, 7.7, 1 / 3, 2 / 3]
    pairs = [pair(k, r) for k, r in enumerate(rewards)]
    assert sum(rewards) != sum(reversed(rewards))  # the plain sum depends on the order
    expected = pair_stats(pairs)
    for seed in range(5):
        shuffled = pairs[:]
        random.Random(seed).shuffle(shuffled)
        assert pair_stats(shuffled) == expected
    # and it is the exact mean: the 1e16 terms cancel, the small ones are kept
    assert expected["mean_chosen_reward"] == pytest.approx((0.1 + 0.2 + 0.3 + 1.0 + 7.7 + 1) / 9)
