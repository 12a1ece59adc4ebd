"""`--metric-compat rohrbach`: CHAIR as the CHAIR authors' `utils/chair.py` reads captions.

The reference here is a restatement of that script's steps (`CHAIR.__init__`,
`caption_to_words`, the counting loop of `compute_chair`), written as the script is, with
pattern.en's `singularize` taken from `core.chair_rohrbach` (pattern is not installable here;
its outputs on the words that matter are pinned by hand below, from pattern 3.6's rules).
"""

from __future__ import annotations

import pytest

from selfreward_vlm.client.eval import coco
from selfreward_vlm.core import chair as metric
from selfreward_vlm.core.chair_rohrbach import singularize


@pytest.mark.parametrize(("word", "singular"), [
    ("bus", "bu"), ("minibus", "minibu"), ("buses", "bus"),  # the script never counts "bus"
    ("canoes", "cano"), ("collies", "collies"), ("doggies", "doggies"),  # nor these
    ("glass", "glas"), ("glasses", "glass"), ("ties", "ty"),
    ("people", "person"), ("women", "woman"), ("children", "child"), ("knives", "knife"),
    ("mice", "mouse"), ("skis", "ski"), ("scissors", "scissors"), ("sheep", "sheep"),
    ("benches", "bench"), ("ponies", "pony"), ("wolves", "wolf"), ("dogs", "dog"),
    ("dogs'", "dog's"), ("mothers-in-law", "mother-in-law"),
])  # fmt: skip
def test_singularize_is_pattern_36(word: str, singular: str) -> None:
    assert singularize(word) == singular


def _script_tables() -> tuple[list[str], dict[str, str], dict[str, str]]:
    """CHAIR.__init__, as written."""
    synonyms = coco.SYNONYMS_TXT.splitlines(keepends=True)  # open(...).readlines()
    synonyms = [s.strip().split(", ") for s in synonyms]
    mscoco_objects: list[str] = []
    inverse_synonym_dict: dict[str, str] = {}
    for synonym in synonyms:
        mscoco_objects.extend(synonym)
        for s in synonym:
            inverse_synonym_dict[s] = synonym[0]
    coco_double_words = ["motor bike", "motor cycle", "air plane", "traffic light",
                         "street light", "traffic signal", "stop light", "fire hydrant",
                         "stop sign", "parking meter", "suit case", "sports ball", "baseball bat",
                         "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
                         "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie",
                         "laptop computer", "stove top oven", "hot dog", "teddy bear",
                         "home plate", "train track"]  # fmt: skip
    animal_words = ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
                    "giraffe", "animal", "cub"]  # fmt: skip
    vehicle_words = ["jet", "train"]
    double_word_dict = {}
    for double_word in coco_double_words:
        double_word_dict[double_word] = double_word
    for animal_word in animal_words:  # the script's own % formatting, kept
        double_word_dict["baby %s" % animal_word] = animal_word  # noqa: UP031
        double_word_dict["adult %s" % animal_word] = animal_word  # noqa: UP031
    for vehicle_word in vehicle_words:
        double_word_dict["passenger %s" % vehicle_word] = vehicle_word  # noqa: UP031
    double_word_dict["bow tie"] = "tie"
    double_word_dict["toilet seat"] = "toilet"
    double_word_dict["wine glas"] = "wine glass"
    return mscoco_objects, inverse_synonym_dict, double_word_dict


def _script_caption_to_words(caption: str) -> tuple[list[str], list[str]]:
    """caption_to_words, as written (NLTK's word_tokenize → the project's tokenizer)."""
    mscoco_objects, inverse_synonym_dict, double_word_dict = _script_tables()
    words = metric.tokenize(caption.lower())
    words = [singularize(w) for w in words]
    i = 0
    double_words = []
    while i < len(words):
        double_word = " ".join(words[i : i + 2])
        if double_word in double_word_dict:
            double_words.append(double_word_dict[double_word])
            i += 2
        else:
            double_words.append(words[i])
            i += 1
    words = double_words
    if ("toilet" in words) & ("seat" in words):
        words = [word for word in words if word != "seat"]
    words = [word for word in words if word in set(mscoco_objects)]
    node_words = [inverse_synonym_dict[word] for word in words]
    return words, node_words


def _script_chair(captions: list[tuple[str, set[str]]]) -> tuple[float, float]:
    """compute_chair's counting loop, as written."""
    num_caps = num_hallucinated_caps = hallucinated_word_count = coco_word_count = 0.0
    for cap, gt_objects in captions:
        words, node_words = _script_caption_to_words(cap)
        coco_word_count += len(node_words)
        hallucinated = False
        for _word, node_word in zip(words, node_words, strict=True):
            if node_word not in gt_objects:
                hallucinated_word_count += 1
                hallucinated = True
        num_caps += 1
        if hallucinated:
            num_hallucinated_caps += 1
    return num_hallucinated_caps / num_caps, hallucinated_word_count / coco_word_count


CAPTIONS = [
    ("A red bus and two buses wait near a minibus.", {"bus"}),
    ("A man rides a motor bike past a motorcycle.", {"person", "motorcycle"}),
    ("The kitchen has a stove top oven and a sink.", {"oven", "sink"}),
    ("Two collies and a doggie chase canoes on the lake.", {"dog"}),
    ("A toilet seat next to a chair and the toilet.", {"toilet"}),
    ("People hold wine glasses; a wine glass sits by the cheesecake.", {"person", "cake"}),
    ("A baby elephant and an adult giraffe near a passenger train.", {"elephant", "giraffe"}),
    ("Hot dogs, teddy bears and cell phones on a dining table.", {"hot dog", "dining table"}),
    ("A man in bow ties with a tie and a tennis racket.", {"person", "tennis racket"}),
    ("Three skis, a snowboard and some knives; no bus.", {"skis"}),
]


@pytest.mark.parametrize(("caption", "truth"), CAPTIONS)
def test_rohrbach_reading_matches_the_script(caption: str, truth: set[str]) -> None:
    words, node_words = _script_caption_to_words(caption)
    got = coco.ROHRBACH_VOCABULARY.mentions(caption)
    assert [(m.word, m.category) for m in got] == list(zip(words, node_words, strict=True))


def test_rohrbach_chair_matches_the_script_counts() -> None:
    vocab = coco.vocabulary("rohrbach")
    scores = [metric.score_caption(vocab, c, frozenset(t)) for c, t in CAPTIONS]
    agg = metric.aggregate(scores, count_repeats=True)
    assert (agg.chair_s, agg.chair_i) == pytest.approx(_script_chair(CAPTIONS))


def test_default_reading_differs_where_the_readme_says() -> None:
    """The quirks the default reading does not copy, caption by caption."""

    def cats(vocab: metric.ObjectReader, caption: str) -> list[str]:
        return [m.category for m in vocab.mentions(caption)]

    default, script = coco.vocabulary("default"), coco.vocabulary("rohrbach")
    bus = "A red bus and two buses wait near a minibus."
    assert cats(default, bus) == ["bus", "bus", "bus"] and cats(script, bus) == ["bus"]
    bike = "A man rides a motor bike."
    assert cats(default, bike) == ["person", "motorcycle"] and cats(script, bike) == ["person"]
    oven = "A stove top oven."
    assert cats(default, oven) == ["oven"] and cats(script, oven) == ["oven", "oven"]
    dogs = "Two collies chase canoes."
    assert cats(default, dogs) == ["dog", "boat"] and cats(script, dogs) == []
    with pytest.raises(ValueError, match="metric_compat"):
        coco.vocabulary("nltk")
