"""Pure pair-selection math of the search methods (plain Python, no I/O, no torch).

- CSR: prune a pool of paths to its `keep_top` best and `keep_bottom` worst; pick the chosen
  (highest score) and rejected (lowest score) response among distinct texts.
- CSR official code: sibling ranks (i+1)/n by descending score, fused (1−α)·rank_T + α·rank_I,
  a path's mean fused rank (lower is better).
- SBSPO: the reward union of the top/bottom ⌈λm⌉ under the sum and the average rankings (eq. 5),
  or one ranking alone (its Table 2's ablation).
- Self-judge: the judge's pick from its log-probs, or parsed from its text.

Ties are broken by position (stable sorts), so every function is deterministic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from selfreward_vlm.core import defaults


def normalize_sentence(text: str) -> str:
    """A sentence as CLIP and duplicate checks see it: no leading/trailing space, single
    spaces inside."""
    return " ".join(text.split())


def rank_desc(scores: Sequence[float]) -> list[int]:
    """Indices ordered by descending score; equal scores keep their input order."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def keep_extremes(
    scores: Sequence[float], top: int, bottom: int, keep_all_below: int | None = None
) -> list[int]:
    """Indices of the `top` highest and `bottom` lowest scores, best first.

    A pool smaller than `keep_all_below` (default top + bottom + 1, i.e. nothing to prune) is
    kept whole; the official CSR code passes its beam width 5 here, so it keeps 3 or 4 paths
    whole rather than pruning them to 3.
    """
    if top < 0 or bottom < 0:
        raise ValueError("top and bottom must be >= 0")
    threshold = top + bottom + 1 if keep_all_below is None else keep_all_below
    order = rank_desc(scores)
    if len(order) < threshold or len(order) <= top + bottom:
        return order
    return order[:top] + (order[len(order) - bottom :] if bottom else [])


def pick_chosen_rejected(texts: Sequence[str], scores: Sequence[float]) -> tuple[int, int] | None:
    """(chosen, rejected) indices: the highest score, and the lowest-scoring response whose text
    differs from the chosen one. None when fewer than two distinct texts exist."""
    if len(texts) != len(scores):
        raise ValueError("texts and scores must have the same length")
    order = rank_desc(scores)
    if not order:
        return None
    chosen = order[0]
    for i in reversed(order):
        if texts[i] != texts[chosen]:
            return chosen, i
    return None


def first_occurrences(texts: Sequence[str]) -> list[int]:
    """Indices of the first occurrence of each distinct text (dedupes identical samples)."""
    seen: set[str] = set()
    keep = []
    for i, t in enumerate(texts):
        if t not in seen:
            seen.add(t)
            keep.append(i)
    return keep


# ---------------------------------------------------------------------- CSR official code


def sibling_ranks(scores: Sequence[float]) -> list[float]:
    """Rank (position + 1) / n of each sibling by descending score: the best gets 1/n, the worst
    1 (the official code's `calculate_ranks`; lower is better)."""
    n = len(scores)
    ranks = [0.0] * n
    for pos, i in enumerate(rank_desc(scores)):
        ranks[i] = (pos + 1) / n
    return ranks


def fused_rank(rank_t: float, rank_i: float, alpha: float = defaults.FUSED_RANK_ALPHA) -> float:
    """(1−α)·rank_T + α·rank_I: the official code's per-sentence score (lower is better)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    return (1.0 - alpha) * rank_t + alpha * rank_i


def mean_fused_rank(fused: Sequence[float], count_root: bool = True) -> float:
    """A path's value: the sum of its sentences' fused ranks over its length. The official code
    divides by the number of tree nodes on the path, the (empty) root included, i.e. by
    sentences + 1 (`count_root=True`); lower is better."""
    denom = len(fused) + (1 if count_root else 0)
    return math.fsum(fused) / denom if denom else 0.0


# ---------------------------------------------------------------------- SBSPO


def requested_union_size(m: int, lam: float) -> int:
    """⌈λ·m⌉ as the paper writes it, robust to float noise (0.3·10 must be 3, not 4)."""
    if not 0.0 <= lam < 0.5:
        raise ValueError(f"SBSPO union fraction must lie in [0, 0.5), got {lam}")
    return math.ceil(round(lam * m, 9))


def union_size(m: int, lam: float) -> int:
    """k = ⌈λ·m⌉, clamped to ⌊m/2⌋ (the `drop` overlap rule's clamp, ours).

    λ < 0.5 does not keep ⌈λm⌉ ≤ m/2 for small m (m = 3, λ = 0.4 gives 2 > 1.5, and
    de-duplication shrinks m): the top-k and bottom-k of ONE ranking would then overlap, and
    under the `drop` rule the shared responses would silently leave both sets. Clamping keeps
    each ranking's top and bottom disjoint; the pair records both m and k, and whether k was
    clamped. Eq. 5 taken literally (`keep`) needs no clamp.
    """
    return min(requested_union_size(m, lam), m // 2)


# How responses are selected from the two rankings (SBSPO Table 2 compares all three):
# `union` = eq. 5, `sum` = the accumulative-reward ranking alone, `avg` = the average alone.
SelectionRule = Literal["union", "sum", "avg"]
# A response in both the chosen and the rejected set (top of one ranking, bottom of the
# other): `keep` leaves it in both, as eq. 5's unions do (paper); `drop` removes it from both
# and clamps k to ⌊m/2⌋ (ours).
OverlapRule = Literal["keep", "drop"]


@dataclass(frozen=True)
class UnionSelection:
    """Result of the SBSPO selection; indices into the scored responses, ascending."""

    chosen: list[int]
    rejected: list[int]
    overlap: list[int]  # in both sets before the overlap rule
    dropped: list[int]  # removed from both by the `drop` rule (empty under `keep`)
    k: int
    m: int
    k_requested: int  # ⌈λm⌉ before any clamp to ⌊m/2⌋

    @property
    def clamped(self) -> bool:
        return self.k < self.k_requested


def reward_union(
    sums: Sequence[float], avgs: Sequence[float], lam: float = 0.3,
    selection: SelectionRule = "union", overlap: OverlapRule = "keep",
) -> UnionSelection:  # fmt: skip
    """SBSPO eq. 5 (`selection="union"`): chosen A = top k by sum ∪ top k by average, rejected
    R = bottom k by sum ∪ bottom k by average, k = ⌈λm⌉. `"sum"` / `"avg"` use one ranking
    only (Table 2's two other strategies).

    `overlap="keep"` is eq. 5 literally: a response in both A and R stays in both (`union_pairs`
    then skips only pairs of identical text). `overlap="drop"` (ours) removes it from both and
    clamps k to ⌊m/2⌋ (`union_size`), which can remove the best response of each ranking.
    """
    if len(sums) != len(avgs):
        raise ValueError("sums and avgs must have the same length")
    if selection not in get_args(SelectionRule) or overlap not in get_args(OverlapRule):
        raise ValueError(f"unknown selection {selection!r} or overlap rule {overlap!r}")
    m = len(sums)
    k = union_size(m, lam) if overlap == "drop" else requested_union_size(m, lam)
    rankings = {"union": (sums, avgs), "sum": (sums,), "avg": (avgs,)}[selection]
    orders = [rank_desc(scores) for scores in rankings]
    top = set().union(*(set(o[:k]) for o in orders))
    bottom = set().union(*(set(o[m - k :]) for o in orders)) if k else set()
    both = top & bottom
    gone = both if overlap == "drop" else set()
    return UnionSelection(
        sorted(top - gone), sorted(bottom - gone), sorted(both), sorted(gone), k, m,
        requested_union_size(m, lam),
    )  # fmt: skip


def union_pairs(
    chosen: Sequence[int], rejected: Sequence[int], texts: Sequence[str]
) -> list[tuple[int, int]]:
    """Every chosen × rejected combination, skipping pairs with identical text."""
    return [(c, r) for c in chosen for r in rejected if texts[c] != texts[r]]


# ---------------------------------------------------------------------- self-judge

_JUDGE_RE = re.compile(r"response\s*([12])", re.IGNORECASE)


def judge_pick(score_1: float, score_2: float) -> int:
    """0 if the judge prefers response 1 (ties too), else 1."""
    return 0 if score_1 >= score_2 else 1


def parse_judge_output(text: str) -> int | None:
    """0/1 from a judge's free text ("response 1" / "Response 2."), None if it names neither
    or both."""
    found = {m.group(1) for m in _JUDGE_RE.finditer(text)}
    if len(found) != 1:
        return None
    return 0 if found == {"1"} else 1


# ---------------------------------------------------------------------- text filters

# The project's filter (`strict`, ours): stricter than the released code's in two places, a
# run of 6 commas (not 13) and emoji (which the released code strips before it checks).
_SCRIPTS = re.compile(
    "[\u3130-\u318f\uac00-\ud7af\u0400-\u04ff\u3040-\u309f\u30a0-\u30ff"
    "\U0001f300-\U0001f6ff\U0001f700-\U0001f77f]"
)
_WORD_REPEAT = re.compile(r"\b(\w+)\b(?:\s+\1\b){5,}")  # a word 6+ times in a row
_CHAR_REPEAT = re.compile(r"(\S)(?:\s*\1){10,}")  # a character 11+ times in a row


def is_degenerate(text: str, max_newlines: int = 5) -> bool:
    """The project's (`strict`) tree cleaning: drop a sentence in Korean/Cyrillic/Japanese
    script or with emoji, with a word or a character repeated in a long run, with runs of
    `&nbsp;` or of 6 commas, or with more than `max_newlines` line breaks."""
    return bool(
        _SCRIPTS.search(text)
        or _WORD_REPEAT.search(text)
        or _CHAR_REPEAT.search(text)
        or "&nbsp;&nbsp;" in text
        or ", , , , , ," in text
        or text.count("\n") > max_newlines
    )


# The released code's filter, restated from github.com/YiyangZhou/CSR inference_csr/utils.py:
# `extract_new_text` passes the new text through `clean_text` (delete every run of characters
# outside `_OFFICIAL_KEEP`), then `clean_tree` drops the child when any check below matches.
# `\"-(` inside the class is a range (" # $ % & '), as Python reads it; emoji are outside the
# class, so `clean_text` deletes them before the emoji check can see one.
_OFFICIAL_KEEP = re.compile(r"[^\w\s.,?!;:\'\"-()/\[\]{}+$€£*=/><==!%°^™©®♫♪π√]+")
_OFFICIAL_SPECIAL = re.compile(
    "[\u3130-\u318f\uac00-\ud7af]|[\U0001f600-\U0001f64f\U0001f300-\U0001f5ff"
    "\U0001f680-\U0001f6ff\U0001f700-\U0001f77f]|[\u0400-\u04ff]|[\u3040-\u309f\u30a0-\u30ff]"
    "|(&nbsp;){2,}"
)
_OFFICIAL_WORD_REPEAT = re.compile(r"(\b\w+\b)(?:\s+\1){5,}")
_OFFICIAL_CHAR_REPEAT = re.compile(r"(.)" + r"\s*\1" * 10)
_OFFICIAL_RUNS = ("ttttttttttt", "sssssssssss", ", , , , , , , , , , , , ,", "'" * 10)


def official_clean_text(text: str) -> str:
    """utils.py `clean_text`: the characters the released code keeps of a new sentence."""
    return _OFFICIAL_KEEP.sub("", text)


def is_degenerate_official(text: str, max_newlines: int = 5) -> bool:
    """utils.py `clean_tree`'s test of a new sentence, after `clean_text`: a Korean, Cyrillic
    or Japanese character (emoji are already deleted), two `&nbsp;` in a row, a word 6 times in
    a row, a character 11 times in a row (spaces between allowed), the literal runs of
    `_OFFICIAL_RUNS` (13 commas, 10 quotes), more than `max_newlines` line breaks."""
    text = official_clean_text(text)
    return bool(
        _OFFICIAL_SPECIAL.search(text)
        or _OFFICIAL_WORD_REPEAT.search(text)
        or _OFFICIAL_CHAR_REPEAT.search(text)
        or any(run in text for run in _OFFICIAL_RUNS)
        or text.count("\n") > max_newlines
    )
