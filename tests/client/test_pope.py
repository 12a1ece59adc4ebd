"""POPE: question files, the yes/no parser and the metrics, against numbers counted by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfreward_vlm.client.eval.pope import (
    load_questions,
    parse_answer,
    pope_metrics,
    pope_summary,
    split_name,
)

# (label, the model's answer, how it must be read)
FIXTURE = [
    ("yes", "Yes, there is a dog in the image.", "yes"),  # TP
    ("yes", "No.", "no"),  # FN
    ("no", "There is no cup in the image.", "no"),  # TN
    ("no", "Yes", "yes"),  # FP
    ("yes", "There is a bicycle on the left.", "other"),  # neither word: unparsed, a miss
    ("no", "No, there isn't.", "no"),  # TN
    ("yes", "yes", "yes"),  # TP
    ("no", "The image shows a cat.", "other"),  # unparsed
]


def write_questions(path: Path, rows: list[tuple[str, str, str]], as_array: bool = False) -> Path:
    qs = [{"question_id": i + 1, "image": f"COCO_val2014_{i:012d}.jpg",
           "text": "Is there a dog in the image?", "label": lab}
          for i, (lab, _, _) in enumerate(rows)]  # fmt: skip
    text = json.dumps(qs) if as_array else "".join(json.dumps(q) + "\n" for q in qs)
    path.write_text(text)
    return path


@pytest.mark.parametrize(("label", "answer", "parsed"), FIXTURE)
def test_parser_reads_each_answer(label: str, answer: str, parsed: str) -> None:
    assert parse_answer(answer) == parsed


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("YES.", "yes"), ("no, it is a cat", "no"), ("There isn’t any dog.", "no"),
        ("Not really.", "no"), ("I see a dog. Yes.", "yes"), ("", "other"), ("  \n", "other"),
        ("Yes, but there is no dog", "yes"),  # the first word decides
        ("The answer is yes.", "yes"), ("Nothing like that.", "no"), ("Noodles.", "other"),
        # a negation answers in the first clause; after a comma or "but" it contrasts
        ("There is a dog, not a cat.", "other"), ("There is a dog but no cat.", "other"),
        ("The image does not show a dog.", "no"), ("I see a cat. There is no dog.", "no"),
        ("I see a cat; yes, a dog too.", "yes"),
    ],
)  # fmt: skip
def test_parser_edge_cases(answer: str, parsed: str) -> None:
    assert parse_answer(answer) == parsed


def test_metrics_by_hand(tmp_path: Path) -> None:
    questions = load_questions(write_questions(tmp_path / "coco_pope_random.json", FIXTURE))
    pairs = [
        (q["label"], parse_answer(ans)) for q, (_, ans, _) in zip(questions, FIXTURE, strict=True)
    ]
    m = pope_metrics(pairs)
    # TP 2 (1, 7), FP 1 (4), TN 2 (3, 6), FN 1 (2), unparsed 2 (5, 8); 4 questions say yes.
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["unparsed"], m["n"]) == (2, 1, 2, 1, 2, 8)
    assert m["accuracy"] == pytest.approx(4 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))  # = 4/7
    assert m["yes_ratio"] == pytest.approx(3 / 8)
    records = [{"split": "random", "status": "ok", "label": lab, "answer": parse_answer(ans)}
               for lab, ans, _ in FIXTURE]  # fmt: skip
    records += [{"split": "popular", "status": "ok", "label": "yes", "answer": "yes"}]
    summary = pope_summary(records, ["random", "popular"])
    assert summary["splits"]["popular"]["accuracy"] == 1.0
    assert summary["mean"]["accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert summary["mean"]["f1"] == pytest.approx((4 / 7 + 1.0) / 2)


def test_empty_split_has_zero_metrics() -> None:
    m = pope_metrics([])
    assert m["n"] == 0 and m["accuracy"] == 0.0 and m["f1"] == 0.0


def test_question_files(tmp_path: Path) -> None:
    lines = write_questions(tmp_path / "coco_pope_adversarial.json", FIXTURE)
    array = write_questions(tmp_path / "pope_popular.json", FIXTURE, as_array=True)
    assert load_questions(lines) == load_questions(array)
    assert len(load_questions(lines, limit=3)) == 3
    assert [split_name(p) for p in (lines, array, "x/mine.jsonl")] == [
        "adversarial", "popular", "mine"]  # fmt: skip
    bad = tmp_path / "bad.json"
    bad.write_text('{"question_id": 1, "image": "a.jpg", "text": "?", "label": "maybe"}\n')
    with pytest.raises(ValueError, match=r"bad.json:1: .*yes or no"):
        load_questions(bad)
    bad.write_text('{"question_id": 1, "image": "a.jpg"}\n')
    with pytest.raises(ValueError, match=r"bad.json:1: need question_id, image, text, label"):
        load_questions(bad)


def _evaluate_py(text: str) -> str:
    """POPE's evaluate.py loop body, as written."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    text = text.replace(",", "")
    words = text.split(" ")
    if "No" in words or "not" in words or "no" in words:
        return "no"
    return "yes"


@pytest.mark.parametrize(("answer", "parsed"), [
    ("Yes, there is a dog in the image.", "yes"),
    ("No.", "no"), ("No, there isn't.", "no"), ("no", "no"),
    ("There is no cup in the image.", "no"),
    ("There is a bicycle on the left.", "yes"),  # no answer word: yes (robust: unparsed)
    ("The image shows a cat.", "yes"),
    ("NO", "yes"), ("Nope.", "yes"),  # case as written: only "No", "no", "not"
    ("It is not.", "no"),
    ("Yes. There is no cat.", "yes"),  # only the first sentence counts
    ("There isn't a dog.", "yes"),  # "isn't" is not "not"
    ("No,there is nothing", "yes"),  # commas deleted, not split on: "Nothere"
])  # fmt: skip
def test_official_rule_is_popes_evaluate_py(answer: str, parsed: str) -> None:
    from selfreward_vlm.client.eval.pope import ANSWER_RULES, parse_answer_official

    assert parse_answer_official(answer) == parsed == _evaluate_py(answer)
    assert set(ANSWER_RULES) == {"robust", "official"}
