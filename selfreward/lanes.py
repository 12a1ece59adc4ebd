"""Run independent tasks in parallel lanes: one process per task, at most N at a time.

`schedule` is the scheduler alone (in-process, testable with fakes): it starts a task once every
task it depends on has finished, keeps at most `lanes` running, and stops at the first failure.
`ProcessLanes` runs each task as `python -m selfreward_vlm.lanes MODULE:FUNCTION SPEC RESULT`
in its own session (process group), so that stopping a lane reaches every process it started
(the demo's local scoring service included); its output is streamed line by line with the
task's name in front and kept in a log file.

The demo (`selfreward demo --lanes N`) uses it so that a second core trains and evaluates one
run while the first works on another; each run has its own process and service, so its numbers
never depend on what runs beside it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


@dataclass(frozen=True)
class Task:
    """One unit of work: a unique name and the names of the tasks it waits for."""

    name: str
    after: tuple[str, ...] = ()
    spec: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class LaneFailed(RuntimeError):
    """A task failed; the other lanes were stopped."""


def _dependents(tasks: Sequence[Task]) -> dict[str, int]:
    """How many tasks wait, directly or not, for each task."""
    children: dict[str, set[str]] = {t.name: set() for t in tasks}
    for t in tasks:
        for dep in t.after:
            children[dep].add(t.name)

    def below(name: str, seen: set[str]) -> set[str]:
        for child in children[name] - seen:
            seen.add(child)
            below(child, seen)
        return seen

    return {name: len(below(name, set())) for name in children}


def check_tasks(tasks: Sequence[Task]) -> None:
    """Unique names, known dependencies, no cycle (a ValueError otherwise)."""
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names repeat: {names}")
    for t in tasks:
        unknown = set(t.after) - set(names)
        if unknown:
            raise ValueError(f"task {t.name!r} waits for unknown task(s) {sorted(unknown)}")
    done: set[str] = set()
    left = list(tasks)
    while left:
        ready = [t for t in left if set(t.after) <= done]
        if not ready:
            raise ValueError(f"tasks wait for each other in a cycle: {[t.name for t in left]}")
        done |= {t.name for t in ready}
        left = [t for t in left if t.name not in done]


def start_order(tasks: Sequence[Task], lanes: int) -> list[Task]:
    """The order in which ready tasks are picked: as given with one lane (the serial order);
    with several, tasks that others wait for first (the critical path), then as given."""
    if lanes <= 1:
        return list(tasks)
    weight = _dependents(tasks)
    index = {t.name: i for i, t in enumerate(tasks)}
    return sorted(tasks, key=lambda t: (-weight[t.name], index[t.name]))


def schedule(
    tasks: Sequence[Task],
    lanes: int,
    run: Callable[[Task], Any],
    on_stop: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run every task through `run` (called in a worker thread), at most `lanes` at once, each
    after the tasks it waits for; returns {name: result} in the tasks' order.

    At the first failure (or Ctrl-C) no other task starts, `on_stop` is called (it must make the
    running ones return, e.g. stop their processes) and the error is raised once every worker
    has returned."""
    check_tasks(tasks)
    if lanes < 1:
        raise ValueError("lanes must be at least 1")
    pending = start_order(tasks, lanes)
    results: dict[str, Any] = {}
    running: dict[Future[Any], Task] = {}
    pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="lane")
    try:
        while pending or running:
            for task in list(pending):
                if len(running) >= lanes:
                    break
                if set(task.after) <= set(results):
                    pending.remove(task)
                    running[pool.submit(run, task)] = task
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                results[task.name] = future.result()  # a failure raises here
    except BaseException:
        if on_stop is not None:
            on_stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return {t.name: results[t.name] for t in tasks}


class ProcessLanes:
    """Runs tasks as child processes (`run`, for `schedule`) and stops them all (`stop`)."""

    def __init__(
        self,
        target: str,
        folder: Callable[[Task], Path],
        say: Callable[[str], None] = print,
        env: dict[str, str] | None = None,
        grace_s: float = 30.0,
    ) -> None:
        self.target = target  # "module:function", called with the task's spec in the child
        self.folder = folder  # where a task's spec, result and log go
        self.say = say
        self.env = env
        self.grace_s = grace_s
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def run(self, task: Task) -> Any:
        folder = self.folder(task)
        folder.mkdir(parents=True, exist_ok=True)
        stem = task.name.replace("/", "-")
        spec_file, result_file = folder / f"{stem}.lane.json", folder / f"{stem}.result.json"
        log_file = folder / f"{stem}.lane.log"
        spec_file.write_text(json.dumps(task.spec, indent=1, default=str))
        result_file.unlink(missing_ok=True)  # only this run's result counts
        cmd = [sys.executable, "-m", "selfreward_vlm.lanes", self.target, str(spec_file),
               str(result_file)]  # fmt: skip
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        with self._lock:
            if self._stopping:
                raise LaneFailed(f"{task.name}: not started, the lanes are stopping")
            # its own session: a terminal's Ctrl-C reaches only the parent, which stops each
            # lane's whole process group (its service included) itself
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
            self._procs[task.name] = proc
        started = time.perf_counter()
        try:
            assert proc.stdout is not None
            with open(log_file, "ab") as log:
                self._stream(task.name, proc.stdout, log)
            code = proc.wait()
        finally:
            with self._lock:
                self._procs.pop(task.name, None)
            if proc.stdin is not None:
                proc.stdin.close()
        if code != 0:
            raise LaneFailed(f"{task.name} exited with {code} (its log: {log_file})")
        self.say(f"[{task.name}] done in {time.perf_counter() - started:.0f} s")
        return json.loads(result_file.read_text())

    def _stream(self, name: str, stream: IO[bytes], log: IO[bytes]) -> None:
        """Each line prefixed with the task's name; a progress bar's carriage-return updates
        show only their last state."""
        for raw in iter(stream.readline, b""):
            log.write(raw)
            log.flush()
            text = raw.decode(errors="replace").rstrip("\n").rstrip("\r")
            text = text.rsplit("\r", 1)[-1]
            self.say(f"[{name}] {text}")

    def stop(self) -> None:
        """Stop every running lane: SIGINT to its process group (the child cleans up: its
        service stops), SIGKILL to what is left after `grace_s`."""
        with self._lock:
            self._stopping = True
            procs = list(self._procs.values())
        for proc in procs:
            _signal_group(proc, signal.SIGINT)
        deadline = time.monotonic() + self.grace_s
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:  # the group: a service the child did not stop goes too
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # start_new_session: the group's id is the child's pid


def _watch_parent() -> None:
    """Interrupt this process when the parent's end of stdin closes (the parent died)."""

    fd = sys.stdin.fileno()

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):  # the raw fd: no buffer lock held at interpreter exit
                pass
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so that `finally` blocks run (the local service stops)."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within it, SIGINT and SIGTERM raise KeyboardInterrupt in this (main) thread, so that
    `finally` blocks run: the lanes stop, a lane's local service stops; the handlers before it
    come back after. A process started in the background by a script (`cmd &`) begins with
    SIGINT ignored, and its children inherit that: the runner's SIGINT would do nothing, and a
    stop would wait out the grace period and SIGKILL, leaving the lane's service behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        for sig, handler in zip((signal.SIGINT, signal.SIGTERM), before, strict=True):
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set in C


def _child(argv: list[str]) -> int:
    target, spec_file, result_file = argv
    module, function = target.split(":")
    with interruptible():
        _watch_parent()
        spec = json.loads(Path(spec_file).read_text())
        result = getattr(importlib.import_module(module), function)(spec)
    tmp = Path(result_file + ".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, result_file)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_child(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
