"""CHAIR hallucination metrics for the miniature world (pure Python, no torch).

The metric itself is the shared one of `core.chair` (also used for COCO); this module gives it
the world's vocabulary — 16 two-word objects such as ``"red circle"``, each its own category,
plurals (``"red crosses"``) included — and adds the world's own diagnostics. It follows the CSR
paper, appendix A.2 (after Rohrbach et al., 2018):

- ``CHAIR_I`` = hallucinated mentioned objects / all mentioned objects,
- ``CHAIR_S`` = captions with at least one hallucinated object / all captions,

where an object mentioned several times in one caption counts once for that caption. Beside
them: object recall, mean caption length in words, a malformed-caption rate (CHAIR does not
count fragments such as ``"There is a red"`` as hallucinations, so a model that collapses into
fragments would look good without it), the share of hallucinations that are companions of a
trigger (the world's language prior) and the share of captions that repeat an object.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from selfreward_vlm.core import chair as metric
from selfreward_vlm.world.spec import (
    ALL_OBJECTS,
    COLOURS,
    COMPANIONS,
    SHAPES,
    WorldObject,
    parse_object,
)

_COLOUR_ALT = "|".join(COLOURS)
_SHAPE_ALT = "|".join(SHAPES)
# Each object is its own category, named by its phrase; "red crosses" still names "red cross".
VOCABULARY = metric.Vocabulary.build([[o.name] for o in ALL_OBJECTS])
_SENTENCE_RE = re.compile(rf"There is a ({_COLOUR_ALT}) ({_SHAPE_ALT})\.")
_SPECIAL_RE = re.compile(r"<[^<>\s]*>")

ObjectLike = str | WorldObject


@dataclass(frozen=True)
class CaptionScore:
    """What one caption mentions, relative to its image's ground truth."""

    mentioned: frozenset[WorldObject]
    hallucinated: frozenset[WorldObject]
    covered: frozenset[WorldObject]
    n_truth: int
    n_words: int
    malformed: bool
    repeats: bool
    companion_hallucinations: int
    base: metric.CaptionChair  # the shared metric's view of the caption


@dataclass(frozen=True)
class ChairMetrics:
    """Aggregate metrics over a set of captions (rates in [0, 1])."""

    n_captions: int
    chair_s: float
    chair_i: float
    recall: float
    mean_length: float
    malformed_rate: float
    n_mentioned: int
    n_hallucinated: int
    companion_share: float
    repeat_rate: float

    def as_dict(self) -> dict[str, float | int]:
        """The metrics as a plain dict (for JSON)."""
        return asdict(self)

    def summary(self) -> str:
        """One human-readable line."""
        return (
            f"CHAIR_S {self.chair_s:.3f}  CHAIR_I {self.chair_i:.3f}  recall {self.recall:.3f}  "
            f"len {self.mean_length:.1f}  malformed {self.malformed_rate:.3f}  "
            f"companions {self.companion_share:.2f}  repeats {self.repeat_rate:.3f}  "
            f"(n={self.n_captions})"
        )


def split_sentences(caption: str) -> list[str]:
    """Split a caption after each ``"."``; a trailing fragment without ``"."`` is kept."""
    return [piece.strip() for piece in re.split(r"(?<=\.)", caption) if piece.strip()]


def mentioned_objects(caption: str) -> list[WorldObject]:
    """Every object phrase in the caption, in order, repeats included."""
    return [parse_object(m.category) for m in VOCABULARY.mentions(caption)]


def is_malformed(caption: str) -> bool:
    """True if the caption is empty, contains a special token such as ``<image>``, or has a
    sentence that is not exactly ``"There is a {colour} {shape}."``."""
    sentences = split_sentences(caption)
    if not sentences or _SPECIAL_RE.search(caption):
        return True
    return any(_SENTENCE_RE.fullmatch(s) is None for s in sentences)


def malformed_shares(pairs: Iterable[Any]) -> dict[str, float | None]:
    """The shares of a run's chosen and of its rejected responses that are malformed (pairs:
    anything with `.chosen` and `.rejected` texts): what the reward taught the model about
    form, beside what it taught it about objects."""
    marks = [(is_malformed(p.chosen), is_malformed(p.rejected)) for p in pairs]
    n = len(marks)
    return {
        "chosen_malformed": sum(c for c, _ in marks) / n if n else None,
        "rejected_malformed": sum(r for _, r in marks) / n if n else None,
    }


def _as_objects(truth: Iterable[ObjectLike]) -> frozenset[WorldObject]:
    return frozenset(o if isinstance(o, WorldObject) else parse_object(o) for o in truth)


def score_caption(caption: str, truth: Iterable[ObjectLike]) -> CaptionScore:
    """Compare one caption with the objects really in its image."""
    truth_set = _as_objects(truth)
    base = metric.score_caption(VOCABULARY, caption, {o.name for o in truth_set})
    mentioned = frozenset(parse_object(c) for c in base.mentioned)
    hallucinated = mentioned - truth_set
    # A hallucination is a companion one if a trigger in the image or the caption explains it.
    triggers = truth_set | mentioned
    expected_companions = {COMPANIONS[t] for t in triggers if t in COMPANIONS}
    return CaptionScore(
        mentioned=mentioned,
        hallucinated=hallucinated,
        covered=mentioned & truth_set,
        n_truth=len(truth_set),
        n_words=base.n_words,
        malformed=is_malformed(caption),
        repeats=len(base.mentions) > len(mentioned),
        companion_hallucinations=len(hallucinated & expected_companions),
        base=base,
    )


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def chair(captions: Sequence[str], truths: Sequence[Iterable[ObjectLike]]) -> ChairMetrics:
    """CHAIR_S, CHAIR_I, recall, mean length, malformed and companion rates.

    ``truths[i]`` lists the objects in the image of ``captions[i]`` (``"red circle"`` strings or
    :class:`WorldObject`). Ratios with a zero denominator are reported as 0.
    """
    if len(captions) != len(truths):
        raise ValueError(f"{len(captions)} captions but {len(truths)} ground truths")
    scores = [score_caption(c, t) for c, t in zip(captions, truths, strict=True)]
    n = len(scores)
    # An object said twice in one caption counts once (the CSR appendix's reading).
    shared = metric.aggregate([s.base for s in scores], count_repeats=False)
    return ChairMetrics(
        n_captions=n,
        chair_s=shared.chair_s,
        chair_i=shared.chair_i,
        recall=shared.recall,
        mean_length=shared.mean_length,
        malformed_rate=_ratio(sum(1 for s in scores if s.malformed), n),
        n_mentioned=shared.n_mentions,
        n_hallucinated=shared.n_hallucinated,
        companion_share=_ratio(
            sum(s.companion_hallucinations for s in scores), shared.n_hallucinated
        ),
        repeat_rate=_ratio(sum(1 for s in scores if s.repeats), n),
    )
