"""CHAIR object-hallucination metrics (Rohrbach et al., 2018), pure Python, vocabulary-agnostic.

One implementation serves two vocabularies: COCO's 80 categories with the CHAIR authors' synonym
list (`client.eval.coco`) and the miniature world's coloured shapes (`world.chair`).

How a caption is read (the published `chair.py`, with its NLTK/pattern.en steps made
dependency-free):

1. lowercase and tokenize: words (hyphenated compounds stay one token, as in NLTK's
   ``word_tokenize``), a possessive or contraction ``'s`` apart, every other mark alone;
2. singularize: a token that is a plural form of a vocabulary word becomes that word (the
   original singularizes every token with pattern.en; only vocabulary words can matter);
3. phrases: consecutive tokens that form a listed phrase become one word (``hot dog``,
   ``baby bird`` → ``bird``), longest phrase first;
4. exclusions: a word is dropped when its context word is in the caption too (COCO: the
   ``seat`` of a ``toilet`` is not a chair);
5. every remaining token that is a synonym names its category — a *mention*.

``CHAIR_S`` = captions with a hallucinated mention / captions; ``CHAIR_I`` = hallucinated
mentions / mentions. Rohrbach's code counts every mention, repeats included
(``count_repeats=True``); the CSR paper's appendix counts an object once per caption
(``count_repeats=False``). Recall = ground-truth categories a caption mentions / ground-truth
categories, summed over captions; length = whitespace-separated words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

# Words (hyphenated compounds whole), "'s"-style suffixes, or any other single mark.
_TOKEN_RE = re.compile(r"\w+(?:-\w+)*|'\w+|[^\w\s]")

# Plurals that no suffix rule makes; everything else is regular or handled in `plural_forms`.
IRREGULAR_PLURALS: dict[str, tuple[str, ...]] = {
    "person": ("people", "persons"),
    "child": ("children",),
    "mouse": ("mice",),
    "goose": ("geese",),
    "ox": ("oxen",),
    "foot": ("feet",),
    "tooth": ("teeth",),
    "louse": ("lice",),
    "cactus": ("cacti", "cactuses"),
    "bus": ("buses", "busses"),
}
_F_TO_VES = {"calf", "half", "leaf", "loaf", "shelf", "wolf", "elf", "self", "thief", "scarf"}


def tokenize(text: str) -> list[str]:
    """Lowercased tokens of `text`: words, ``'s``-style suffixes and single punctuation marks."""
    return _TOKEN_RE.findall(text.lower())


def plural_forms(word: str) -> tuple[str, ...]:
    """Plural spellings of a singular English noun (all plausible ones: extra forms only ever
    match text that uses them)."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if word.endswith("man"):  # man, policeman, gentleman, woman
        return (word[:-3] + "men",)
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return (word + "es",)
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return (word[:-1] + "ies",)
    if word.endswith("fe"):
        return (word[:-2] + "ves", word + "s")
    if word.endswith("f") and word in _F_TO_VES:
        return (word[:-1] + "ves", word + "s")
    if word.endswith("o") and len(word) > 1 and word[-2] not in "aeiou":
        return (word + "s", word + "es")
    return (word + "s",)


@dataclass(frozen=True)
class Mention:
    """One object word found in a caption and the category it names."""

    word: str
    category: str


@dataclass(frozen=True)
class Vocabulary:
    """Object words → categories, with the phrase, plural and exclusion rules of a benchmark."""

    synonyms: Mapping[str, str]  # surface form (lowercase, singular) → category
    phrases: Mapping[tuple[str, ...], str] = field(default_factory=dict)  # tokens → word
    plurals: Mapping[str, str] = field(default_factory=dict)  # plural token → singular token
    exclusions: Mapping[str, str] = field(default_factory=dict)  # word → context that drops it

    @classmethod
    def build(
        cls,
        groups: Iterable[Sequence[str]],
        *,
        phrases: Mapping[str, str] | None = None,
        auto_phrases: bool = True,
        exclusions: Mapping[str, str] | None = None,
    ) -> Vocabulary:
        """A vocabulary from synonym groups (each: the category first, then its synonyms).

        `phrases` maps a multi-word phrase to the word it counts as (itself, or e.g.
        ``"baby bird" → "bird"``); with `auto_phrases` every multi-word synonym is a phrase too.
        Plurals are generated for every word of every synonym and phrase.
        """
        synonyms: dict[str, str] = {}
        for group in groups:
            for surface in group:
                synonyms.setdefault(surface, group[0])  # first group wins, as in a dict update
        rules = dict(phrases or {})
        if auto_phrases:
            rules.update({s: s for s in synonyms if " " in s and s not in rules})
        words = {w for text in [*synonyms, *rules, *rules.values()] for w in text.split()}
        plurals: dict[str, str] = {}
        for w in sorted(words):
            for p in plural_forms(w):
                if p not in words:  # a plural that is itself a vocabulary word stays itself
                    plurals.setdefault(p, w)
        return cls(
            synonyms=synonyms,
            phrases={tuple(k.split()): v for k, v in rules.items()},
            plurals=plurals,
            exclusions=dict(exclusions or {}),
        )

    @property
    def categories(self) -> frozenset[str]:
        """Every category of the vocabulary."""
        return frozenset(self.synonyms.values())

    def category(self, name: str) -> str | None:
        """The category a name (an annotation's category name, a synonym) belongs to."""
        return self.synonyms.get(name.lower())

    def words(self, caption: str) -> list[str]:
        """Steps 1-4 of the module docstring: the caption's words after singularizing, phrase
        merging and exclusions (object and non-object words alike)."""
        tokens = [self.plurals.get(t, t) for t in tokenize(caption)]
        longest = max((len(k) for k in self.phrases), default=1)
        merged: list[str] = []
        i = 0
        while i < len(tokens):
            for n in range(min(longest, len(tokens) - i), 1, -1):
                word = self.phrases.get(tuple(tokens[i : i + n]))
                if word is not None:
                    merged.append(word)
                    i += n
                    break
            else:
                merged.append(tokens[i])
                i += 1
        present = set(merged)
        return [w for w in merged if self.exclusions.get(w) not in present]

    def mentions(self, caption: str) -> list[Mention]:
        """Every object mention of the caption in order, repeats included."""
        return [Mention(w, self.synonyms[w]) for w in self.words(caption) if w in self.synonyms]


@dataclass(frozen=True)
class CaptionChair:
    """One caption's mentions against its image's ground-truth categories."""

    mentions: tuple[Mention, ...]
    truth: frozenset[str]
    n_words: int

    @property
    def mentioned(self) -> frozenset[str]:
        """Distinct categories mentioned."""
        return frozenset(m.category for m in self.mentions)

    @property
    def hallucinated(self) -> tuple[Mention, ...]:
        """Mentions of categories absent from the image, repeats included."""
        return tuple(m for m in self.mentions if m.category not in self.truth)

    @property
    def covered(self) -> frozenset[str]:
        """Ground-truth categories the caption mentions."""
        return self.mentioned & self.truth

    def counts(self, count_repeats: bool = True) -> tuple[int, int]:
        """(mentions, hallucinated mentions), each repeat counted or each category once."""
        if count_repeats:
            return len(self.mentions), len(self.hallucinated)
        return len(self.mentioned), len(self.mentioned - self.truth)


@dataclass(frozen=True)
class ChairScores:
    """CHAIR over a set of captions (rates in [0, 1]; a zero denominator gives 0)."""

    n_captions: int
    chair_s: float
    chair_i: float
    recall: float
    mean_length: float
    n_mentions: int
    n_hallucinated: int


class ObjectReader(Protocol):
    """What CHAIR needs of a vocabulary: `Vocabulary` (this module's reading) and
    `core.chair_rohrbach.RohrbachVocabulary` (the CHAIR script's) both provide it."""

    @property
    def categories(self) -> frozenset[str]: ...

    def category(self, name: str) -> str | None: ...

    def mentions(self, caption: str) -> list[Mention]: ...


def score_caption(vocab: ObjectReader, caption: str, truth: Iterable[str]) -> CaptionChair:
    """Compare one caption with the categories really in its image."""
    return CaptionChair(tuple(vocab.mentions(caption)), frozenset(truth), len(caption.split()))


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def aggregate(scores: Sequence[CaptionChair], *, count_repeats: bool = True) -> ChairScores:
    """CHAIR_S, CHAIR_I, recall and mean length of scored captions."""
    counts = [s.counts(count_repeats) for s in scores]
    n_mentions = sum(c[0] for c in counts)
    n_hallucinated = sum(c[1] for c in counts)
    return ChairScores(
        n_captions=len(scores),
        chair_s=_ratio(sum(1 for c in counts if c[1]), len(scores)),
        chair_i=_ratio(n_hallucinated, n_mentions),
        recall=_ratio(sum(len(s.covered) for s in scores), sum(len(s.truth) for s in scores)),
        mean_length=_ratio(sum(s.n_words for s in scores), len(scores)),
        n_mentions=n_mentions,
        n_hallucinated=n_hallucinated,
    )
