"""CHAIR hallucination metrics for the miniature world (pure Python, no torch).

Follows the CSR paper, appendix A.2 (after Rohrbach et al., 2018):

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

from selfreward_vlm.world.spec import COLOURS, COMPANIONS, SHAPES, WorldObject, parse_object

_COLOUR_ALT = "|".join(COLOURS)
_SHAPE_ALT = "|".join(SHAPES)
# An object phrase anywhere in free text; plurals ("crosses") still name the object.
_MENTION_RE = re.compile(rf"\b({_COLOUR_ALT})\s+({_SHAPE_ALT})(?:e?s)?\b", re.IGNORECASE)
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
    return [
        WorldObject(m.group(1).lower(), m.group(2).lower()) for m in _MENTION_RE.finditer(caption)
    ]


def is_malformed(caption: str) -> bool:
    """True if the caption is empty, contains a special token such as ``<image>``, or has a
    sentence that is not exactly ``"There is a {colour} {shape}."``."""
    sentences = split_sentences(caption)
    if not sentences or _SPECIAL_RE.search(caption):
        return True
    return any(_SENTENCE_RE.fullmatch(s) is None for s in sentences)


def _as_objects(truth: Iterable[ObjectLike]) -> frozenset[WorldObject]:
    return frozenset(o if isinstance(o, WorldObject) else parse_object(o) for o in truth)


def score_caption(caption: str, truth: Iterable[ObjectLike]) -> CaptionScore:
    """Compare one caption with the objects really in its image."""
    truth_set = _as_objects(truth)
    mentions = mentioned_objects(caption)
    mentioned = frozenset(mentions)
    hallucinated = mentioned - truth_set
    # A hallucination is a companion one if a trigger in the image or the caption explains it.
    triggers = truth_set | mentioned
    expected_companions = {COMPANIONS[t] for t in triggers if t in COMPANIONS}
    return CaptionScore(
        mentioned=mentioned,
        hallucinated=hallucinated,
        covered=mentioned & truth_set,
        n_truth=len(truth_set),
        n_words=len(caption.split()),
        malformed=is_malformed(caption),
        repeats=len(mentions) > len(mentioned),
        companion_hallucinations=len(hallucinated & expected_companions),
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
    n_mentioned = sum(len(s.mentioned) for s in scores)
    n_hallucinated = sum(len(s.hallucinated) for s in scores)
    return ChairMetrics(
        n_captions=n,
        chair_s=_ratio(sum(1 for s in scores if s.hallucinated), n),
        chair_i=_ratio(n_hallucinated, n_mentioned),
        recall=_ratio(sum(len(s.covered) for s in scores), sum(s.n_truth for s in scores)),
        mean_length=sum(s.n_words for s in scores) / n if n else 0.0,
        malformed_rate=_ratio(sum(1 for s in scores if s.malformed), n),
        n_mentioned=n_mentioned,
        n_hallucinated=n_hallucinated,
        companion_share=_ratio(sum(s.companion_hallucinations for s in scores), n_hallucinated),
        repeat_rate=_ratio(sum(1 for s in scores if s.repeats), n),
    )
