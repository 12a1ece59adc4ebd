"""POPE (Li et al., 2023) against the service: yes/no object questions, three splits.

Question files are POPE's own format (`coco_pope_{random,popular,adversarial}.json`): one JSON
object per line, `{"question_id", "image", "text", "label"}` with `label` "yes" or "no" (a JSON
array of such objects is read too). The split is the file name's `random`, `popular` or
`adversarial` (else its stem). Each question is asked with LLaVA-1.5's POPE suffix ("Answer the
question using a single word or phrase.", `--suffix ""` for none) and answered greedily.

Parsing an answer (`parse_answer`) — robust to full sentences:
- look at the first sentence (as LLaVA's `eval_pope.py` does), then the next ones while a
  sentence has no answer word;
- it starts with "yes" → yes, with "no" → no ("Yes, there is…", "No.");
- else a negation ("no", "not", "none", "nothing", any "…n't") in its first clause (up to a
  comma, semicolon, colon or "but") → no ("There is no…", "It does not…"); a later one
  contrasts rather than answers ("There is a dog, not a cat." is no "no");
- else "yes" in it → yes;
- else it is **unparsed** ("other"). LLaVA's script calls every such answer "yes"; here it is
  counted apart: it is never correct (accuracy counts it wrong, recall counts a "yes" question
  answered so as missed), and is neither a yes nor a no prediction (precision and the yes ratio
  leave it out of their numerators). `unparsed` reports how many there were.

`answer_rule="official"` (`--answer-rule official`) reads answers as POPE's own `evaluate.py`
(github.com/AoiDragon/POPE) does, for numbers comparable with published ones
(`parse_answer_official`): the text up to its first ".", commas removed, split on spaces; "No",
"not" or "no" among the words → no, anything else → yes (so it never leaves an answer unparsed,
and "NO" or "Nope." read as yes). The summary's `settings.answer_rule` says which rule a run
used.

Metrics per split, "yes" the positive class: accuracy = (TP+TN)/N, precision = TP/(TP+FP),
recall = TP/(questions labelled yes), F1, yes ratio = answers parsed as yes / N.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfreward_vlm.client.eval.runner import EvalItem, run_items, write_summary
from selfreward_vlm.client.journal import EvalJournal

POPE_SUFFIX = "\nAnswer the question using a single word or phrase."
SPLITS = ("random", "popular", "adversarial")
JOURNAL = "answers"
_SENTENCE_END = re.compile(r"[.!?\n]")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_NEGATIONS = {"no", "not", "none", "nothing"}
_CLAUSE_END = re.compile(r"[,;:]|\bbut\b")


def parse_answer(text: str) -> str:
    """'yes', 'no', or 'other' for an answer the rules of the module docstring cannot read."""
    low = text.lower().replace("’", "'")
    for sentence in _SENTENCE_END.split(low):
        words = _WORD.findall(sentence)
        if not words:
            continue
        if words[0] in ("yes", "no"):
            return words[0]
        clause = _WORD.findall(_CLAUSE_END.split(sentence, maxsplit=1)[0])
        if any(w in _NEGATIONS or w.endswith("n't") for w in clause):
            return "no"
        if "yes" in words:
            return "yes"
    return "other"


def parse_answer_official(text: str) -> str:
    """'yes' or 'no' as POPE's `evaluate.py` reads an answer, step for step: keep the text
    before the first "." (when there is one), delete commas, split on single spaces; 'no' when
    "No", "not" or "no" is one of the words (case as written), else 'yes'."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


ANSWER_RULES = {"robust": parse_answer, "official": parse_answer_official}


def split_name(path: str | Path) -> str:
    """`random`, `popular` or `adversarial` from a POPE file name; else the file's stem."""
    stem = Path(path).stem
    found = [s for s in SPLITS if s in stem.lower()]
    return found[0] if len(found) == 1 else stem


def load_questions(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """A POPE question file; a malformed entry is an error naming its line."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    entries = json.loads(stripped) if stripped.startswith("[") else None
    rows = entries if entries is not None else [line for line in text.splitlines() if line.strip()]
    out: list[dict[str, Any]] = []
    for n, row in enumerate(rows, 1):
        try:
            q = row if isinstance(row, dict) else json.loads(row)
            label = str(q["label"]).strip().lower()
            if label not in ("yes", "no"):
                raise ValueError(f"label must be yes or no, not {q['label']!r}")
            out.append({"question_id": q["question_id"], "image": str(q["image"]),
                        "text": str(q["text"]), "label": label})  # fmt: skip
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{n}: need question_id, image, text, label ({exc})") from exc
        if limit is not None and len(out) >= limit:
            break
    return out


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def pope_metrics(pairs: Sequence[tuple[str, str]]) -> dict[str, float | int]:
    """Metrics of (label, parsed answer) pairs; see the module docstring."""
    n = len(pairs)
    tp = sum(1 for lab, ans in pairs if lab == "yes" and ans == "yes")
    fp = sum(1 for lab, ans in pairs if lab == "no" and ans == "yes")
    tn = sum(1 for lab, ans in pairs if lab == "no" and ans == "no")
    fn = sum(1 for lab, ans in pairs if lab == "yes" and ans == "no")
    positives = sum(1 for lab, _ in pairs if lab == "yes")
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, positives)
    return {
        "n": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "unparsed": sum(1 for _, ans in pairs if ans == "other"),
        "accuracy": _ratio(tp + tn, n), "precision": precision, "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": _ratio(tp + fp, n),
    }  # fmt: skip


def pope_items(
    files: Sequence[str | Path], images_dir: Path, suffix: str, limit: int | None
) -> list[EvalItem]:
    """An item per question of each split file (id `split/question_id`)."""
    items, seen = [], set()
    for path in files:
        split = split_name(path)
        if split in seen:
            raise ValueError(f"two question files for split {split!r}")
        seen.add(split)
        for q in load_questions(path, limit):
            prompt = q["text"] if q["text"].endswith(suffix) else q["text"] + suffix
            items.append(EvalItem(
                id=f"{split}/{q['question_id']}", image=images_dir / q["image"], prompt=prompt,
                group=split, fields={"split": split, "question_id": q["question_id"],
                                     "question": q["text"], "label": q["label"]},
            ))  # fmt: skip
    return items


def pope_summary(records: Sequence[dict[str, Any]], splits: Sequence[str]) -> dict[str, Any]:
    """Metrics per split, and their mean over the splits (POPE's usual single figures)."""
    per = {}
    for split in splits:
        rows = [r for r in records if r.get("split") == split and r.get("status") == "ok"]
        per[split] = pope_metrics([(r["label"], r["answer"]) for r in rows])
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    mean = {k: _ratio(sum(float(m[k]) for m in per.values()), len(per)) for k in keys}
    return {"splits": per, "mean": mean}


def run_pope(
    service: str | Sequence[str], questions: Sequence[str | Path], images_dir: str | Path,
    out: str | Path, *, suffix: str = POPE_SUFFIX, limit: int | None = None, model: str = "base",
    max_new_tokens: int = 16, answer_rule: str = "robust", **options: Any,
) -> dict[str, Any]:  # fmt: skip
    """POPE of `model` on every question file (`limit` questions each), answers read by
    `answer_rule` (`robust` or `official`); writes `answers.jsonl`, `run.json` and
    `summary.json` in OUT. Returns the summary."""
    if answer_rule not in ANSWER_RULES:
        raise ValueError(f"answer_rule must be one of {list(ANSWER_RULES)}, not {answer_rule!r}")
    parse = ANSWER_RULES[answer_rule]
    items = pope_items(questions, Path(images_dir), suffix, limit)
    splits = list(dict.fromkeys(i.group for i in items))
    settings = {"model": model, "suffix": suffix, "max_new_tokens": max_new_tokens}
    # the rule is part of a run's settings (a resume may not mix two); the default is left out
    # so that run folders written before the option existed still resume
    rule = {} if answer_rule == "robust" else {"answer_rule": answer_rule}
    journal = EvalJournal(out, JOURNAL, {"benchmark": "pope", **settings, **rule})
    settings["answer_rule"] = answer_rule

    def score(item: EvalItem, text: str) -> dict[str, Any]:
        answer = parse(text)
        return {"answer": answer, "correct": answer == item.fields["label"]}

    stats = run_items(service, items, journal, score, model=model,
                      max_new_tokens=max_new_tokens, **options)  # fmt: skip
    wanted = {i.id for i in items}
    records = [r for r in journal.records.values() if r["id"] in wanted]
    summary = {
        "benchmark": "pope", "model": model, "settings": {**settings, "splits": splits},
        "metrics": pope_summary(records, splits), "items": stats.total,
        "answered": sum(1 for r in records if r.get("status") == "ok"),
        "skipped": sum(1 for r in records if r.get("status") == "skipped"),
        "failed": len(stats.failed), "resumed": stats.resumed, "elapsed_s": stats.elapsed_s,
        "outputs": {"answers": str(journal.path), "summary": str(Path(out) / "summary.json")},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    write_summary(out, summary)
    return summary
