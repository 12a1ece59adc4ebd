"""CHAIR on COCO against the service (CSR's setting) and the shared scoring of Object HalBench.

`run_chair` samples images of an `instances_*.json` (500 random val2014 images in the CSR
paper), asks the model for a greedy description of each ("Please describe this image in
detail."), and scores every answer with `core.chair` and COCO's vocabulary. Outputs in OUT:
`captions.jsonl` (the journal: one line per image with its caption, the object words found,
the hallucinated ones and the ground truth), `run.json` (settings) and `summary.json`.

CHAIR_I counts every mention, repeats included, as Rohrbach et al.'s code does.
`metric_compat="rohrbach"` reads captions (and the reference captions' objects) exactly as their
script does, quirks included (`client.eval.coco`, `core.chair_rohrbach`); the summary's
`settings.metric_compat` says which reading a run used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from selfreward_vlm.client.eval import coco
from selfreward_vlm.client.eval.runner import EvalItem, RunStats, run_items, write_summary
from selfreward_vlm.client.journal import EvalJournal
from selfreward_vlm.core import chair as metric

CHAIR_PROMPT = "Please describe this image in detail."
JOURNAL = "captions"


def caption_fields(
    vocab: metric.ObjectReader, caption: str, truth: frozenset[str]
) -> dict[str, Any]:
    """One image's CHAIR fields: mentions and hallucinated words as [word, category] pairs."""
    s = metric.score_caption(vocab, caption, truth)
    n, h = s.counts()
    return {
        "mentions": [[m.word, m.category] for m in s.mentions],
        "hallucinated": [[m.word, m.category] for m in s.hallucinated],
        "gt_objects": sorted(truth),
        "chair_s": int(bool(h)),
        "chair_i": h / n if n else 0.0,
        "recall": len(s.covered) / len(truth) if truth else 0.0,
        "n_words": s.n_words,
    }


def chair_items(
    images: Sequence[coco.CocoImage], images_dir: Path, prompt: str | Callable[[int], str],
    group: str = "images",
) -> list[EvalItem]:  # fmt: skip
    """An item per image; `prompt` is a fixed text or a function of the image's position."""
    return [
        EvalItem(
            id=str(im.image_id),
            image=images_dir / im.file_name,
            prompt=prompt if isinstance(prompt, str) else prompt(k),
            group=group,
            fields={"image_id": im.image_id},
        )
        for k, im in enumerate(images)
    ]


def chair_summary(
    records: Sequence[dict[str, Any]], truth: dict[str, frozenset[str]],
    vocab: metric.ObjectReader = coco.VOCABULARY,
) -> dict[str, Any]:  # fmt: skip
    """Aggregate CHAIR of the answered records (rescored from their captions)."""
    ok = [r for r in records if r.get("status") == "ok" and r["id"] in truth]
    scores = [metric.score_caption(vocab, r["response"], truth[r["id"]]) for r in ok]
    agg = metric.aggregate(scores, count_repeats=True)
    return {
        "chair_s": agg.chair_s, "chair_i": agg.chair_i, "recall": agg.recall,
        "avg_length": agg.mean_length, "n_captions": agg.n_captions,
        "n_mentions": agg.n_mentions, "n_hallucinated": agg.n_hallucinated,
        "n_tokens_avg": sum(r["n_tokens"] for r in ok) / len(ok) if ok else 0.0,
        "hit_max_tokens": sum(1 for r in ok if r.get("stop_reason") == "length"),
    }  # fmt: skip


def run_caption_benchmark(
    benchmark: str, service: str | Sequence[str], images: Sequence[coco.CocoImage],
    images_dir: str | Path, out: str | Path, prompt: str | Callable[[int], str],
    settings: dict[str, Any], metric_compat: str = "default", **options: Any,
) -> dict[str, Any]:  # fmt: skip
    """Caption `images` through the service (resumable), score them with the reading of
    `metric_compat`, write `summary.json`."""
    vocab = coco.vocabulary(metric_compat)
    truth = {str(im.image_id): im.objects for im in images}
    items = chair_items(images, Path(images_dir), prompt, group=benchmark)
    # the reading is part of a run's settings (a resume may not mix two); the default is left
    # out so that run folders written before the option existed still resume
    compat = {} if metric_compat == "default" else {"metric_compat": metric_compat}
    journal = EvalJournal(out, JOURNAL, {"benchmark": benchmark, **settings, **compat})
    settings = {**settings, "metric_compat": metric_compat}

    def score(item: EvalItem, text: str) -> dict[str, Any]:
        return caption_fields(vocab, text, truth[item.id])

    stats = run_items(service, items, journal, score, **options)
    wanted = {i.id for i in items}
    records = [r for r in journal.records.values() if r["id"] in wanted]
    summary = {
        "benchmark": benchmark, "model": settings.get("model", "base"), "settings": settings,
        "metrics": chair_summary(records, truth, vocab), **_counts(stats, records),
        "outputs": {"per_image": str(journal.path), "summary": str(Path(out) / "summary.json")},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    write_summary(out, summary)
    return summary


def _counts(stats: RunStats, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "items": stats.total, "answered": sum(1 for r in records if r.get("status") == "ok"),
        "skipped": sum(1 for r in records if r.get("status") == "skipped"),
        "failed": len(stats.failed), "resumed": stats.resumed, "elapsed_s": stats.elapsed_s,
    }  # fmt: skip


def run_chair(
    service: str | Sequence[str], annotations: str | Path, images_dir: str | Path,
    out: str | Path, *, captions_annotations: str | Path | None = None,
    prompt: str = CHAIR_PROMPT, limit: int | None = 500, seed: int = 0, model: str = "base",
    max_new_tokens: int = 512, metric_compat: str = "default", **options: Any,
) -> dict[str, Any]:  # fmt: skip
    """CHAIR of `model` on `limit` random images of `annotations` (see the module docstring).
    `options`: concurrency, api_key, progress, console. Returns the summary."""
    vocab = coco.vocabulary(metric_compat)
    images = coco.sample_images(
        coco.load_coco(annotations, captions_annotations, vocab).values(), limit, seed
    )
    settings = {"model": model, "prompt": prompt, "seed": seed, "max_new_tokens": max_new_tokens,
                "annotations": Path(annotations).name,
                "captions_annotations": Path(captions_annotations).name
                if captions_annotations else None}  # fmt: skip
    return run_caption_benchmark(
        "chair", service, images, images_dir, out, prompt, settings, metric_compat,
        model=model, max_new_tokens=max_new_tokens, **options,
    )  # fmt: skip
