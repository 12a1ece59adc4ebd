"""`run_pairs`: build preference pairs for a prompts file with one method, concurrently and
resumably (see `client.journal`), optionally publishing them to the service's pair store.

Prompts file: JSONL `{"id", "image", "prompt"}`, `image` relative to the images folder (or null
for a text-only prompt). Output: JSONL, one `PreferencePair` per line.

One bad prompt never stops a long run. What happens to a prompt the service refuses:
- a deterministic 4xx (400, 409, 413, 422: this prompt's input cannot be served; asking again
  gets the same answer) is recorded as `skipped` with its reason, and the run goes on;
- a transient error (429, 503 after the client's own retries, 504, other 5xx, a timeout) is
  `failed`: not recorded, so a rerun retries it, and the command exits non-zero;
- a configuration error (no connection, 401/403, an unknown adapter: 404) stops the run.
A refused publish (`--publish`) sorts the same way.
The summary counts each kind (`skipped_kinds`, `failed_kinds`: `"422 invalid_request"` → n).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from selfreward_vlm.client._async import AsyncScoringClient
from selfreward_vlm.client.errors import (
    FATAL,
    APIStatusError,
    APITimeoutError,
    InvalidRequestError,
    PayloadTooLargeError,
    SelfRewardError,
)
from selfreward_vlm.client.journal import PairsJournal
from selfreward_vlm.client.methods import MethodSpec, PromptItem, RunContext, get_method
from selfreward_vlm.client.methods.base import config_params
from selfreward_vlm.client.progress import PairsProgress, summarize
from selfreward_vlm.core.schemas import PreferencePair

IMAGE_ERRORS = {"invalid_image", "image_too_large", "payload_too_large"}
# 4xx answers that say "this input cannot be served", whoever asks and however often.
DETERMINISTIC = frozenset({400, 409, 413, 422})


@dataclass(frozen=True)
class PromptRecord:
    """A line of the prompts file."""

    id: str
    prompt: str
    image: str | None


@dataclass
class PairsSummary:
    """What a `run_pairs` call did; the `mean_*` figures cover every pair now in OUT."""

    method: str
    out: str
    prompts_total: int = 0  # in the prompts file (after --limit)
    prompts_done: int = 0  # finished by this run: pairs, no pair, or skipped
    prompts_resumed: int = 0  # already done by an earlier run
    prompts_skipped: int = 0  # this run: bad image or input (recorded, not retried)
    prompts_no_pair: int = 0  # this run: the method found no pair
    prompts_failed: int = 0  # this run: transient errors (not recorded: a rerun retries)
    skipped_kinds: dict[str, int] = field(default_factory=dict)  # reason kind -> prompts
    failed_kinds: dict[str, int] = field(default_factory=dict)
    pairs_new: int = 0
    pairs_total: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    means: dict[str, float | None] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)  # methods' counters summed, this run
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def prompts_undone(self) -> int:
        """Prompts this run left for a rerun (transient failures)."""
        return self.prompts_failed


def error_kind(exc: SelfRewardError) -> str:
    """A short, countable name of an error: `422 invalid_request (max_new_tokens)`."""
    status = f"{exc.status} " if exc.status else ""
    where = f" ({exc.field})" if exc.field else ""
    return f"{status}{exc.type or type(exc).__name__}{where}"


def is_deterministic(exc: SelfRewardError) -> bool:
    """Whether asking again would get the same refusal (see the module docstring)."""
    return isinstance(exc, APIStatusError) and exc.status in DETERMINISTIC


class _Skip(Exception):
    """This prompt cannot be served (bad input); record it and go on."""

    def __init__(self, message: str, kind: str = "bad input") -> None:
        super().__init__(message)
        self.kind = kind


def load_prompts(path: str | Path, limit: int | None = None) -> list[PromptRecord]:
    """Read the prompts JSONL; a malformed line or a duplicate id is an error naming the line."""
    out: list[PromptRecord] = []
    seen: set[str] = set()
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            rec = PromptRecord(str(obj["id"]), str(obj["prompt"]), obj.get("image"))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: need a JSON object with id, prompt, image") from exc
        if rec.id in seen:
            raise ValueError(f"{path}:{n}: duplicate prompt id {rec.id!r}")
        seen.add(rec.id)
        out.append(rec)
        if limit is not None and len(out) >= limit:
            break
    return out


def config_digest(config: Any) -> str:
    """A short stable hash of a method config (a changed option must not resume old output)."""
    text = json.dumps(config_params(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_publish(target: str, service: Sequence[str]) -> tuple[list[str], str]:
    """(base URLs, dataset) from `URL/v1/datasets/NAME`, `URL/NAME`, or a bare NAME (the
    service's own store)."""
    if "://" not in target:
        return list(service), target.strip("/")
    url = httpx.URL(target)
    path = url.path.rstrip("/")
    m = re.fullmatch(r"(.*)/v1/datasets/([^/]+)(?:/pairs)?", path)
    base_path, name = (m.group(1), m.group(2)) if m else path.rsplit("/", 1)
    if not name:
        raise ValueError(f"--publish {target!r} names no dataset")
    return [str(url.copy_with(path=base_path or "/", query=None)).rstrip("/")], name


async def _image_id(client: AsyncScoringClient, images: Path, rec: PromptRecord) -> str | None:
    if rec.image is None:
        return None
    path = images / rec.image
    if not path.is_file():
        raise _Skip(f"image file not found: {path}", "image file not found")
    try:
        return await client.upload_image(path)
    except (InvalidRequestError, PayloadTooLargeError) as exc:
        if exc.type in IMAGE_ERRORS or exc.field in {"image", "body"}:
            raise _Skip(f"image {path} refused: {exc}", error_kind(exc)) from exc
        raise


@dataclass
class _Run:
    """Everything one run's prompt tasks share."""

    client: AsyncScoringClient
    spec: MethodSpec
    config: Any
    ctx: RunContext
    images: Path
    journal: PairsJournal
    summary: PairsSummary
    progress: PairsProgress
    publisher: tuple[AsyncScoringClient, str] | None = None


async def _one(run: _Run, rec: PromptRecord, sem: asyncio.Semaphore) -> None:
    """One prompt: image, method, publish, then the journal's commit."""
    s = run.summary
    async with sem:
        try:
            image_id = await _image_id(run.client, run.images, rec)
            if image_id is None and run.spec.needs_image:
                raise _Skip(f"{run.spec.name} needs an image", "needs an image")
            item = PromptItem(rec.id, rec.prompt, image_id)
            try:
                result = await run.spec.run(run.client, item, run.ctx, run.config)
            except APIStatusError as exc:
                if not is_deterministic(exc):
                    raise
                raise _Skip(f"the service refused this prompt: {exc}", error_kind(exc)) from exc
            if result.pairs and run.publisher is not None:
                await _publish(run, rec, result.pairs)  # inside the try: its errors sort too
        except _Skip as skip:
            run.journal.record(rec.id, [], "skipped", str(skip))
            s.prompts_done, s.prompts_skipped = s.prompts_done + 1, s.prompts_skipped + 1
            s.skipped[rec.id] = str(skip)
            s.skipped_kinds[skip.kind] = s.skipped_kinds.get(skip.kind, 0) + 1
            run.progress.warn(f"skipped {rec.id}: {skip}")
            return run.progress.advance(pairs=0, outcome="skipped")
        except FATAL:
            raise
        except (APIStatusError, APITimeoutError) as exc:
            if exc.status == 403:  # a key without the right: configuration, like 401
                raise
            kind = error_kind(exc)
            s.prompts_failed += 1
            s.failed[rec.id] = str(exc)
            s.failed_kinds[kind] = s.failed_kinds.get(kind, 0) + 1
            run.progress.warn(f"failed {rec.id} (transient; a rerun retries it): {exc}")
            return run.progress.advance(pairs=0, outcome="failed")
        for key, value in result.stats.items():
            s.stats[key] = s.stats.get(key, 0.0) + value
        status = "ok" if result.pairs else "nopair"
        run.journal.record(rec.id, result.pairs, status, result.skipped)
        s.prompts_done += 1
        s.prompts_no_pair += status == "nopair"
        s.pairs_new += len(result.pairs)
        run.progress.advance(pairs=len(result.pairs), outcome=status)


async def _publish(run: _Run, rec: PromptRecord, pairs: list[PreferencePair]) -> None:
    """Upsert a prompt's pairs (idempotent); a foreign store gets the image first, since a
    store accepts only pairs whose images it holds."""
    pub, dataset = run.publisher or (run.client, "")
    try:
        if pub is not run.client and rec.image is not None:
            await pub.upload_image(run.images / rec.image)
        await pub.upsert_pairs(dataset, pairs)
    except APIStatusError as exc:
        if not is_deterministic(exc):
            raise  # transient: `failed`, a rerun publishes again (upserts are idempotent)
        raise _Skip(f"the store refused this prompt's pairs: {exc}", error_kind(exc)) from exc


async def _token_limit(client: AsyncScoringClient) -> int | None:
    """The service's `max_text_tokens` (GET /info), so a search stops at the budget instead
    of asking for more; None when the service does not say (or /info is unreachable: the
    first real request then reports the problem)."""
    try:
        limit = (await client.info()).limits.get("max_text_tokens")
    except (SelfRewardError, ValueError):  # unreachable, or not this service's /info shape
        return None
    return int(limit) if limit else None


async def _drive(run: _Run, todo: list[PromptRecord], concurrency: int) -> None:
    """Run prompts concurrently; the first fatal error cancels the rest."""
    sem = asyncio.Semaphore(max(1, concurrency))
    tasks = [asyncio.create_task(_one(run, rec, sem)) for rec in todo]
    try:
        for fut in asyncio.as_completed(tasks):
            await fut
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def arun_pairs(
    service: str | Sequence[str], method: str, prompts: str | Path, images: str | Path,
    out: str | Path, *, config: Any = None, concurrency: int = 4, limit: int | None = None,
    publish: str | None = None, model: str = "base", reference: str = "base",
    iteration: int = 0, api_key: str | None = None, progress: bool = True,
    console: Console | None = None,
) -> PairsSummary:  # fmt: skip
    """The async body of `run_pairs` (use it from code that already runs an event loop)."""
    spec = get_method(method)
    config = config if config is not None else spec.config_cls()
    urls = [service] if isinstance(service, str) else list(service)
    records = load_prompts(prompts, limit)
    if not Path(images).is_dir():  # else every prompt would be recorded as skipped
        raise FileNotFoundError(f"images folder {images} does not exist")
    meta = {"method": method, "model": model, "reference": reference, "iteration": iteration,
            "config": config_digest(config)}  # fmt: skip
    journal = PairsJournal(out, meta)
    done = journal.recover()
    todo = [r for r in records if r.id not in done]
    summary = PairsSummary(method, str(out), prompts_total=len(records))
    summary.prompts_resumed = len(records) - len(todo)
    start = time.monotonic()
    client = AsyncScoringClient(urls, api_key=api_key)
    publisher = None
    if publish:
        pub_urls, dataset = parse_publish(publish, urls)
        pub = client if pub_urls == urls else AsyncScoringClient(pub_urls, api_key=api_key)
        publisher = (pub, dataset)
    bar = PairsProgress(len(records), summary.prompts_resumed, enabled=progress, console=console)
    ctx = RunContext(model, reference, iteration, await _token_limit(client) if todo else None)
    run = _Run(client, spec, config, ctx, Path(images), journal, summary, bar, publisher)
    journal.open()
    try:
        with bar:
            await _drive(run, todo, concurrency)
    finally:
        journal.close()
        await client.close()
        if publisher is not None and publisher[0] is not client:
            await publisher[0].close()
        summary.elapsed_s = time.monotonic() - start
    pairs = journal.pairs()
    summary.pairs_total, summary.means = len(pairs), summarize(pairs)
    return summary


def run_pairs(
    service: str | Sequence[str], method: str, prompts: str | Path, images: str | Path,
    out: str | Path, **options: Any,
) -> PairsSummary:  # fmt: skip
    """Build pairs for every prompt not yet in `out` with `method`; resumable (rerun the same
    call after any interruption). `options` are `arun_pairs`'s: config (the method's config
    dataclass; None = paper defaults), concurrency, limit, publish, model, reference,
    iteration, api_key, progress, console. Returns the run's `PairsSummary`."""
    return asyncio.run(arun_pairs(service, method, prompts, images, out, **options))
