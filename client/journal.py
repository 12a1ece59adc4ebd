"""Crash-safe, resumable output: the journals of `selfreward pairs` and `selfreward eval`.

Both follow one protocol. A unit of work (a prompt, an eval item) is committed by appending one
JSON line and fsyncing it, in one synchronous call, so no other unit's lines interleave. On
start, `recover()` keeps the complete JSON lines, one per unit, and rewrites the file (temp
file + fsync + os.replace) when it held anything else: a torn last line, a repeat. So a run
killed at any instant (Ctrl-C or kill -9, even mid-line) resumes with every unit exactly once
and no torn line. The run's settings are pinned beside the records: resuming into an output
made with other settings raises `OutputMismatchError`, never a silent mix.

`PairsJournal`: OUT (JSONL pairs) + OUT.done (JSONL). A prompt's pairs are appended to OUT and
fsynced, *then* its record to OUT.done; a prompt counts as done only through its OUT.done
record, and `recover()` keeps in OUT only the lines of done prompts, one per pair id. Every
record carries the run's `meta` (method, model, reference, iteration, a hash of the method's
config). Record statuses: `ok` (pairs written), `nopair` (the method found none), `skipped`
(bad input: a missing or undecodable image, or a deterministic 4xx from the service for this
prompt, with its reason). All three are final: a rerun does not retry them. Prompts that failed
on a transient error (timeout, 429/503 after retries, 504, other 5xx) get no record and are
retried by a rerun.

`EvalJournal`: `OUT/<name>.jsonl` (one record per item, the first kept on a repeat) and
`OUT/run.json` (the settings).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO, Any

from selfreward_vlm.core.schemas import PreferencePair


class OutputMismatchError(ValueError):
    """The output (a pairs file, an eval folder) holds a run made with other settings than
    this run's."""


def fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); harmless where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, lines: list[str]) -> None:
    """Replace `path` with `lines` (one per line) in one step: temp file, fsync, rename."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def append_durably(f: IO[str], text: str) -> None:
    """Append `text` (whole lines) to an open file and fsync it: the commit point."""
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def json_lines(path: Path) -> list[dict[str, Any]]:
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


def rewrite_if_changed(path: Path, lines: list[str], *, create: bool = False) -> None:
    """Atomically rewrite `path` as `lines` when it holds other lines (a torn tail, a repeat,
    a dropped record); `create`: also when it does not exist yet."""
    if (
        (create and not path.exists())
        or _count_lines(path) != len(lines)
        or not _ends_with_newline(path)
    ):
        atomic_write(path, lines)


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
        records = [r for r in json_lines(self.done_path) if isinstance(r.get("prompt_id"), str)]
        self._check_meta(records)
        self.done = {r["prompt_id"]: r for r in records}
        atomic_write(self.done_path, [json.dumps(r) for r in self.done.values()])
        kept, seen = [], set()
        for obj in json_lines(self.out):
            pid, key = obj.get("prompt_id"), obj.get("id")
            if pid in self.done and key not in seen:
                seen.add(key)
                kept.append(json.dumps(obj, ensure_ascii=False))
        rewrite_if_changed(self.out, kept)
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
            append_durably(self._pairs_f, "".join(p.model_dump_json() + "\n" for p in pairs))
        rec: dict[str, Any] = {"prompt_id": prompt_id, "status": status, "pairs": len(pairs)}
        if reason:
            rec["reason"] = reason
        if self.meta:
            rec["meta"] = self.meta
        append_durably(self._done_f, json.dumps(rec) + "\n")
        self.done[prompt_id] = rec

    def close(self) -> None:
        for f in (self._pairs_f, self._done_f):
            if f is not None:
                f.close()
        self._pairs_f = self._done_f = None

    def pairs(self) -> list[dict[str, Any]]:
        """The pairs of done prompts now in OUT, as dicts."""
        return [o for o in json_lines(self.out) if o.get("prompt_id") in self.done]


class EvalJournal:
    """`OUT/<name>.jsonl` (one record per item) and `OUT/run.json` (the settings)."""

    def __init__(self, out: str | Path, name: str, settings: dict[str, Any]) -> None:
        self.dir = Path(out)
        self.path = self.dir / f"{name}.jsonl"
        self.settings = settings
        self.records: dict[str, dict[str, Any]] = {}
        self._f: IO[str] | None = None

    def recover(self) -> dict[str, dict[str, Any]]:
        """Check the settings, keep each item's first complete record, drop torn lines."""
        self.dir.mkdir(parents=True, exist_ok=True)
        run_file = self.dir / "run.json"
        if run_file.exists():
            old = json.loads(run_file.read_text())
            if old != self.settings:
                raise OutputMismatchError(
                    f"{self.dir} holds a run with settings {old}; this run is {self.settings}: "
                    "use another --out folder (or delete that one)"
                )
        else:
            atomic_write(run_file, [json.dumps(self.settings, indent=1)])
        self.records = {}
        for rec in json_lines(self.path):
            if isinstance(rec.get("id"), str):
                self.records.setdefault(rec["id"], rec)
        lines = [json.dumps(r, ensure_ascii=False) for r in self.records.values()]
        rewrite_if_changed(self.path, lines, create=True)
        return self.records

    def append(self, record: dict[str, Any]) -> None:
        """Durably add one item's record (the commit point)."""
        if self._f is None:
            self._f = self.path.open("a", encoding="utf-8")
        append_durably(self._f, json.dumps(record, ensure_ascii=False) + "\n")
        self.records[record["id"]] = record

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
