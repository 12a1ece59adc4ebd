"""The resumable runner under every benchmark: greedy answers through the service, one journal.

Each item (an image and a prompt) gets one greedy `/v1/generate` call (stop at EOS, at most
`max_new_tokens`) with the chosen adapter (`base` = none); its record — the answer plus whatever
the benchmark scores on it — is appended to a JSONL journal and fsynced before the next one.
A line is the commit point, so after Ctrl-C or kill -9 a rerun keeps the complete lines (a torn
last line is dropped, a repeated id kept once) and does only the missing items: every item ends
up in the journal exactly once (`client.journal.EvalJournal`). `run.json` beside it pins the
settings: resuming with other settings is an error, not a silent mix. Images are uploaded once
each (by path, then by sha256).

Records: `status` "ok" (answered) or "skipped" (the image is missing or refused, or the
service refused the item's input: final, never retried). A refused run setting (the adapter,
`max_new_tokens`) stops the run. Items that hit a transient error (timeout, 5xx) get no
record: a rerun retries them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from selfreward_vlm.client._async import AsyncScoringClient
from selfreward_vlm.client.errors import (
    FATAL,
    APIStatusError,
    APITimeoutError,
    InvalidRequestError,
    PayloadTooLargeError,
)
from selfreward_vlm.client.journal import EvalJournal, atomic_write

RUN_FIELDS = {"model", "max_new_tokens"}  # a 422 on these is the run's settings, not an item's
Scorer = Callable[["EvalItem", str], dict[str, Any]]


@dataclass(frozen=True)
class EvalItem:
    """One question to the model: an image file, a prompt, and fields copied into its record."""

    id: str
    image: Path
    prompt: str
    group: str = ""  # a progress bar per group (POPE: the split)
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunStats:
    """What one `run_items` call did."""

    total: int = 0
    resumed: int = 0
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0


@dataclass
class _Run:
    client: AsyncScoringClient
    journal: EvalJournal
    score: Scorer
    model: str
    max_new_tokens: int
    stats: RunStats
    progress: Progress
    tasks: dict[str, TaskID]
    image_ids: dict[Path, str] = field(default_factory=dict)
    locks: dict[Path, asyncio.Lock] = field(default_factory=dict)


async def _image_id(run: _Run, path: Path) -> str | None:
    """The service's id of an image file, uploaded once; None when it cannot be used."""
    async with run.locks.setdefault(path, asyncio.Lock()):
        if path not in run.image_ids:
            if not path.is_file():
                return None
            try:
                run.image_ids[path] = await run.client.upload_image(path)
            except (InvalidRequestError, PayloadTooLargeError):
                return None
        return run.image_ids[path]


async def _one(run: _Run, item: EvalItem, sem: asyncio.Semaphore) -> None:
    async with sem:
        base = {"id": item.id, **item.fields, "image": str(item.image.name), "prompt": item.prompt}
        try:
            image_id = await _image_id(run, item.image)
            if image_id is None:
                return _skip(run, item, base, f"image missing or refused: {item.image}")
            out = await run.client.generate(
                item.prompt, image=image_id, model=run.model, strategy="greedy", n=1,
                stop="eos", max_new_tokens=run.max_new_tokens,
            )  # fmt: skip
        except FATAL:
            raise
        except InvalidRequestError as exc:
            if exc.field in RUN_FIELDS:  # every item would fail alike: stop
                raise
            return _skip(run, item, base, f"refused: {exc}")  # this item's input (final)
        except (APIStatusError, APITimeoutError) as exc:
            run.stats.failed[item.id] = str(exc)
            run.progress.console.print(
                f"[yellow]failed[/yellow] {item.id} (a rerun retries): {exc}"
            )
            return _advance(run, item)
        cand = out.candidates[0]
        text = cand.text.strip()
        record = {**base, "status": "ok", "response": text, "n_tokens": len(cand.token_ids),
                  "stop_reason": cand.stop_reason, **run.score(item, text)}  # fmt: skip
        run.journal.append(record)
        run.stats.done += 1
        _advance(run, item)


def _skip(run: _Run, item: EvalItem, base: dict[str, Any], reason: str) -> None:
    run.journal.append({**base, "status": "skipped", "reason": reason})
    run.stats.skipped += 1
    _advance(run, item)


def _advance(run: _Run, item: EvalItem) -> None:
    run.progress.update(run.tasks[item.group], advance=1)


async def _drive(run: _Run, todo: Sequence[EvalItem], concurrency: int) -> None:
    """Items concurrently (at most `concurrency` requests); a fatal error cancels the rest."""
    sem = asyncio.Semaphore(max(1, concurrency))
    tasks = [asyncio.ensure_future(_one(run, item, sem)) for item in todo]
    try:
        await asyncio.gather(*tasks)  # raises the first fatal error
    finally:
        for t in tasks:
            t.cancel()  # no-op for finished ones
        if tasks:
            await asyncio.wait(tasks)


def _progress(items: Sequence[EvalItem], done: dict[str, Any], enabled: bool,
              console: Console) -> tuple[Progress, dict[str, TaskID]]:  # fmt: skip
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled,
    )  # fmt: skip
    tasks: dict[str, TaskID] = {}
    for group in dict.fromkeys(i.group for i in items):
        members = [i for i in items if i.group == group]
        resumed = sum(1 for i in members if i.id in done)
        tasks[group] = progress.add_task(group or "items", total=len(members), completed=resumed)
    return progress, tasks


async def arun_items(
    service: str | Sequence[str], items: Sequence[EvalItem], journal: EvalJournal, score: Scorer,
    *, model: str = "base", max_new_tokens: int = 512, concurrency: int = 4,
    api_key: str | None = None, progress: bool = True, console: Console | None = None,
) -> RunStats:  # fmt: skip
    """Answer every item not yet in the journal; see the module docstring."""
    done = journal.recover()
    todo = [i for i in items if i.id not in done]
    stats = RunStats(total=len(items), resumed=len(items) - len(todo))
    start = time.monotonic()
    urls = [service] if isinstance(service, str) else list(service)
    bar, tasks = _progress(items, done, progress, console or Console(stderr=True))
    client = AsyncScoringClient(urls, api_key=api_key)
    run = _Run(client, journal, score, model, max_new_tokens, stats, bar, tasks)
    try:
        with bar:
            await _drive(run, todo, concurrency)
    finally:
        journal.close()
        await client.close()
        stats.elapsed_s = time.monotonic() - start
    return stats


def run_items(
    service: str | Sequence[str],
    items: Sequence[EvalItem],
    journal: EvalJournal,
    score: Scorer,
    **options: Any,
) -> RunStats:
    """Blocking `arun_items` (options: model, max_new_tokens, concurrency, api_key, progress,
    console)."""
    return asyncio.run(arun_items(service, items, journal, score, **options))


def write_summary(out: str | Path, summary: dict[str, Any]) -> Path:
    """Write `OUT/summary.json` atomically; returns its path."""
    path = Path(out) / "summary.json"
    atomic_write(path, [json.dumps(summary, indent=1, ensure_ascii=False)])
    return path
