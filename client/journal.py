"""Crash-safe, resumable output of `selfreward pairs`: OUT (JSONL pairs) + OUT.done (JSONL).

Protocol: a prompt's pairs are appended to OUT and fsynced, *then* its record is appended to
OUT.done and fsynced, in one synchronous call (no other prompt's lines interleave). A prompt
counts as done only through its OUT.done record. On start, `recover()` keeps the parseable
OUT.done records, and rewrites OUT (temp file + fsync + os.replace) keeping only complete JSON
lines of done prompts, one per pair id. So a run killed at any instant (Ctrl-C or kill -9, even
mid-line) resumes with every prompt's pairs exactly once and no torn line.

Every record carries the run's `meta` (method, model, reference, iteration, a hash of the
method's config): resuming into an OUT made with other settings is an error, not a silent mix.

Record statuses: `ok` (pairs written), `nopair` (the method found none), `skipped` (bad input:
a missing or undecodable image, or a deterministic 4xx from the service for this prompt, with
its reason). All three are final: a rerun does not retry them. Prompts that failed on a
transient error (timeout, 429/503 after retries, 504, other 5xx) get no record and are retried
by a rerun.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO, Any

from selfreward_vlm.core.schemas import PreferencePair


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); harmless where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of `path` that is a complete JSON object; torn or foreign lines are skipped."""
    if not path.exists():
        return []
    out = []
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                continue  # a torn tail: the writer died mid-line
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


class OutputMismatchError(ValueError):
    """OUT holds pairs made with other settings than this run's."""


class PairsJournal:
    """Appends pairs and done-records for one OUT path; see the module docstring."""

    def __init__(self, out: str | Path, meta: dict[str, Any] | None = None) -> None:
        self.out = Path(out)
        self.meta = meta or {}
        self.done_path = self.out.with_name(self.out.name + ".done")
        self.done: dict[str, dict[str, Any]] = {}
        self._pairs_f: IO[str] | None = None
        self._done_f: IO[str] | None = None

    def recover(self) -> dict[str, dict[str, Any]]:
        """Load done records and drop everything else from OUT; returns {prompt_id: record}."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        records = [r for r in _json_lines(self.done_path) if isinstance(r.get("prompt_id"), str)]
        self._check_meta(records)
        self.done = {r["prompt_id"]: r for r in records}
        _atomic_write(self.done_path, [json.dumps(r) for r in self.done.values()])
        raw_count = _count_lines(self.out)
        kept, seen = [], set()
        for obj in _json_lines(self.out):
            pid, key = obj.get("prompt_id"), obj.get("id")
            if pid in self.done and key not in seen:
                seen.add(key)
                kept.append(json.dumps(obj, ensure_ascii=False))
        if len(kept) != raw_count or not _ends_with_newline(self.out):
            _atomic_write(self.out, kept)
        return self.done

    def _check_meta(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            old = r.get("meta")
            if self.meta and old and old != self.meta:
                raise OutputMismatchError(
                    f"{self.out} was made with {old}, this run is {self.meta}: "
                    "use another output file (or remove it and its .done file)"
                )

    def open(self) -> None:
        """Open both files for appending (after `recover`)."""
        self._pairs_f = self.out.open("a", encoding="utf-8")
        self._done_f = self.done_path.open("a", encoding="utf-8")

    def record(
        self, prompt_id: str, pairs: list[PreferencePair], status: str, reason: str | None = None
    ) -> None:
        """Durably append a prompt's pairs, then its done record (the commit point)."""
        assert self._pairs_f is not None and self._done_f is not None, "call open() first"
        if pairs:
            self._pairs_f.write("".join(p.model_dump_json() + "\n" for p in pairs))
            self._pairs_f.flush()
            os.fsync(self._pairs_f.fileno())
        rec: dict[str, Any] = {"prompt_id": prompt_id, "status": status, "pairs": len(pairs)}
        if reason:
            rec["reason"] = reason
        if self.meta:
            rec["meta"] = self.meta
        self._done_f.write(json.dumps(rec) + "\n")
        self._done_f.flush()
        os.fsync(self._done_f.fileno())
        self.done[prompt_id] = rec

    def close(self) -> None:
        for f in (self._pairs_f, self._done_f):
            if f is not None:
                f.close()
        self._pairs_f = self._done_f = None

    def pairs(self) -> list[dict[str, Any]]:
        """The pairs of done prompts now in OUT, as dicts."""
        return [o for o in _json_lines(self.out) if o.get("prompt_id") in self.done]


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def _ends_with_newline(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return True
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
