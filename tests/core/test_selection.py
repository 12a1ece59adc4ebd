"""Pure pair-selection math (core.selection, core.rewards additions) on hand-computed numbers."""

from __future__ import annotations

import pytest

from selfreward_vlm.core.rewards import path_reward, stop_relevance
from selfreward_vlm.core.selection import (
    first_occurrences,
    fused_rank,
    is_degenerate,
    is_degenerate_official,
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
    """The `drop` rule (ours), m = 3, λ = 0.4, both rankings agree: unclamped k = 2 puts the
    middle response in both the top-2 and the bottom-2, so it would vanish; clamped k = 1 keeps
    best vs worst."""
    sel = reward_union([3.0, 2.0, 1.0], [0.3, 0.2, 0.1], lam=0.4, overlap="drop")
    assert (sel.chosen, sel.rejected, sel.dropped) == ([0], [2], [])
    assert (sel.m, sel.k, sel.k_requested, sel.clamped) == (3, 1, 2, True)
    assert not reward_union(SUMS, SUMS, lam=0.3, overlap="drop").clamped


def test_reward_union_keep_small_m_is_eq5_unclamped() -> None:
    """Eq. 5 literally, m = 3, λ = 0.4: k = ⌈1.2⌉ = 2, the middle response is in A and R and
    is paired with the others, never with itself."""
    sel = reward_union([3.0, 2.0, 1.0], [0.3, 0.2, 0.1], lam=0.4)
    assert (sel.chosen, sel.rejected, sel.overlap, sel.dropped) == ([0, 1], [1, 2], [1], [])
    assert (sel.k, sel.clamped) == (2, False)
    assert union_pairs(sel.chosen, sel.rejected, ["a", "b", "c"]) == [(0, 1), (0, 2), (1, 2)]


SUMS = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0]
AVGS = [0.5, 0.4, -0.9, 0.1, 0.0, -0.1, -0.2, -0.3, -0.4, 0.9]
TEXTS = [f"r{i}" for i in range(10)]


def test_reward_union_eq5_keeps_a_response_in_both_sets() -> None:
    """SBSPO eq. 5: A = S_sum^{1:3} ∪ S_avg^{1:3} = {0,1,2,9}, R = S_sum^{8:10} ∪ S_avg^{8:10}
    = {2,7,8,9}. 2 (top by sum, bottom by average) and 9 (the reverse) stay in both; only the
    pairs (2, 2) and (9, 9) of identical text are skipped: 4 × 4 − 2 = 14 pairs."""
    sel = reward_union(SUMS, AVGS, lam=0.3)
    assert (sel.chosen, sel.rejected) == ([0, 1, 2, 9], [2, 7, 8, 9])
    assert (sel.overlap, sel.dropped, sel.k) == ([2, 9], [], 3)
    pairs = union_pairs(sel.chosen, sel.rejected, TEXTS)
    assert len(pairs) == 14 and (2, 2) not in pairs and (9, 9) not in pairs
    assert (2, 9) in pairs and (9, 2) in pairs


def test_reward_union_drop_rule_hand_built() -> None:
    # the `drop` rule (ours): 2 and 9 in both unions leave both -> 2 × 2 pairs
    sel = reward_union(SUMS, AVGS, lam=0.3, overlap="drop")
    assert sel.k == 3
    assert sel.chosen == [0, 1]
    assert sel.rejected == [7, 8]
    assert sel.dropped == sel.overlap == [2, 9]
    assert union_pairs(sel.chosen, sel.rejected, TEXTS) == [(0, 7), (0, 8), (1, 7), (1, 8)]


def test_reward_union_single_rankings() -> None:
    """SBSPO Table 2's other two strategies: the sum ranking alone, the average alone."""
    by_sum = reward_union(SUMS, AVGS, lam=0.3, selection="sum")
    assert (by_sum.chosen, by_sum.rejected, by_sum.overlap) == ([0, 1, 2], [7, 8, 9], [])
    by_avg = reward_union(SUMS, AVGS, lam=0.3, selection="avg")  # avg order 9,0,1,3,4,5,6,7,8,2
    assert (by_avg.chosen, by_avg.rejected, by_avg.overlap) == ([0, 1, 9], [2, 7, 8], [])
    with pytest.raises(ValueError, match="unknown selection"):
        reward_union(SUMS, AVGS, selection="max")  # type: ignore[arg-type]


def test_reward_union_agreeing_rankings() -> None:
    for overlap in ("keep", "drop"):
        sel = reward_union(SUMS, SUMS, lam=0.3, overlap=overlap)  # type: ignore[arg-type]
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


def _clean_tree_restated(text: str) -> bool:
    """inference_csr/utils.py, step by step: extract_new_text -> clean_text, then clean_tree's
    contains_special_chars / contains_repeated_phrases / exceeds_newline_limit."""
    import re

    text = re.sub(r"[^\w\s.,?!;:\'\"-()/\[\]{}+$€£*=/><==!%°^™©®♫♪π√]+", "", text)
    special = [r"[\u3130-\u318F\uAC00-\uD7AF]", r"[\u0400-\u04FF]", r"[\u3040-\u309F\u30A0-\u30FF]",
               "[\U0001F600-\U0001F64F\U0001F300-\U0001F5FF\U0001F680-\U0001F6FF"
               "\U0001F700-\U0001F77F]", r"(&nbsp;){2,}"]  # fmt: skip
    repeated = (
        re.search(r"(\b\w+\b)(?:\s+\1){5,}", text)
        or re.search(r"(.)\s*\1\s*\1\s*\1\s*\1\s*\1\s*\1\s*\1\s*\1\s*\1\s*\1", text)
        or any(p in text for p in ("ttttttttttt", "sssssssssss", ", , , , , , , , , , , , ,",
                                   "\'\'\'\'\'\'\'\'\'\'"))
    )  # fmt: skip
    return bool(any(re.search(p, text) for p in special) or repeated or text.count("\n") > 5)


@pytest.mark.parametrize("text", [
    "A dog 🐶 runs.",  # emoji: clean_text deletes it first, the sentence stays
    "Cats, , , , , , , and dogs.",  # 7 commas: ours drops it, the released code keeps it
    "Cats" + ", " * 13 + "dogs.",  # 13: both drop it
    "'" * 10,  # 10 quotes: the released code's literal run
    " " * 11 + "x",  # 11 spaces: `(.)` matches a space in the released code
    "Это кот.", "x&nbsp;&nbsp;y", "the the the the the the cat", "a\nb\nc\nd\ne\nf\ng",
    "There is a red circle next to a blue square.",
])  # fmt: skip
def test_is_degenerate_official_is_the_released_clean_tree(text: str) -> None:
    assert is_degenerate_official(text) == _clean_tree_restated(text)


def test_official_and_strict_filters_differ_where_documented() -> None:
    assert not is_degenerate_official("A dog 🐶 runs.") and is_degenerate("A dog 🐶 runs.")
    six = "Cats, , , , , , and dogs."
    assert not is_degenerate_official(six) and is_degenerate(six)
    assert is_degenerate_official("'" * 10) and not is_degenerate("'" * 10)


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
