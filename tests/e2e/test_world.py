"""Tests of the miniature world: generator determinism, CHAIR by hand, tokenizer and processor,
CLIP→HF vision-tower conversion. No model is trained here."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from selfreward_vlm.world.chair import chair, is_malformed, mentioned_objects, score_caption
from selfreward_vlm.world.scenes import biased_caption, generate_scenes, write_images
from selfreward_vlm.world.spec import ALL_OBJECTS, COMPANIONS, WorldObject, world_words

CAPTION = "There is a red circle. There is a blue square."


# --- generator -----------------------------------------------------------------------------


def _image_bytes(seed: int, tmp: Path) -> tuple[list[list[str]], list[bytes]]:
    scenes = generate_scenes(seed, "eval", 12)
    write_images(scenes, tmp)
    return [s.object_names for s in scenes], [(tmp / s.name).read_bytes() for s in scenes]


def test_generator_is_deterministic_by_seed(tmp_path: Path) -> None:
    objs_a, bytes_a = _image_bytes(0, tmp_path / "a")
    objs_b, bytes_b = _image_bytes(0, tmp_path / "b")
    objs_c, bytes_c = _image_bytes(1, tmp_path / "c")
    assert objs_a == objs_b and bytes_a == bytes_b
    assert objs_a != objs_c and bytes_a != bytes_c


def test_scenes_are_valid_and_splits_independent() -> None:
    scenes = generate_scenes(3, "train", 200)
    for scene in scenes:
        assert 1 <= len(scene.objects) <= 3
        assert len(set(scene.object_names)) == len(scene.objects)  # distinct objects
        boxes = [(p.x, p.y, p.x + p.size, p.y + p.size) for p in scene.objects]
        for i, a in enumerate(boxes):
            assert a[0] >= 0 and a[2] <= 64 and a[1] >= 0 and a[3] <= 64
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    # A smaller world's split is a prefix of a bigger one's; splits do not share images.
    assert generate_scenes(3, "train", 50) == scenes[:50]
    assert generate_scenes(3, "eval", 5)[0].objects != scenes[0].objects


def test_biased_caption_adds_companions_with_probability_p() -> None:
    trigger, companion = next(iter(COMPANIONS.items()))
    assert companion.colour != trigger.colour
    rng = np.random.default_rng(0)
    always = biased_caption([trigger], rng, 1.0)
    assert always == f"{trigger.sentence} {companion.sentence}"
    assert biased_caption([trigger], rng, 0.0) == trigger.sentence
    draws = [biased_caption([trigger], rng, 0.6) for _ in range(2000)]
    share = sum(companion.sentence in d for d in draws) / len(draws)
    assert 0.55 < share < 0.65
    # A present companion is said once: right after its trigger unless it came first.
    pair = f"{trigger.sentence} {companion.sentence}"
    for _ in range(20):
        both = biased_caption([companion, trigger], rng, 0.0)
        assert both in (pair, f"{companion.sentence} {trigger.sentence}")


# --- CHAIR ---------------------------------------------------------------------------------


def test_chair_on_hand_made_captions() -> None:
    captions = [
        CAPTION,  # blue square hallucinated (companion of the red circle)
        "There is a green cross.",  # correct, misses the yellow circle
        "There is a red cross. There is a red cross. There is a green circle.",  # repeat + halluc.
        "There is a blue",  # fragment: malformed, mentions nothing
        "<image> There is a yellow square.",  # special token: malformed but correct
    ]
    truths = [
        ["red circle"],
        ["green cross", "yellow circle"],
        ["red cross"],
        ["blue triangle"],
        ["yellow square"],
    ]
    m = chair(captions, truths)
    assert m.n_captions == 5
    assert m.n_mentioned == 6  # 2 + 1 + 2 (red cross once) + 0 + 1
    assert m.n_hallucinated == 2
    assert m.chair_i == pytest.approx(2 / 6)
    assert m.chair_s == pytest.approx(2 / 5)
    assert m.recall == pytest.approx(4 / 6)  # 1/1 + 1/2 + 1/1 + 0/1 + 1/1
    assert m.mean_length == pytest.approx((10 + 5 + 15 + 4 + 6) / 5)
    assert m.malformed_rate == pytest.approx(2 / 5)
    assert m.companion_share == pytest.approx(1.0)
    assert m.repeat_rate == pytest.approx(1 / 5)


def test_chair_edge_cases() -> None:
    assert chair([], []).chair_s == 0.0
    perfect = chair([CAPTION], [["blue square", "red circle"]])
    assert (perfect.chair_s, perfect.chair_i, perfect.recall) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        chair([CAPTION], [])
    assert mentioned_objects("Two red circles and a Blue Cross.") == [
        WorldObject("red", "circle"),
        WorldObject("blue", "cross"),
    ]
    score = score_caption(
        "There is a red circle. There is a red circle.", [WorldObject("red", "circle")]
    )
    assert score.mentioned == {WorldObject("red", "circle")} and score.repeats
    for bad in ("", "There is a red circle..", "There is a red circle", "There is a pink circle.",
                "There is a red circle.</s>", "there is a red circle."):  # fmt: skip
        assert is_malformed(bad), bad
    assert not is_malformed(CAPTION)


# --- tokenizer, processor, conversion ------------------------------------------------------


def test_tokenizer_round_trip() -> None:
    from selfreward_vlm.world.vlm_text import build_tokenizer

    tok = build_tokenizer()
    ids = tok(CAPTION).input_ids
    assert tok.decode(ids) == CAPTION
    assert tok(CAPTION, add_special_tokens=False).input_ids == ids  # nothing added implicitly
    assert tok.convert_ids_to_tokens(ids)[:6] == ["There", "is", "a", "red", "circle", "."]
    dot = tok.convert_tokens_to_ids(".")
    assert [i for i, t in enumerate(ids) if t == dot] == [5, 11]  # each sentence ends at "."
    assert tok.decode(ids[:6]) == "There is a red circle."
    assert tok.unk_token_id not in tok(" ".join(world_words())).input_ids
    every = " ".join(o.sentence for o in ALL_OBJECTS)
    assert tok.decode(tok(every).input_ids) == every
    with_eos = tok(CAPTION + "</s>").input_ids
    assert with_eos[-1] == tok.eos_token_id
    assert tok.decode(with_eos, skip_special_tokens=True) == CAPTION


def test_processor_chat_template_and_image_tokens() -> None:
    from PIL import Image

    from selfreward_vlm.world.vlm_text import NUM_IMAGE_TOKENS, build_processor, user_messages

    proc = build_processor()
    text = proc.apply_chat_template(
        user_messages("Describe the image."), add_generation_prompt=True
    )
    assert text == "USER: <image>\nDescribe the image. ASSISTANT:"
    answer = {"role": "assistant", "content": [{"type": "text", "text": CAPTION}]}
    convo: list[dict[str, Any]] = [*user_messages("Describe the image."), answer]
    assert proc.apply_chat_template(convo).startswith(text + " " + CAPTION + "</s>")
    out = proc(
        text=[text], images=[Image.new("RGB", (64, 64), (240, 240, 240))], return_tensors="pt"
    )
    assert out["pixel_values"].shape == (1, 3, 64, 64)
    assert int((out["input_ids"] == proc.image_token_id).sum()) == NUM_IMAGE_TOKENS == 64


def test_clip_visual_converts_to_hf_vision_tower() -> None:
    import open_clip
    import torch

    from selfreward_vlm.world.clip_model import CLIP_MODEL_CFG
    from selfreward_vlm.world.vlm_model import build_vlm
    from selfreward_vlm.world.vlm_text import build_processor

    torch.manual_seed(0)
    clip = open_clip.CLIP(**CLIP_MODEL_CFG).eval()  # type: ignore[arg-type]
    vlm = build_vlm(clip, build_processor(), seed=0)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = clip.encode_image(pixels)
        hf = vlm.model.vision_tower(pixels).pooler_output @ clip.visual.proj
    torch.testing.assert_close(hf, ref, atol=1e-5, rtol=1e-4)
    assert not any(p.requires_grad for p in vlm.model.vision_tower.parameters())
    assert vlm.config.vision_feature_layer == -2


def test_stage_hashes_chain() -> None:
    from dataclasses import replace

    from selfreward_vlm.world.build import WorldConfig, stage_hashes

    base = stage_hashes(WorldConfig.full(0))
    vlm_only = stage_hashes(replace(WorldConfig.full(0), vlm_steps=10))
    clip_change = stage_hashes(replace(WorldConfig.full(0), clip_lr=5e-4))
    assert vlm_only["images"] == base["images"] and vlm_only["clip"] == base["clip"]
    assert vlm_only["vlm"] != base["vlm"]
    assert clip_change["clip"] != base["clip"] and clip_change["vlm"] != base["vlm"]
    assert stage_hashes(WorldConfig.full(1))["images"] != base["images"]


def test_demo_report_mean_and_sd_over_seeds() -> None:
    """`selfreward demo --seeds` rows: the mean and the sample sd of each metric per label;
    a label missing in one seed averages the seeds that have it."""
    from selfreward_vlm.demo_report import aggregate, fmt

    seeds = [{"a": {"chair_s": 0.2, "recall": 0.9}, "b": {"chair_s": 0.5}},
             {"a": {"chair_s": 0.4, "recall": 0.8}}]  # fmt: skip
    rows = aggregate(seeds, ["chair_s", "recall"])
    assert rows["a"]["chair_s"][0] == pytest.approx(0.3)
    assert rows["a"]["chair_s"][1] == pytest.approx(0.1414213, abs=1e-6)  # stdev(0.2, 0.4)
    assert rows["b"]["chair_s"] == [0.5, None] and rows["b"]["seeds"][0] == 1.0
    assert "recall" not in rows["b"]
    assert fmt(rows["a"]["chair_s"]) == "0.300 ± 0.141" and fmt([0.5, None]) == "0.500"


def test_demo_direction_check() -> None:
    """CI's assertion: CSR iteration 1 below the base and below λ = 0 on CHAIR_S."""
    from selfreward_vlm.demo import check_direction

    good = {"base (SFT)": {"chair_s": [0.45, None]}, "csr iter1": {"chair_s": [0.2, None]},
            "csr λ=0": {"chair_s": [0.44, None]}}  # fmt: skip
    assert check_direction(good) == []
    bad = {**good, "csr λ=0": {"chair_s": [0.2, None]}}
    assert check_direction(bad) == ["csr iter1 CHAIR_S 0.200 is not below csr λ=0's 0.200"]


def test_demo_runs_one_thread_with_deterministic_algorithms(monkeypatch: Any) -> None:
    """The demo's processes (and the service it starts, through the environment) run one
    torch thread with deterministic algorithms: a rerun repeats its numbers."""
    import torch

    from selfreward_vlm.demo import PINNED_KERNELS, _reproducible

    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "2")
    for var in PINNED_KERNELS:  # restored (unset) after the test: later servers run native
        monkeypatch.setenv(var, "default" if var == "ATEN_CPU_CAPABILITY" else "")
    try:
        _reproducible()
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(strict)


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="the pin is x86-64 only"
)
def test_demo_pins_avx2_kernels_in_a_fresh_process() -> None:
    """In a fresh process (as `selfreward demo` starts) the pin takes effect before torch
    computes anything: ATen dispatches AVX2 kernels on this machine too, whatever it has."""
    import json
    import subprocess
    import sys

    code = (
        "import json; from selfreward_vlm.demo import _reproducible; "
        "print(json.dumps(_reproducible()))"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "DNNL_MAX_CPU_ISA")
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    numerics = json.loads(out.stdout.strip().splitlines()[-1])
    assert numerics["kernels"] == "AVX2" and numerics["MKL_CBWR"] == "AVX2"
    assert numerics["OMP_NUM_THREADS"] == "1" and "warning" not in out.stdout


def test_demo_fingerprint_ignores_timings_and_sees_every_number() -> None:
    from selfreward_vlm.demo import fingerprint

    seed = {"seed": 0, "eval": {"base (SFT)": {"chair_s": 0.41, "example": "x", "seconds": 3.0}}}
    slower = {"seed": 0, "eval": {"base (SFT)": {"chair_s": 0.41, "example": "x", "seconds": 9.0}}}
    other = {"seed": 0, "eval": {"base (SFT)": {"chair_s": 0.4100001, "example": "x"}}}
    assert fingerprint([seed]) == fingerprint([slower]) != fingerprint([other])
    assert len(fingerprint([seed])) == 16 and fingerprint([seed, seed]) != fingerprint([seed])


def test_disfluent_sentences_keep_the_object_and_are_malformed() -> None:
    """Both disfluencies keep the colour and shape words (what CLIP and CHAIR see) and break
    the sentence's form (what the evaluator's malformed rate sees)."""
    from selfreward_vlm.world.chair import VOCABULARY, is_malformed
    from selfreward_vlm.world.scenes import DISFLUENCIES, disfluent_sentence
    from selfreward_vlm.world.spec import WorldObject

    obj = WorldObject("red", "circle")
    assert not is_malformed(obj.sentence)
    for kind in DISFLUENCIES:
        text = disfluent_sentence(obj, kind)
        assert is_malformed(text), kind
        assert [m.category for m in VOCABULARY.mentions(text)] == ["red circle"], kind
    with pytest.raises(ValueError, match="unknown disfluency"):
        disfluent_sentence(obj, "dropped_noun")


def test_disfluency_rate_and_a_fluent_world_unchanged() -> None:
    """Rate 0 never draws from its stream (a world without disfluency trains as before);
    rate 0.25 makes about a quarter of the sentences disfluent."""
    from selfreward_vlm.world.chair import is_malformed, split_sentences
    from selfreward_vlm.world.scenes import caption_objects, disfluent_caption
    from selfreward_vlm.world.spec import ALL_OBJECTS

    objs = list(ALL_OBJECTS[:3])
    rng = np.random.default_rng(0)
    assert disfluent_caption(objs, rng, 0.0) == " ".join(o.sentence for o in objs)
    assert rng.random() == np.random.default_rng(0).random()  # untouched
    a, b = np.random.default_rng([3, 7]), np.random.default_rng([3, 7])
    fluent = " ".join(o.sentence for o in caption_objects(objs, b, 0.6))
    assert biased_caption(objs, a, 0.6) == fluent
    sentences = [s for _ in range(800)
                 for s in split_sentences(disfluent_caption(objs, rng, 0.25))]  # fmt: skip
    share = sum(map(is_malformed, sentences)) / len(sentences)
    assert 0.22 < share < 0.28


def test_demo_lanes_and_their_runs(tmp_path: Path) -> None:
    """`--quick` keeps its rows and settings (its fingerprint is CI's check); `--full` adds CSR
    under the paper and official presets (their own search and training settings, 3
    iterations) and SBSPO's Table 2 selections, on disfluent worlds."""
    from selfreward_vlm.core.presets import train_options
    from selfreward_vlm.demo import QUICK_ROWS, DemoConfig, _runs

    p, a = tmp_path / "p.jsonl", tmp_path / "a.jsonl"
    quick = DemoConfig.make(True, [0], tmp_path)
    assert (quick.rows, quick.disfluency, quick.full) == (QUICK_ROWS, 0.0, False)
    assert quick.eval_samples == 0  # greedy captions only: the fingerprint keeps its numbers
    runs = _runs(quick, p, a)
    assert list(runs) == ["csr", "csr-lambda0", "csr-lambda1"]
    assert all(r[4] == train_options("tuned") for r in runs.values())
    assert runs["csr-lambda0"][3]["lam"] == 0.0 and runs["csr-lambda0"][0] == "csr"

    full = DemoConfig.make(False, [0, 1, 2], tmp_path, full=True)
    assert full.disfluency == 0.15 and {"sbspo-sum", "sbspo-avg", "sbspo-eq5"} <= set(full.rows)
    assert full.eval_samples == 4  # the malformed rate greedy decoding hides
    assert DemoConfig.make(False, [0], tmp_path, full=True, eval_samples=0).eval_samples == 0
    runs = _runs(full, p, a)
    method, _, iterations, options, train = runs["csr-paper"]
    assert (method, iterations, options["preset"], options["language_score"]) == (
        "csr", 3, "paper", "prob")  # fmt: skip
    assert train == train_options("paper") and train["lr"] == 1e-7
    method, _, iterations, options, train = runs["csr-official-preset"]
    assert (method, iterations, options["max_new_tokens"]) == ("csr-official", 3, 70)
    assert train["merge_adapter"] is True
    with pytest.raises(ValueError, match="two different lanes"):
        DemoConfig.make(True, [0], tmp_path, full=True)

    official = DemoConfig.make(False, [0], tmp_path, preset="official", full=True)
    runs = _runs(official, p, a)
    assert runs["csr"][0] == "csr-official" and "csr-official-preset" not in runs
    assert runs["csr-lambda0"][0] == "csr-official" and runs["csr-lambda0"][3]["alpha"] == 0.0


def test_demo_calibration_checks_table_2_ordering() -> None:
    from selfreward_vlm.demo_report import calibration

    rows = {
        "csr λ=0": {"chair_s": [0.48, 0.01], "malformed_rate": [0.02, 0.01]},
        "csr λ=0.9": {"chair_s": [0.33, 0.03], "malformed_rate": [0.02, 0.005]},
        "csr λ=1": {"chair_s": [0.32, 0.04], "malformed_rate": [0.05, 0.01]},
    }
    cal = calibration(rows)
    assert cal["lambda0.9_below_lambda0_on_chair_s"] is True  # 0.15 > 0.03
    assert cal["lambda0.9_below_lambda1_on_malformed"] is True  # 0.03 > 0.01
    rows["csr λ=1"]["malformed_rate"] = [0.025, 0.01]
    assert calibration(rows)["lambda0.9_below_lambda1_on_malformed"] is False
    rows["csr λ=1"]["malformed_rate"] = [0.05, None]  # one seed: no sd, no verdict
    assert calibration(rows)["lambda0.9_below_lambda1_on_malformed"] is None
    assert list(cal["rows"]) == ["csr λ=0", "csr λ=0.9", "csr λ=1"]


def test_demo_report_tables_in_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m selfreward_vlm.demo_report REPORT.json` prints the README's tables."""
    import json

    from selfreward_vlm.demo_report import aggregate, calibration, main

    seeds = [
        {"base (SFT)": {"chair_s": 0.48, "chair_i": 0.23, "recall": 0.9, "mean_length": 12.2,
                        "malformed_rate": 0.0, "repeat_rate": 0.08},
         "csr λ=0": {"chair_s": 0.47, "malformed_rate": 0.02},
         "csr λ=0.9": {"chair_s": 0.33 + s / 100, "malformed_rate": 0.01},
         "csr λ=1": {"chair_s": 0.32, "malformed_rate": 0.05 + s / 100}}
        for s in range(3)
    ]  # fmt: skip
    rows = aggregate(seeds, ("chair_s", "chair_i", "recall", "mean_length", "malformed_rate",
                             "repeat_rate"))  # fmt: skip
    report = {"rows": rows, "calibration": calibration(rows), "seeds": [0, 1, 2],
              "preset": "tuned", "fingerprint": "abc"}  # fmt: skip
    (tmp_path / "report.json").write_text(json.dumps(report))
    main([str(tmp_path / "report.json")])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| model | CHAIR_S | CHAIR_I | recall | words | malformed | repeats |"
    base = "| base (SFT) | 0.480 ± 0.000 | 0.230 ± 0.000 | 0.900 ± 0.000 | 12.2 ± 0.0 | "
    assert out[2] == base + "0.000 ± 0.000 | 0.080 ± 0.000 |"
    assert "| csr λ=0.9 | 0.340 ± 0.010 | - | - | - | 0.010 ± 0.000 | - |" in out
    assert "| csr λ=1 | 0.320 ± 0.000 | 0.060 ± 0.010 |" in out  # the calibration table
    assert out[-3].endswith("on malformed yes; λ = 0.9 below λ = 0 on CHAIR_S yes")
    assert out[-1] == "seeds [0, 1, 2], preset tuned, fingerprint `abc`"


def test_sampled_captions_seeded_and_grouped_by_image(tiny_models: dict[str, Path]) -> None:
    """`Sampling(n)` gives n captions per image, image by image, the same for the same seed;
    near temperature 0 every sample is the model's own greedy caption of its image."""
    from PIL import Image

    from selfreward_vlm.world.evaluate import Sampling, caption_images, load_vlm

    model, processor = load_vlm(tiny_models["vlm"])
    images = [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue", "green")]
    greedy = caption_images(model, processor, images, max_new_tokens=8)
    cold = caption_images(model, processor, images, max_new_tokens=8,
                          sample=Sampling(n=2, temperature=1e-4))  # fmt: skip
    assert cold == [c for c in greedy for _ in range(2)]
    first, again, other = (caption_images(model, processor, images, max_new_tokens=8,
                                          sample=Sampling(n=2, seed=seed))
                           for seed in (3, 3, 4))  # fmt: skip
    assert len(first) == 6 and first == again and first != other


def test_demo_report_with_sampled_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With `--eval-samples`, the tables get the sampled malformed rate (and CHAIR_S), and the
    calibration checks λ = 0.9 against λ = 1 on it too."""
    import json

    from selfreward_vlm.demo_report import (
        LENGTH_KEYS,
        METRICS,
        SAMPLED_METRICS,
        aggregate,
        calibration,
        main,
    )

    seeds = [
        {"csr λ=0": {"chair_s": 0.47, "malformed_rate": 0.0, "sampled_malformed_rate": 0.24},
         "csr λ=0.9": {"chair_s": 0.30, "malformed_rate": 0.0,
                       "sampled_malformed_rate": 0.31 + s / 100, "sampled_chair_s": 0.38},
         "csr λ=1": {"chair_s": 0.29, "malformed_rate": 0.0, "sampled_malformed_rate": 0.31}}
        for s in range(3)
    ]  # fmt: skip
    rows = aggregate(seeds, (*METRICS, *SAMPLED_METRICS))
    cal = calibration(rows)
    assert cal["lambda0.9_below_lambda1_on_sampled_malformed"] is False
    assert cal["rows"]["csr λ=0.9"]["sampled_malformed_rate"] == pytest.approx([0.32, 0.01])
    lengths = {"csr λ=0.9": {"chosen_words": 9.1, "chosen_malformed": 0.6,
                             "rejected_malformed": 0.98}}  # fmt: skip
    report = {"rows": rows, "calibration": cal, "seeds": [0, 1, 2], "preset": "tuned",
              "fingerprint": "abc", "lengths": aggregate([lengths], LENGTH_KEYS)}  # fmt: skip
    (tmp_path / "report.json").write_text(json.dumps(report))
    main([str(tmp_path / "report.json")])
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("| repeats | malformed (sampled) | CHAIR_S (sampled) |")
    assert out[1] == "|---" * 9 + "|"
    assert "| csr λ=0.9 | 0.300 ± 0.000 | - | - | - | 0.000 ± 0.000 | - | 0.320 ± 0.010 | " \
           "0.380 ± 0.000 |" in out  # fmt: skip
    assert "| λ row | CHAIR_S | malformed | malformed (sampled) |" in out
    assert "| csr λ=0.9 | 9.1 | - | - | - | - | - | 0.60 | 0.98 |" in out  # the pairs' table
    assert out[-3].endswith("λ = 0.9 below λ = 1 on malformed (sampled) no; "
                            "λ = 0.9 below λ = 0 on CHAIR_S yes")  # fmt: skip


def test_malformed_shares_of_a_runs_pairs() -> None:
    """The lengths table's `chosen_malformed` / `rejected_malformed`: the shares of chosen and
    of rejected responses the evaluator counts as malformed."""
    from types import SimpleNamespace

    from selfreward_vlm.world.chair import malformed_shares

    texts = [("There is a red circle.", "There a is red circle."),
             ("There is a a red circle.", "There is a a red circle."),
             ("There is a blue square.", "")]  # fmt: skip
    pairs = [SimpleNamespace(chosen=c, rejected=r) for c, r in texts]
    shares = malformed_shares(pairs)
    assert shares["chosen_malformed"] == pytest.approx(1 / 3)
    assert shares["rejected_malformed"] == 1.0  # an empty response is malformed too
    assert malformed_shares([]) == {"chosen_malformed": None, "rejected_malformed": None}
