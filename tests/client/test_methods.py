"""The pair-building methods against a fake scorer with hand-chosen candidates and scores."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from typing import Any

import pytest

from selfreward_vlm.client.methods import (
    CSRConfig,
    CSROfficialConfig,
    PromptItem,
    RunContext,
    SamePolicyError,
    SBSPOConfig,
    SelfJudgeConfig,
    build_config,
    check_run,
    csr,
    csr_official,
    pair_id,
    sbspo,
    self_judge,
)
from selfreward_vlm.client.methods.base import tally
from selfreward_vlm.client.testing import FakeScorer
from selfreward_vlm.core.schemas import Candidate, GenerateResponse, Usage

EOS: tuple[str, list[float], bool] = ("", [-0.5], True)
ITEM = PromptItem("p1", "Describe the image.", "img")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --------------------------------------------------------------------------- CSR paper mode

# cosines are R_I / 100; R = 0.9·R_I + 0.1·R_T with R_T = sum of log-probs (sum_logprob)
CSR_TREE: dict[str, list[tuple[str, list[float], bool]]] = {
    "": [(" A.", [-1.0], False), (" B.", [-2.0], False), (" C.", [-1.0], False)],
    " A.": [EOS, (" D.", [-1.0], False), (" E.", [-3.0], False)],
    " C.": [("", [-0.2], True), (" F.", [-1.0], False), (" G.", [-1.0], False)],
    " A. D.": [("", [-0.1], True), (" H.", [-1.0], False)],
    " C. G.": [("", [-0.1], True), (" I.", [-1.0], False)],
}
CSR_COS = {"A.": 0.2, "B.": 0.1, "C.": -0.05, "D.": 0.3, "E.": 0.05, "F.": 0.15, "G.": 0.0,
           "H.": 0.1, "I.": -0.2}  # fmt: skip


def csr_config(**kw: Any) -> CSRConfig:
    base = {"num_candidates": 3, "keep_top": 1, "keep_bottom": 1, "max_steps": 3,
            "language_score": "sum_logprob"}  # fmt: skip
    return CSRConfig(**{**base, **kw})


def test_csr_paper_selection_hand_computed() -> None:
    fake = FakeScorer(tree=CSR_TREE, cosine=CSR_COS)
    result = run(csr(fake, ITEM, RunContext(model="base"), csr_config()))
    # step 1: A 17.9, B 8.8, C -0.1 -> keep A (top) and C (bottom); B is pruned
    # step 2: AD 44.8, AE 22.1, CF 13.3, CG -0.2 -> keep AD, CG; A+stop 17.85, C+stop -0.12
    # step 3: ADH 53.7, CGI -0.3 live at max_steps -> finished by length
    assert fake.prefixes == ["", " A.", " C.", " A. D.", " C. G."]
    assert len(fake.clip_calls) == 3  # one CLIP request per step
    assert sorted(fake.clip_calls[1]) == ["D.", "E.", "F.", "G."]
    (pair,) = result.pairs
    assert (pair.chosen, pair.rejected) == ("A. D. H.", "C. G. I.")
    assert pair.chosen_score.reward == pytest.approx(17.9 + 26.9 + 8.9)
    assert pair.rejected_score.reward == pytest.approx(-0.3)
    first = pair.chosen_score.sentences[0]
    assert (first.text, first.r_t, first.r_i) == ("A.", -1.0, pytest.approx(20.0))
    assert first.reward == pytest.approx(17.9)
    assert pair.params["lam"] == 0.9 and pair.params["path_score"] == "sum"
    assert pair.params["language_score"] == "sum_logprob"
    assert pair.images == ["img"] and pair.method == "csr"
    assert pair.id == pair_id("csr", "p1", 0, "A. D. H.", "C. G. I.")
    assert result.stats["finished"] == 6


def test_csr_paper_default_prob_score() -> None:
    fake = FakeScorer(tree=CSR_TREE, cosine=CSR_COS)
    (pair,) = run(csr(fake, ITEM, None, csr_config(language_score="prob"))).pairs
    assert pair.chosen_score.sentences[0].r_t == pytest.approx(math.exp(-1.0))
    assert pair.chosen == "A. D. H."


def test_csr_stop_r_i_zero_vs_path() -> None:
    fake = FakeScorer(tree=CSR_TREE, cosine=CSR_COS)
    tree = {"": [(" A.", [-1.0], False), (" C.", [-1.0], False)], " A.": [EOS], " C.": [EOS]}
    for policy, stop_r_i in [("zero", 0.0), ("path", 20.0)]:
        fake = FakeScorer(tree=tree, cosine=CSR_COS)
        (pair,) = run(csr(fake, ITEM, None, csr_config(stop_r_i=policy))).pairs
        assert pair.chosen == "A."
        stop = pair.chosen_score.sentences[-1]
        assert stop.text == "" and stop.extra["end_of_response"] == 1.0
        assert stop.r_i == pytest.approx(stop_r_i)
        assert stop.reward == pytest.approx(0.9 * stop_r_i + 0.1 * -0.5)
        assert pair.chosen_score.reward == pytest.approx(17.9 + stop.reward)


def test_csr_mean_path_score_changes_the_pick() -> None:
    # R_T = 0 everywhere, so R = 0.9·R_I: X 9, Y 13.5, V 10.8, Z 27, W 0, stops 0.
    # finished: X Y V + stop (sum 33.3, mean 8.325), Z + stop (27, 13.5), W + stop (0, 0)
    tree = {
        "": [(" X.", [0.0], False), (" Z.", [0.0], False), (" W.", [0.0], False)],
        " X.": [(" Y.", [0.0], False)], " Z.": [("", [0.0], True)], " W.": [("", [0.0], True)],
        " X. Y.": [(" V.", [0.0], False)], " X. Y. V.": [("", [0.0], True)],
    }  # fmt: skip
    cos = {"X.": 0.10, "Y.": 0.15, "Z.": 0.30, "W.": 0.0, "V.": 0.12}
    cfg = csr_config(keep_top=2, keep_bottom=1, max_steps=5)
    summed = run(csr(FakeScorer(tree=tree, cosine=cos), ITEM, None, cfg)).pairs[0]
    meaned = run(csr(FakeScorer(tree=tree, cosine=cos), ITEM, None, csr_config(
        keep_top=2, keep_bottom=1, max_steps=5, path_score="mean"))).pairs[0]  # fmt: skip
    assert summed.chosen == "X. Y. V."  # 9 + 13.5 + 10.8 = 33.3 > 27
    assert meaned.chosen == "Z."  # 27/2 = 13.5 > 33.3/4
    assert summed.rejected == meaned.rejected == "W."


def test_csr_drop_duplicate_sentences() -> None:
    tree = {
        "": [(" A.", [-1.0], False), (" B.", [-1.0], False)],
        " A.": [(" A.", [-1.0], False), EOS],
        " B.": [EOS],
        " A. A.": [EOS],
    }
    cos = {"A.": 0.2, "B.": 0.0}
    kept = run(csr(FakeScorer(tree=tree, cosine=cos), ITEM, None, csr_config())).pairs[0]
    assert kept.chosen == "A. A."  # CLIP rewards saying it again
    fake = FakeScorer(tree=tree, cosine=cos)
    dropped = run(csr(fake, ITEM, None, csr_config(drop_duplicate_sentences=True))).pairs[0]
    assert dropped.chosen == "A."
    assert " A. A." not in fake.prefixes
    assert dropped.params["drop_duplicate_sentences"] is True


def test_csr_no_pair_when_one_response() -> None:
    tree = {"": [(" A.", [-1.0], True), (" A.", [-1.0], True)]}
    result = run(csr(FakeScorer(tree=tree, cosine={"A.": 0.2}), ITEM, None, csr_config()))
    assert result.pairs == [] and "fewer than 2" in (result.skipped or "")


def test_csr_needs_image() -> None:
    result = run(csr(FakeScorer(), PromptItem("p", "x", None)))
    assert result.skipped and not result.pairs


# --------------------------------------------------------------------------- CSR official code

OFFICIAL_TREE: dict[str, list[tuple[str, list[float], bool]]] = {
    "": [(" Alpha one.", [-1.0, -1.0], False), (" Beta two.", [-2.0], False),
         (" Gamma three.", [-3.0], False)],
    " Alpha one.": [("", [-0.3], True), (" Delta four.", [-1.0], True),
                    (" Eps five.", [-0.5], True)],
    " Gamma three.": [(" Zeta six.", [-2.0], True), (" Hi.", [-0.1], True),
                      (" Theta x.", [-1.0], True)],
}  # fmt: skip
OFFICIAL_COS = {"Alpha one.": 0.30, "Beta two.": 0.10, "Gamma three.": 0.20, "Delta four.": 0.10,
                "Eps five.": 0.05, "Zeta six.": 0.40, "Hi.": 0.9, "Theta x.": -0.10}  # fmt: skip


def test_csr_official_rank_fusion_hand_computed() -> None:
    fake = FakeScorer(tree=OFFICIAL_TREE, cosine=OFFICIAL_COS)
    cfg = CSROfficialConfig(num_candidates=3, keep_top=1, keep_bottom=1, min_pool=3)
    result = run(csr_official(fake, ITEM, None, cfg))
    # search by mean log-prob only: Alpha -1, Beta -2, Gamma -3 -> keep Alpha and Gamma
    assert fake.prefixes == ["", " Alpha one.", " Gamma three."]
    # CLIP once, after the search, on the cleaned tree ("Hi." < 4 chars is gone; Beta stays)
    assert len(fake.clip_calls) == 1 and "Hi." not in fake.clip_calls[0]
    assert "Beta two." in fake.clip_calls[0]
    # root children: fused Alpha 1/3, Beta 0.9667, Gamma 0.1·1 + 0.9·2/3 = 0.7
    # Alpha's: Delta 0.1·1 + 0.9·0.5 = 0.55, Eps 0.1·0.5 + 0.9·1 = 0.95; Gamma's alike
    # paths (sum / (sentences + 1)): Alpha (closed by EOS) 1/6, AD 0.2944, AE 0.4278,
    # GZ 0.4167, GT 0.55; Beta was pruned, never finished
    (pair,) = result.pairs
    assert (pair.chosen, pair.rejected) == ("Alpha one.", "Gamma three. Theta x.")
    assert pair.chosen_score.extra["mean_fused_rank"] == pytest.approx(1 / 6)
    assert pair.rejected_score.extra["mean_fused_rank"] == pytest.approx((0.7 + 0.95) / 3)
    assert pair.chosen_score.reward == pytest.approx(1 - 1 / 6)
    assert pair.chosen_score.reward >= pair.rejected_score.reward
    theta = pair.rejected_score.sentences[1]
    assert (theta.extra["rank_t"], theta.extra["rank_i"]) == (0.5, 1.0)
    assert result.stats["finished"] == 5
    assert pair.method == "csr-official" and pair.params["alpha"] == 0.9
    # sample.py stops at the "." token alone (eos_token_id=period_id): the exact-token stop
    assert {(c["stop"], c["stop_text"]) for c in fake.generate_calls} == {("token", ".")}


def test_csr_official_filter_is_the_released_clean_tree() -> None:
    """degenerate_rule "official" (the default): a sentence with emoji stays (clean_text
    deletes them first), 7 commas stay, and the 4-character rule counts what clean_text
    leaves; "strict" (ours) drops the first two."""
    texts = (" Alpha one.", " Dog 🐶 runs.", " Cats, , , , , , , dogs.", " 🐶🐶🐶.")
    tree = {"": [(t, [-1.0], True) for t in texts]}
    cos = {"Alpha one.": 0.3, "Dog 🐶 runs.": 0.2, "Cats, , , , , , , dogs.": 0.1, "🐶🐶🐶.": 0.0}

    def scored(rule: str) -> set[str]:
        fake = FakeScorer(tree=tree, cosine=cos)
        cfg = CSROfficialConfig(
            num_candidates=4,
            num_beam_groups=4,
            degenerate_rule=rule,  # type: ignore[arg-type]
        )
        run(csr_official(fake, ITEM, None, cfg))
        return set(fake.clip_calls[0])

    assert scored("official") == {"Alpha one.", "Dog 🐶 runs.", "Cats, , , , , , , dogs."}
    assert scored("strict") == {"Alpha one."}
    assert (CSROfficialConfig().max_new_tokens, CSROfficialConfig().max_steps) == (70, None)


def test_csr_official_without_root_in_mean() -> None:
    fake = FakeScorer(tree=OFFICIAL_TREE, cosine=OFFICIAL_COS)
    cfg = CSROfficialConfig(num_candidates=3, keep_top=1, keep_bottom=1, min_pool=3,
                            count_root_in_mean=False)  # fmt: skip
    (pair,) = run(csr_official(fake, ITEM, None, cfg)).pairs
    assert pair.chosen_score.extra["mean_fused_rank"] == pytest.approx(1 / 3)
    assert pair.rejected == "Gamma three. Theta x."


def test_csr_penalized_duplicates_score_r_i_zero_and_stay() -> None:
    """`penalize_duplicate_sentences`: a sentence the path already said keeps its place but
    scores R_I 0, so the path that repeats becomes the rejected one."""
    tree: dict[str, list[tuple[str, list[float], bool]]] = {
        "": [(" A.", [-1.0], False), (" B.", [-1.0], False)],
        " A.": [(" A.", [-0.1], False), EOS],
        " B.": [EOS, (" C.", [-1.0], False)],
        " A. A.": [EOS],
        " B. C.": [EOS],
    }
    cos = {"A.": 0.4, "B.": 0.35, "C.": 0.3}
    cfg = csr_config(num_candidates=2, keep_top=1, keep_bottom=2, max_steps=3, lam=1.0,
                     r_i_offset=10.0)  # fmt: skip
    (plain,) = run(csr(FakeScorer(tree=tree, cosine=cos), ITEM, None, cfg)).pairs
    assert plain.chosen == "A. A."  # 30 + 30: repeating the best sentence wins
    cfg = replace(cfg, penalize_duplicate_sentences=True)
    (pair,) = run(csr(FakeScorer(tree=tree, cosine=cos), ITEM, None, cfg)).pairs
    repeat = [s for s in pair.rejected_score.sentences if s.text == "A."]
    assert pair.rejected == "A. A." and [s.r_i for s in repeat] == [pytest.approx(40.0), 0.0]
    assert pair.chosen == "B. C." and pair.rejected_score.reward == pytest.approx(20.0)


def random_tree(seed: int, depth: int = 4) -> tuple[dict[str, Any], dict[str, float]]:
    """A synthetic search tree: every prefix has two sentences and, 40 % of the time, an EOS
    candidate; sentence cosines uniform in [0, 0.4] (R_I 0-40, never negative)."""
    import random

    rng = random.Random(seed)
    tree: dict[str, Any] = {}
    cosine: dict[str, float] = {}
    frontier = [""]
    for _ in range(depth):
        nxt = []
        for prefix in frontier:
            kids = [(f" S{len(cosine) + i}.", [rng.uniform(-2, -0.1)], False) for i in range(2)]
            for text, _, _ in kids:
                cosine[text.strip()] = rng.uniform(0.0, 0.4)
                nxt.append(prefix + text)
            tree[prefix] = kids + ([("", [-0.3], True)] if rng.random() < 0.4 else [])
        frontier = nxt
    return tree, cosine


def chosen_lengths(path_score: str, trees: int = 40, **options: Any) -> list[Any]:
    from selfreward_vlm.client.methods.lengths import length_stats

    pairs = []
    for seed in range(trees):
        tree, cosine = random_tree(seed)
        cfg = csr_config(lam=1.0, path_score=path_score, max_steps=4, **options)
        pairs += run(csr(FakeScorer(tree=tree, cosine=cosine), ITEM, None, cfg)).pairs
    return [pairs, length_stats(pairs)]


def test_csr_sum_mode_always_chooses_the_longest_path() -> None:
    """Paper mode (sum) with R = R_I ≥ 0: every chosen response is the longest finished one,
    cut off by max_steps, and never shorter than its rejected; `length_stats` measures it. A
    baseline on R_I (`r_i_offset`) makes a weak sentence cost reward, and length stops
    deciding alone."""
    pairs, stats = chosen_lengths("sum")
    assert len(pairs) == 40
    for p in pairs:
        assert p.chosen_score.extra["num_sentences"] == 4 and p.chosen_score.extra["eos"] == 0
    assert stats["chosen_cut_off"] == 1.0 and stats["chosen_shorter"] == 0.0
    assert stats["chosen_words"] > stats["rejected_words"]
    _, offset = chosen_lengths("sum", r_i_offset=25.0)
    assert offset["chosen_cut_off"] < 1.0 and offset["chosen_shorter"] > 0.0


def test_csr_mean_mode_prefers_cut_off_paths_unless_excluded() -> None:
    """Mean path score with R_I = 0 for the end-of-response step: a path cut by max_steps has
    no such step to dilute its mean, so it is chosen every time; `exclude_cut_off` chooses
    among responses that ended."""
    _, mean = chosen_lengths("mean")
    assert mean["chosen_cut_off"] == 1.0
    pairs, ended = chosen_lengths("mean", exclude_cut_off=True)
    assert pairs and ended["chosen_cut_off"] == 0.0 and ended["rejected_cut_off"] == 0.0


# --------------------------------------------------------------------------- SBSPO

SUMS = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0]
AVGS = [0.5, 0.4, -0.9, 0.1, 0.0, -0.1, -0.2, -0.3, -0.4, 0.9]


def _sbspo_fake() -> FakeScorer:
    texts = [f"response {i}" for i in range(10)]
    return FakeScorer(samples=texts, implicit=dict(zip(texts, zip(SUMS, AVGS, strict=True),
                                                       strict=True)))  # fmt: skip


def test_sbspo_reward_union_pairs() -> None:
    """Eq. 5 as written (the default): A ∪ = {0,1,2,9}, R ∪ = {2,7,8,9}; 2 and 9 stay in both,
    so the best response by sum (0) and by average (9) each meet every other: 14 pairs."""
    fake = _sbspo_fake()
    ctx = RunContext(model="pol", reference="ref", iteration=2)
    result = run(sbspo(fake, ITEM, ctx, SBSPOConfig()))
    call = fake.generate_calls[0]
    assert (call["strategy"], call["n"], call["seed"], call["stop"]) == ("sample", 10, 0, "eos")
    assert call["temperature"] == 0.7 and call["model"] == "pol"
    got = {(p.chosen, p.rejected) for p in result.pairs}
    chosen, rejected = (0, 1, 2, 9), (2, 7, 8, 9)
    assert got == {(f"response {c}", f"response {r}") for c in chosen for r in rejected if c != r}
    assert len(result.pairs) == 14
    assert result.stats["overlap"] == 2 and result.stats["dropped"] == 0
    p = result.pairs[0]
    assert p.reference == "ref" and p.model == "pol" and p.iteration == 2
    assert p.params["k"] == 3 and p.params["m"] == 10 and p.params["union_fraction"] == 0.3
    assert (p.params["selection"], p.params["overlap"], p.params["overlap_count"]) == (
        "union", "keep", 2)  # fmt: skip
    assert p.chosen_score.extra["rank_sum"] == 1 and p.chosen_score.extra["seed"] == 0
    assert len({q.id for q in result.pairs}) == 14


def test_sbspo_drop_rule_is_ours_and_named() -> None:
    """overlap="drop" (ours; the tuned preset's): 2 and 9 leave both sets -> 2 × 2 pairs."""
    result = run(sbspo(_sbspo_fake(), ITEM, RunContext(model="pol"), SBSPOConfig(overlap="drop")))
    got = sorted((p.chosen, p.rejected) for p in result.pairs)
    assert got == [("response 0", "response 7"), ("response 0", "response 8"),
                   ("response 1", "response 7"), ("response 1", "response 8")]  # fmt: skip
    assert result.stats["dropped"] == 2


@pytest.mark.parametrize(
    ("selection", "chosen", "rejected"),
    [("sum", (0, 1, 2), (7, 8, 9)), ("avg", (0, 1, 9), (2, 7, 8))],
)
def test_sbspo_single_ranking_selection(
    selection: str, chosen: tuple[int, ...], rejected: tuple[int, ...]
) -> None:
    cfg = SBSPOConfig(selection=selection)  # type: ignore[arg-type]
    result = run(sbspo(_sbspo_fake(), ITEM, RunContext(model="pol"), cfg))
    got = {(p.chosen, p.rejected) for p in result.pairs}
    assert got == {(f"response {c}", f"response {r}") for c in chosen for r in rejected}


def test_sbspo_lam_is_a_deprecated_alias_of_union_fraction() -> None:
    with pytest.warns(FutureWarning, match="union_fraction"):
        cfg = build_config("sbspo", lam=0.2)
    assert cfg.union_fraction == 0.2
    with pytest.raises(ValueError, match="deprecated alias"):
        build_config("sbspo", lam=0.2, union_fraction=0.3)
    with pytest.raises(ValueError, match="no option"):
        build_config("csr", union_fraction=0.3)  # CSR's λ is its R_I weight only


def test_sbspo_dedupes_identical_samples() -> None:
    texts = [f"r{i}" for i in range(9)] + ["r0"]  # sample 9 repeats sample 0
    fake = FakeScorer(samples=texts, implicit={t: (float(-i), float(-i)) for i, t in
                                               enumerate(texts[:9])})  # fmt: skip
    result = run(sbspo(fake, ITEM, RunContext(model="pol"), SBSPOConfig()))
    assert result.stats["distinct"] == 9
    # m = 9 -> k = ⌈2.7⌉ = 3; rankings agree: 3 × 3 pairs
    assert len(result.pairs) == 9
    assert result.pairs[0].params["m"] == 9


def test_sbspo_refuses_policy_equal_to_reference() -> None:
    """Policy = reference makes every implicit reward 0, and the union would pick chosen =
    seeds 0-2, rejected = seeds 7-9 by index: refused before any request."""
    fake = FakeScorer(samples=[f"r{i}" for i in range(10)])
    with pytest.raises(SamePolicyError, match="differs from its reference"):
        run(sbspo(fake, ITEM, RunContext(model="base", reference="base"), SBSPOConfig()))
    assert fake.generate_calls == []
    with pytest.raises(ValueError, match="M1'"):
        check_run("sbspo", "it1", "it1")
    check_run("sbspo", "it1", "base")
    check_run("csr", "base", "base")  # CSR does not use the reference


def test_pairs_cli_refuses_sbspo_default_policy(tmp_path: Any) -> None:
    """`selfreward pairs --method sbspo` with the default --model/--reference (both base)
    fails at once with a usage error naming the options."""
    from typer.testing import CliRunner

    from selfreward_vlm.client.cli import app

    args = ["pairs", "--service", "http://127.0.0.1:9", "--method", "sbspo",
            "--prompts", str(tmp_path / "p.jsonl"), "--images", str(tmp_path),
            "--out", str(tmp_path / "o.jsonl")]  # fmt: skip
    res = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    text = " ".join(res.output.replace("│", " ").split())
    assert res.exit_code == 2
    assert "policy that differs from its reference" in text and "--model" in text


def test_sbspo_small_m_is_clamped_and_recorded() -> None:
    """The `drop` rule (ours), m = 3 distinct samples, λ = 0.4: ⌈1.2⌉ = 2 > 3/2 is clamped to
    1; the pair records m, k, the unclamped k and how many responses the union dropped."""
    texts = ["a", "b", "c", "a", "b", "c"]
    fake = FakeScorer(samples=texts, implicit={"a": (3.0, 0.3), "b": (2.0, 0.2),
                                               "c": (1.0, 0.1)})  # fmt: skip
    cfg = SBSPOConfig(num_samples=6, union_fraction=0.4, overlap="drop")
    (pair,) = run(sbspo(fake, ITEM, RunContext(model="pol"), cfg)).pairs
    assert (pair.chosen, pair.rejected) == ("a", "c")
    assert pair.params["m"] == 3 and pair.params["k"] == 1
    assert pair.params["k_requested"] == 2 and pair.params["k_clamped"] is True
    assert pair.params["dropped"] == 0 and pair.params["samples"] == 6


# --------------------------------------------------------------------------- self-judge


def test_self_judge_picks_by_logprobs() -> None:
    fake = FakeScorer(samples=["a cat", "a dog"], judge_logprobs={
        ("a cat", "Response 1"): -2.0, ("a cat", "Response 2"): -1.0})  # fmt: skip
    (pair,) = run(self_judge(fake, ITEM, None, SelfJudgeConfig())).pairs
    assert (pair.chosen, pair.rejected) == ("a dog", "a cat")
    assert pair.chosen_score.reward == -1.0 and pair.rejected_score.reward == -2.0
    assert pair.chosen_score.reward >= pair.rejected_score.reward


def test_self_judge_both_orders_cancels_position_bias() -> None:
    lps = {("a cat", "Response 1"): -1.0, ("a cat", "Response 2"): -1.2,
           ("a dog", "Response 1"): -0.2, ("a dog", "Response 2"): -2.0}  # fmt: skip
    once = run(self_judge(FakeScorer(samples=["a cat", "a dog"], judge_logprobs=lps), ITEM))
    assert once.pairs[0].chosen == "a cat"
    both = run(self_judge(FakeScorer(samples=["a cat", "a dog"], judge_logprobs=lps), ITEM,
                          None, SelfJudgeConfig(both_orders=True)))  # fmt: skip
    # cat: -1.0 (first) + -2.0 (second) = -3.0; dog: -1.2 + -0.2 = -1.4
    assert both.pairs[0].chosen == "a dog"


def test_self_judge_generate_and_parse() -> None:
    fake = FakeScorer(samples=["a cat", "a dog"], judge_text="Response 2.")
    (pair,) = run(self_judge(fake, ITEM, None, SelfJudgeConfig(judge="generate"))).pairs
    assert pair.chosen == "a dog"
    judge_call = fake.generate_calls[-1]
    assert "a cat" in judge_call["prompt"] and "a dog" in judge_call["prompt"]
    fake = FakeScorer(samples=["a cat", "a dog"], judge_text="I cannot tell.")
    result = run(self_judge(fake, ITEM, None, SelfJudgeConfig(judge="generate")))
    assert not result.pairs and result.skipped


def test_self_judge_identical_samples_retry_then_skip() -> None:
    fake = FakeScorer(samples=["same"])
    result = run(self_judge(fake, ITEM, None, SelfJudgeConfig(attempts=2)))
    assert not result.pairs and len(fake.generate_calls) == 2
    assert [c["seed"] for c in fake.generate_calls] == [0, 2]


# --------------------------------------------------------------------------- configs


def test_build_config_rejects_foreign_and_bad_options() -> None:
    assert build_config("csr", lam=0.5, keep_top=None).lam == 0.5
    with pytest.raises(ValueError, match="keep_top"):
        build_config("sbspo", keep_top=2)
    with pytest.raises(ValueError, match="language_score"):
        build_config("csr", language_score="bogus")
    with pytest.raises(ValueError):
        build_config("sbspo", union_fraction=0.6)
    with pytest.raises(ValueError, match="unknown method"):
        build_config("nope")


def test_tally_counts_usage_and_distinct_tree_tokens() -> None:
    def c(ids: list[int]) -> Candidate:
        return Candidate(text="x", token_ids=ids, token_logprobs=[0.0] * len(ids),
                         finished=False, stop_reason="sentence")  # fmt: skip

    resp = GenerateResponse(
        model="m", candidates=[c([1, 2, 3]), c([1, 2, 4]), c([5])],
        usage=Usage(tokens_forwarded=6, tokens_scored=7),
    )  # fmt: skip
    stats: dict[str, float] = {"generate_calls": 1.0}
    tally(stats, resp)
    assert stats["tree_tokens"] == 5  # 1, 1-2, 1-2-3, 1-2-4, 5
    assert (stats["generate_calls"], stats["tokens_forwarded"], stats["tokens_scored"]) == (2, 6, 7)
