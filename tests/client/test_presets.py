"""Presets (`paper | official | tuned`): what each sets, that flags win, that pairs record it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from selfreward_vlm.client.methods import PRESETS, RunContext, build_config, csr
from selfreward_vlm.client.testing import FakeScorer
from selfreward_vlm.core.presets import method_options, train_options
from tests.client.test_methods import CSR_COS, CSR_TREE, ITEM


def test_paper_preset_is_the_papers_text() -> None:
    """CSR appendix A.1 + eq. 2-4 + Algorithm 1 (no step cap), SBSPO §2.4."""
    cfg = build_config("csr", "paper")
    assert (cfg.lam, cfg.language_score, cfg.path_score) == (0.9, "prob", "sum")
    assert (cfg.num_candidates, cfg.num_beam_groups, cfg.diversity_penalty) == (5, 5, 3.0)
    assert (cfg.max_new_tokens, cfg.max_total_tokens, cfg.max_steps) == (74, 1024, None)
    assert (cfg.keep_top, cfg.keep_bottom, cfg.preset) == (1, 2, "paper")
    sb = build_config("sbspo", "paper")
    assert (sb.num_samples, sb.union_fraction, sb.beta, sb.preset) == (10, 0.3, 0.1, "paper")
    assert (sb.selection, sb.overlap) == ("union", "keep")  # eq. 5 as written


def test_official_preset_is_the_released_code() -> None:
    """sample.py/step1.sh: 70 new tokens, no depth cap; utils.py clean_tree's filter;
    run_train.sh's training; README "Iterative Learning": merge, then a fresh LoRA."""
    assert PRESETS["official"].csr_method == "csr-official"
    cfg = build_config("csr-official", "official")
    assert (cfg.alpha, cfg.keep_top, cfg.keep_bottom, cfg.min_pool) == (0.9, 1, 2, 5)
    assert (cfg.max_new_tokens, cfg.max_steps, cfg.degenerate_rule) == (70, None, "official")
    assert (cfg.stop_mode, cfg.stop_text) == ("token", ".")  # eos_token_id=period_id
    assert build_config("csr", "paper").stop_mode == "sentence"
    train = train_options("official")
    assert (train["lora_r"], train["lora_alpha"], train["lr"]) == (128, 256, 1e-7)
    assert (train["lr_scheduler_type"], train["warmup_steps"]) == ("cosine", 0.03)
    assert train["beta"] == 0.1 and train["merge_adapter"] is True


def test_csr_under_the_official_preset_is_csr_official() -> None:
    """The paper search has no official form: the library refuses `csr` + `official` with a
    message, and the CLIs map `--method csr` to `csr-official`."""
    from selfreward_vlm.core.presets import method_for_preset

    with pytest.raises(ValueError, match="csr-official"):
        build_config("csr", "official")
    assert method_for_preset("csr", "official") == "csr-official"
    assert method_for_preset("csr", "paper") == "csr" == method_for_preset("csr", None)
    assert method_for_preset("sbspo", "official") == "sbspo"


def test_tuned_preset_pins_the_rules_its_numbers_were_measured_with() -> None:
    assert build_config("sbspo", "tuned").overlap == "drop"
    assert build_config("csr-official", "tuned").degenerate_rule == "strict"


def test_explicit_options_win_and_unknown_names_fail() -> None:
    cfg = build_config("csr", "tuned", lam=0.5, max_steps=None)  # None: keep the preset's
    assert cfg.lam == 0.5 and cfg.max_steps == PRESETS["tuned"].methods["csr"]["max_steps"]
    assert cfg.drop_duplicate_sentences is True and cfg.preset == "tuned"
    with pytest.raises(ValueError, match="unknown preset"):
        build_config("csr", "best")
    with pytest.raises(ValueError, match="unknown preset"):
        train_options("best")
    assert method_options(None, "csr") == {} and train_options(None) == {}


def test_presets_old_path_reexports_core() -> None:
    """`client.methods.presets` (the old path) names the same objects as `core.presets`."""
    from selfreward_vlm.client.methods import presets as old
    from selfreward_vlm.core import presets

    assert old.PRESETS is presets.PRESETS and old.train_options is presets.train_options
    assert old.method_options is presets.method_options


@pytest.mark.parametrize("name", ["paper", "official", "tuned"])
def test_every_preset_builds_every_config(name: str, tmp_path: Path) -> None:
    """Each preset's options are valid fields of each method's config and of DPOTrainConfig."""
    from selfreward_vlm.trainer.config import build_config as train_config

    for method in ("csr", "csr-official", "sbspo", "self-judge"):
        if method in PRESETS[name].methods:
            assert build_config(method, name).preset == name
    from selfreward_vlm.trainer.iterate import LOOP_LEVERS

    fields = {k: v for k, v in train_options(name).items() if k not in LOOP_LEVERS}
    cfg = train_config(model="m", pairs=str(tmp_path / "p.jsonl"), out=str(tmp_path), **fields)
    for key, value in fields.items():
        assert getattr(cfg, key) == value


def test_pairs_record_every_parameter_of_the_preset() -> None:
    cfg = build_config("csr", "tuned", language_score="sum_logprob", num_candidates=3,
                       keep_bottom=1, max_steps=3)  # fmt: skip
    fake = FakeScorer(tree=CSR_TREE, cosine=CSR_COS)
    (pair,) = asyncio.run(csr(fake, ITEM, RunContext(), cfg)).pairs
    assert pair.params["preset"] == "tuned" and pair.params["mode"] == "paper"
    for key, value in PRESETS["tuned"].methods["csr"].items():
        if key not in ("language_score", "num_candidates", "keep_bottom", "max_steps"):
            assert pair.params[key] == value, key
    assert pair.params["language_score"] == "sum_logprob"


def test_cli_preset_flags(tmp_path: Path) -> None:
    """`pairs --preset` and `iterate --preset` exist and reject an unknown name."""
    from typer.testing import CliRunner

    from selfreward_vlm.client.cli import app as pairs_app
    from selfreward_vlm.trainer.cli import build_app

    common = ["--service", "http://127.0.0.1:9", "--prompts", "p.jsonl", "--images",
              str(tmp_path)]  # fmt: skip
    res = CliRunner().invoke(pairs_app, ["pairs", *common, "--method", "csr", "--out",
                                         "o.jsonl", "--preset", "best"])  # fmt: skip
    assert res.exit_code == 2 and "unknown preset" in " ".join(res.output.split())
    res = CliRunner().invoke(build_app(), ["iterate", *common, "--work", str(tmp_path / "w"),
                                           "--preset", "best"], env={"COLUMNS": "400"})  # fmt: skip
    assert res.exit_code == 2 and "unknown preset" in " ".join(res.output.split())


def _pairs_cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from selfreward_vlm.client.cli import app as pairs_app

    common = ["pairs", "--service", "http://127.0.0.1:9", "--prompts",
              str(tmp_path / "missing.jsonl"), "--images", str(tmp_path), "--out",
              str(tmp_path / "o.jsonl")]  # fmt: skip
    res = CliRunner().invoke(pairs_app, [*common, *args], env={"COLUMNS": "400"})
    return res.exit_code, " ".join(res.output.replace("│", " ").split())


def test_cli_csr_official_preset_runs_csr_official(tmp_path: Path) -> None:
    """`--method csr --preset official` says it runs csr-official, and builds csr-official's
    config (which has no λ: refused by name)."""
    code, text = _pairs_cli(tmp_path, "--method", "csr", "--preset", "official", "--lambda", "0.5")
    assert code == 2 and "runs csr-official" in text and "csr-official has no option" in text


def test_cli_sbspo_union_fraction_and_deprecated_lambda(tmp_path: Path) -> None:
    sbspo = ["--method", "sbspo", "--model", "pol"]
    code, text = _pairs_cli(tmp_path, *sbspo, "--lambda", "0.2")
    assert code == 2 and "--lambda for sbspo is deprecated" in text and "--prompts" in text
    code, text = _pairs_cli(tmp_path, *sbspo, "--lambda", "0.2", "--union-fraction", "0.3")
    assert code == 2 and "give --union-fraction only" in text
    code, text = _pairs_cli(tmp_path, *sbspo, "--union-fraction", "0.6")
    assert code == 2 and "union fraction must lie in [0, 0.5)" in text
    code, text = _pairs_cli(tmp_path, *sbspo, "--selection", "best")
    assert code == 2 and "selection must be one of" in text


def test_iterate_maps_csr_under_the_official_preset() -> None:
    """`iterate --method csr --preset official` is checked (and run) as csr-official: its
    options are csr-official's, so CSR's λ is refused by name."""
    from selfreward_vlm.trainer.iterate import check_iterate

    check_iterate("csr", False, "official", {"preset": "official", "alpha": 0.5})
    with pytest.raises(ValueError, match="csr-official has no option"):
        check_iterate("csr", False, "official", {"lam": 0.5})
    check_iterate("csr", False, "paper", {"lam": 0.5})  # the paper search under paper
