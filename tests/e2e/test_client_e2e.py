"""End to end: every method's `pairs` run against the real service on the tiny models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from selfreward_vlm.client import ScoringClient
from selfreward_vlm.client.methods import build_config
from selfreward_vlm.client.pairs import run_pairs
from selfreward_vlm.core.rewards import calibrated_reward
from selfreward_vlm.core.schemas import PreferencePair

pytestmark = pytest.mark.slow

FAST: dict[str, dict[str, Any]] = {  # small searches: the tiny model rarely says "." or EOS
    "csr": {"max_steps": 3, "max_new_tokens": 8, "language_score": "mean_logprob"},
    "csr-official": {"max_steps": 3, "max_new_tokens": 8},
    "sbspo": {"num_samples": 6, "max_new_tokens": 10},
    "self-judge": {"max_new_tokens": 10},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from PIL import Image, ImageDraw

    root = tmp_path_factory.mktemp("e2e-world")
    images = root / "images"
    images.mkdir()
    lines = []
    for i, colour in enumerate(["red", "blue", "green"]):
        img = Image.new("RGB", (32, 32), "white")
        ImageDraw.Draw(img).rectangle((4 + i, 4, 24, 20 + i), fill=colour)
        img.save(images / f"{i}.png")
        lines.append({"id": f"e{i}", "image": f"{i}.png", "prompt": "Describe the image."})
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return prompts, images


def load(out: Path) -> list[PreferencePair]:
    return [PreferencePair.model_validate_json(x) for x in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def sbspo_policy(live_server: str, tiny_models: dict[str, Path], tmp_path_factory: Any) -> str:
    """A policy that differs from the base (a LoRA with random B), uploaded as `e2e-pol`:
    SBSPO's implicit reward is 0 for policy = reference, so it needs one."""
    from tests.trainer.test_trainer import random_adapter

    folder = random_adapter(tiny_models, tmp_path_factory.mktemp("e2e-pol") / "adapter")
    with ScoringClient(live_server) as client:
        client.upload_adapter("e2e-pol", folder)
    return "e2e-pol"


@pytest.mark.parametrize("method", ["csr", "csr-official", "sbspo", "self-judge"])
def test_pairs_with_each_method(
    method: str, live_server: str, world: tuple[Path, Path], tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    prompts, images = world
    out = tmp_path / f"{method}.jsonl"
    dataset = f"e2e-{method}"
    policy = request.getfixturevalue("sbspo_policy") if method == "sbspo" else "base"
    summary = run_pairs(
        live_server, method, prompts, images, out, config=build_config(method, **FAST[method]),
        publish=f"{live_server}/v1/datasets/{dataset}", progress=False, concurrency=2,
        model=policy,
    )  # fmt: skip
    assert summary.prompts_failed == 0 and summary.prompts_done == 3
    pairs = load(out)
    assert pairs, summary
    for p in pairs:
        assert p.chosen != p.rejected and p.chosen.strip() and p.rejected.strip()
        assert p.method == method and p.prompt == "Describe the image."
        image = images / f"{p.prompt_id[1:]}.png"
        assert p.images == [hashlib.sha256(image.read_bytes()).hexdigest()]
        c, r = p.chosen_score, p.rejected_score
        if method == "sbspo":
            check_sbspo_pair(live_server, p)
        else:
            assert c.reward >= r.reward
    with ScoringClient(live_server) as client:
        stored = {p.id for p in client.iter_pairs(dataset, page_size=2)}
    assert stored == {p.id for p in pairs}


def check_sbspo_pair(url: str, p: PreferencePair) -> None:
    """A real SBSPO pair: non-zero implicit rewards equal to what /v1/implicit-reward says for
    policy vs base, chosen in the top k and rejected in the bottom k of one ranking each, and
    strictly better than the rejected under at least one of the two rewards."""
    c, r = p.chosen_score.extra, p.rejected_score.extra
    m, k = p.params["m"], p.params["k"]
    assert p.model == "e2e-pol" and p.reference == "base" and 1 <= k <= m // 2
    assert c["reward_sum"] != 0.0 and r["reward_sum"] != 0.0
    assert c["rank_sum"] <= k or c["rank_avg"] <= k
    assert r["rank_sum"] > m - k or r["rank_avg"] > m - k
    assert c["reward_sum"] > r["reward_sum"] or c["reward_avg"] > r["reward_avg"]
    with ScoringClient(url) as client:
        got = client.implicit_reward(p.prompt, [p.chosen, p.rejected], policy="e2e-pol",
                                     reference="base", beta=0.1, image=p.images[0])  # fmt: skip
    for res, want in zip(got.results, (c, r), strict=True):
        assert res.reward_sum == pytest.approx(want["reward_sum"], abs=1e-5)
        assert res.reward_avg == pytest.approx(want["reward_avg"], abs=1e-6)


def test_sbspo_refuses_policy_equal_to_reference(
    live_server: str, world: tuple[Path, Path], tmp_path: Path
) -> None:
    prompts, images = world
    with pytest.raises(ValueError, match="differs from its reference"):
        run_pairs(live_server, "sbspo", prompts, images, tmp_path / "o.jsonl",
                  config=build_config("sbspo", **FAST["sbspo"]), progress=False)  # fmt: skip


def test_csr_scores_match_the_service(
    live_server: str, world: tuple[Path, Path], tmp_path: Path
) -> None:
    """Each kept sentence's R_I is what /v1/clip says for it, and R = λ·R_I + (1−λ)·R_T."""
    prompts, images = world
    out = tmp_path / "csr.jsonl"
    config = build_config("csr", lam=0.7, **FAST["csr"])
    run_pairs(live_server, "csr", prompts, images, out, config=config, progress=False)
    pairs = load(out)
    assert pairs
    with ScoringClient(live_server) as client:
        for p in pairs:
            sentences = [s for s in p.chosen_score.sentences if s.text]
            clip = client.clip(p.images[0], [s.text for s in sentences])
            for s, res in zip(sentences, clip.results, strict=True):
                assert s.r_i == pytest.approx(res.relevance, abs=1e-4)
                assert s.reward == pytest.approx(calibrated_reward(s.r_i, s.r_t, 0.7), abs=1e-6)
            assert p.chosen_score.reward == pytest.approx(
                sum(s.reward or 0.0 for s in p.chosen_score.sentences)
            )
            assert p.params["lam"] == 0.7 and p.params["path_score"] == "sum"
