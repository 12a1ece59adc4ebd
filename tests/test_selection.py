"""Pure pair-selection math (core.selection, core.rewards additions) on hand-computed numbers."""

from __future__ import annotations

import pytest

from selfreward_vlm.core.rewards import path_reward, stop_relevance
from selfreward_vlm.core.selection import (
    first_occurrences,
    fused_rank,
    is_degenerate,
    judge_pick,
    keep_extremes,
    mean_fused_rank,
    normalize_sentence,
    parse_judge_output,
    pick_chosen_rejected,
    rank_desc,
    requested_union_size,
    reward_union,
    sibling_ranks,
    union_pairs,
    union_size,
)


def test_rank_desc_is_stable_on_ties() -> None:
    assert rank_desc([1.0, 3.0, 1.0, 3.0]) == [1, 3, 0, 2]


def test_keep_extremes_top_and_bottom() -> None:
    # desc order: 0 (5), 4 (4), 2 (3), 3 (2), 1 (1)
    assert keep_extremes([5, 1, 3, 2, 4], top=1, bottom=2) == [0, 3, 1]
    assert keep_extremes([5, 1, 3, 2, 4], top=2, bottom=0) == [0, 4]


def test_keep_extremes_small_pool_kept_whole() -> None:
    assert keep_extremes([1, 2, 3], top=1, bottom=2) == [2, 1, 0]
    # the official code prunes only a pool of >= num_beams (5): 4 children stay
    assert keep_extremes([1, 2, 3, 4], top=1, bottom=2, keep_all_below=5) == [3, 2, 1, 0]
    assert keep_extremes([1, 2, 3, 4, 5], top=1, bottom=2, keep_all_below=5) == [4, 1, 0]
    assert keep_extremes([], top=1, bottom=2) == []


def test_pick_chosen_rejected_distinct_texts() -> None:
    assert pick_chosen_rejected(["a", "b", "c"], [1.0, 3.0, 2.0]) == (1, 0)
    # the lowest score repeats the chosen text: the next lowest distinct text is rejected
    assert pick_chosen_rejected(["a", "b", "a"], [3.0, 2.0, 1.0]) == (0, 1)
    assert pick_chosen_rejected(["a", "a"], [3.0, 1.0]) is None
    assert pick_chosen_rejected([], []) is None
    # ties: first of the best, last of the worst
    assert pick_chosen_rejected(["a", "b", "c"], [1.0, 1.0, 1.0]) == (0, 2)


def test_first_occurrences() -> None:
    assert first_occurrences(["x", "y", "x", "z", "y"]) == [0, 1, 3]


def test_sibling_ranks_official_convention() -> None:
    # best gets 1/n, worst 1
    assert sibling_ranks([0.3, 0.1, 0.2]) == pytest.approx([1 / 3, 1.0, 2 / 3])
    assert sibling_ranks([-1.0, -1.0]) == [0.5, 1.0]


def test_fused_and_mean_fused_rank() -> None:
    assert fused_rank(1.0, 0.5, alpha=0.9) == pytest.approx(0.1 + 0.45)
    assert fused_rank(1 / 3, 1 / 3) == pytest.approx(1 / 3)
    # official: divide by sentences + 1 (the root is on the path)
    assert mean_fused_rank([1 / 3, 0.55]) == pytest.approx((1 / 3 + 0.55) / 3)
    assert mean_fused_rank([1 / 3, 0.55], count_root=False) == pytest.approx((1 / 3 + 0.55) / 2)
    with pytest.raises(ValueError):
        fused_rank(0.5, 0.5, alpha=1.5)


def test_union_size_is_robust_to_float_noise() -> None:
    assert union_size(10, 0.3) == 3
    assert union_size(9, 0.3) == 3
    assert union_size(5, 0.3) == 2
    assert union_size(10, 0.0) == 0
    with pytest.raises(ValueError):
        union_size(10, 0.5)


def test_union_size_is_clamped_to_half_of_m() -> None:
    """⌈λm⌉ > m/2 (m = 3, λ = 0.4 → 2; m = 2 after de-duplication, λ = 0.3 → 1 is fine):
    the top and bottom k of one ranking must not overlap."""
    assert requested_union_size(3, 0.4) == 2
    assert union_size(3, 0.4) == 1
    assert union_size(2, 0.3) == 1
    assert union_size(1, 0.3) == 0
    assert union_size(5, 0.45) == 2  # ⌈2.25⌉ = 3 > 2.5


def test_reward_union_small_m_loses_no_response_to_overlap() -> None:
    """m = 3, λ = 0.4, both rankings agree: unclamped k = 2 puts the middle response in both
    the top-2 and the bottom-2, so it would vanish; clamped k = 1 keeps best vs worst."""
    sel = reward_union([3.0, 2.0, 1.0], [0.3, 0.2, 0.1], lam=0.4)
    assert (sel.chosen, sel.rejected, sel.dropped) == ([0], [2], [])
    assert (sel.m, sel.k, sel.k_requested, sel.clamped) == (3, 1, 2, True)
    assert not reward_union(SUMS, SUMS, lam=0.3).clamped


SUMS = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0]
AVGS = [0.5, 0.4, -0.9, 0.1, 0.0, -0.1, -0.2, -0.3, -0.4, 0.9]


def test_reward_union_hand_built() -> None:
    # sum: top3 {0,1,2}, bottom3 {7,8,9}; avg: top3 {9,0,1}, bottom3 {7,8,2}
    # chosen ∪ = {0,1,2,9}; rejected ∪ = {2,7,8,9}; 2 and 9 are in both -> dropped from both
    sel = reward_union(SUMS, AVGS, lam=0.3)
    assert sel.k == 3
    assert sel.chosen == [0, 1]
    assert sel.rejected == [7, 8]
    assert sel.dropped == [2, 9]
    texts = [f"r{i}" for i in range(10)]
    assert union_pairs(sel.chosen, sel.rejected, texts) == [(0, 7), (0, 8), (1, 7), (1, 8)]


def test_reward_union_agreeing_rankings() -> None:
    sel = reward_union(SUMS, SUMS, lam=0.3)
    assert (sel.chosen, sel.rejected, sel.dropped) == ([0, 1, 2], [7, 8, 9], [])
    assert len(union_pairs(sel.chosen, sel.rejected, [str(i) for i in range(10)])) == 9


def test_union_pairs_skip_identical_text() -> None:
    assert union_pairs([0, 1], [2], ["a", "b", "a"]) == [(1, 2)]


def test_judge_pick_and_parse() -> None:
    assert judge_pick(-1.0, -2.0) == 0
    assert judge_pick(-2.0, -1.0) == 1
    assert judge_pick(-1.0, -1.0) == 0
    assert parse_judge_output("Response 2.") == 1
    assert parse_judge_output("I think response 1 is better") == 0
    assert parse_judge_output("response 1 or response 2.") is None
    assert parse_judge_output("both are fine") is None


def test_is_degenerate() -> None:
    assert is_degenerate("the the the the the the cat")
    assert is_degenerate("zzzzzzzzzzzzz")
    assert is_degenerate("Это кот.")
    assert is_degenerate("a\nb\nc\nd\ne\nf\ng")
    assert not is_degenerate("There is a red circle next to a blue square.")


def test_normalize_sentence() -> None:
    assert normalize_sentence("  There  is\na cat. ") == "There is a cat."


def test_path_reward() -> None:
    assert path_reward([1.0, 2.0, 3.0], "sum") == 6.0
    assert path_reward([1.0, 2.0, 3.0], "mean") == 2.0
    assert path_reward([], "mean") == 0.0
    with pytest.raises(ValueError):
        path_reward([1.0], "max")  # type: ignore[arg-type]


def test_stop_relevance_policies() -> None:
    assert stop_relevance("zero", [20.0, 10.0]) == 0.0
    assert stop_relevance("path", [20.0, 10.0]) == 15.0
    assert stop_relevance("path", []) == 0.0
