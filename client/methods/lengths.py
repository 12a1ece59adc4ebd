"""How the lengths of chosen and rejected responses compare (SBSPO Table 2 compares them too).

A pair-selection rule can prefer length rather than content: CSR's paper mode (sum of
non-negative sentence rewards) always chooses the longest finished path, SBSPO's sum reward
favours short responses and its average reward long ones. `length_stats` measures it on any
list of pairs, so every run's report can say how its chosen and rejected lengths compare.
"""

from __future__ import annotations

from collections.abc import Sequence

from selfreward_vlm.core.schemas import PreferencePair


def _words(text: str) -> int:
    return len(text.split())


def _cut_off(score_extra: dict[str, float]) -> float | None:
    """1 when the response did not end by EOS (cut by a step or token cap), None if unknown."""
    eos = score_extra.get("eos")
    return None if eos is None else 1.0 - float(eos)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def length_stats(pairs: Sequence[PreferencePair]) -> dict[str, float | None]:
    """Mean words of chosen and rejected, the shares of pairs whose chosen is longer / shorter /
    as long as its rejected, and the shares of chosen and rejected responses cut off (not ended
    by EOS; None where the method does not record it)."""
    chosen = [_words(p.chosen) for p in pairs]
    rejected = [_words(p.rejected) for p in pairs]
    diffs = [c - r for c, r in zip(chosen, rejected, strict=True)]
    cut_c = [v for p in pairs if (v := _cut_off(p.chosen_score.extra)) is not None]
    cut_r = [v for p in pairs if (v := _cut_off(p.rejected_score.extra)) is not None]
    n = len(pairs)
    return {
        "pairs": float(n),
        "chosen_words": _mean(chosen),
        "rejected_words": _mean(rejected),
        "chosen_longer": sum(d > 0 for d in diffs) / n if n else None,
        "chosen_shorter": sum(d < 0 for d in diffs) / n if n else None,
        "same_length": sum(d == 0 for d in diffs) / n if n else None,
        "chosen_cut_off": _mean(cut_c),
        "rejected_cut_off": _mean(cut_r),
    }
