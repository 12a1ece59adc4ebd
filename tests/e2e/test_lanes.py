"""The demo's lanes (`selfreward demo --lanes N`): the scheduler with fake tasks, the process
runner with fake task modules (output, failures, stopping a lane's whole process group), and
the demo's results put together the same way whatever order the lanes finish in."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from selfreward_vlm.lanes import LaneFailed, ProcessLanes, Task, check_tasks, schedule, start_order

QUICK = [
    Task("base"),
    Task("csr"),
    Task("csr-lambda0"),
    Task("csr-lambda1"),
    Task("sbspo", ("csr",)),
]


class Recorder:
    """A fake `run`: sleeps per task, records start and end order and the peak concurrency."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def __call__(self, task: Task) -> str:
        with self.lock:
            self.events.append(("start", task.name))
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.seconds.get(task.name, 0.01))
        with self.lock:
            self.running -= 1
            self.events.append(("end", task.name))
        return f"result of {task.name}"

    def starts(self) -> list[str]:
        return [name for kind, name in self.events if kind == "start"]


def test_one_lane_runs_the_tasks_in_the_serial_order() -> None:
    run = Recorder({})
    results = schedule(QUICK, 1, run)
    assert run.starts() == [t.name for t in QUICK] and run.peak == 1
    assert list(results) == [t.name for t in QUICK]
    assert results["sbspo"] == "result of sbspo"


def test_two_lanes_respect_dependencies_and_start_the_critical_path_first() -> None:
    run = Recorder({"csr": 0.3, "base": 0.05, "csr-lambda0": 0.1, "csr-lambda1": 0.1})
    results = schedule(QUICK, 2, run)
    assert run.peak == 2
    assert run.starts()[:2] == ["csr", "base"]  # sbspo waits for csr: csr goes first
    assert run.events.index(("end", "csr")) < run.events.index(("start", "sbspo"))
    # the results keep the tasks' order, not the order they finished in
    assert list(results) == [t.name for t in QUICK]
    assert start_order(QUICK, 1) == QUICK


def test_more_lanes_than_tasks_and_chains() -> None:
    chain = [Task("a"), Task("b", ("a",)), Task("c", ("b",)), Task("d")]
    run = Recorder({"a": 0.05, "b": 0.05})
    assert list(schedule(chain, 8, run)) == ["a", "b", "c", "d"]
    events = run.events
    assert events.index(("end", "a")) < events.index(("start", "b"))
    assert events.index(("end", "b")) < events.index(("start", "c"))
    assert run.peak == 2  # never more running than are ready


def test_bad_task_lists_are_refused_before_anything_runs() -> None:
    for tasks, match in (
        ([Task("a"), Task("a")], "repeat"),
        ([Task("a", ("z",))], "unknown"),
        ([Task("a", ("b",)), Task("b", ("a",))], "cycle"),
    ):
        with pytest.raises(ValueError, match=match):
            check_tasks(tasks)
        with pytest.raises(ValueError, match=match):
            schedule(tasks, 2, lambda t: pytest.fail("nothing may run"))
    with pytest.raises(ValueError, match="at least 1"):
        schedule([Task("a")], 0, lambda t: None)


def test_a_failure_stops_the_other_lanes_and_starts_nothing_more() -> None:
    stopped = threading.Event()

    def run(task: Task) -> str:
        if task.name == "csr":
            raise RuntimeError("csr broke")
        if task.name == "base":  # a long one, stopped by on_stop
            stopped.wait(5)
            return "interrupted"
        pytest.fail(f"{task.name} started after a failure")
        return ""

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="csr broke"):
        schedule(QUICK, 2, run, on_stop=stopped.set)
    assert stopped.is_set() and time.monotonic() - started < 4


FAKE_TASKS = """
import os, subprocess, sys, time

def ok(spec):
    print("hello", spec["x"])
    print("10%\\r50%\\r100%")
    print("to stderr", file=sys.stderr)
    return {"twice": spec["x"] * 2, "pid": os.getpid()}

def fail(spec):
    raise RuntimeError("boom")

def hang(spec):
    # a grandchild, as the demo's local service is
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with open(spec["pids"], "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited


@pytest.fixture
def lanes(tmp_path: Path) -> tuple[ProcessLanes, list[str]]:
    (tmp_path / "fake_lane_tasks.py").write_text(FAKE_TASKS)
    lines: list[str] = []
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    runner = ProcessLanes("fake_lane_tasks:ok", lambda t: tmp_path / "lanes", lines.append, env)
    return runner, lines


def test_a_lane_process_streams_prefixed_lines_and_returns_its_result(
    lanes: tuple[ProcessLanes, list[str]], tmp_path: Path
) -> None:
    runner, lines = lanes
    result = runner.run(Task("seed0/csr", (), {"x": 21}))
    assert result["twice"] == 42 and result["pid"] != os.getpid()
    assert "[seed0/csr] hello 21" in lines and "[seed0/csr] to stderr" in lines
    assert "[seed0/csr] 100%" in lines  # a progress bar's last state
    assert any(line.startswith("[seed0/csr] done in") for line in lines)
    log = (tmp_path / "lanes" / "seed0-csr.lane.log").read_text()
    spec = json.loads((tmp_path / "lanes" / "seed0-csr.lane.json").read_text())
    assert "hello 21" in log and spec == {"x": 21}


def test_a_failed_lane_raises_with_its_log(
    lanes: tuple[ProcessLanes, list[str]], tmp_path: Path
) -> None:
    runner, lines = lanes
    runner.target = "fake_lane_tasks:fail"
    with pytest.raises(LaneFailed, match="exited with 1"):
        runner.run(Task("csr", (), {}))
    assert any("RuntimeError: boom" in line for line in lines)
    assert not (tmp_path / "lanes" / "csr.result.json").exists()


def test_stopping_the_lanes_leaves_no_process_behind(
    lanes: tuple[ProcessLanes, list[str]], tmp_path: Path
) -> None:
    """Ctrl-C (or a failed lane) stops every lane's process group: the child and what it
    started (the demo's service); nothing starts after."""
    runner, _ = lanes
    runner.target, runner.grace_s = "fake_lane_tasks:hang", 5.0
    pids = tmp_path / "pids"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runner.run(Task("csr", (), {"pids": str(pids)}))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while not (pids.exists() and pids.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child, grandchild = (int(x) for x in pids.read_text().split())
    assert _alive(child) and _alive(grandchild)
    runner.stop()
    thread.join(30)
    assert not thread.is_alive() and isinstance(errors[0], LaneFailed)
    time.sleep(0.2)
    assert not _alive(child) and not _alive(grandchild)
    with pytest.raises(LaneFailed, match="stopping"):
        runner.run(Task("later", (), {}))


def test_a_lane_stops_on_sigint_even_when_started_with_sigint_ignored(
    lanes: tuple[ProcessLanes, list[str]], tmp_path: Path
) -> None:
    """A demo started in the background by a script ignores SIGINT, and so would its lanes:
    they still unwind on the runner's SIGINT (exit 130), not wait for the SIGKILL."""
    runner, _ = lanes
    runner.target, runner.grace_s = "fake_lane_tasks:hang", 20.0
    pids = tmp_path / "pids"
    errors: list[BaseException] = []
    thread = threading.Thread(
        target=lambda: _record(errors, runner.run, Task("csr", (), {"pids": str(pids)}))
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child inherits SIG_IGN
    try:
        thread.start()
        deadline = time.monotonic() + 60
        while not (pids.exists() and pids.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, previous)
    started = time.monotonic()
    runner.stop()
    thread.join(30)
    assert isinstance(errors[0], LaneFailed) and "exited with 130" in str(errors[0])
    assert time.monotonic() - started < 15  # unwound, not killed after the grace period


def _record(errors: list[BaseException], fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except BaseException as exc:
        errors.append(exc)


def _fake_world(tmp_path: Path, name: str = "world") -> Path:
    world = tmp_path / name
    world.mkdir(parents=True)
    lines = [json.dumps({"id": f"p{i}", "image": f"p{i}.png", "prompt": "?"}) for i in range(9)]
    (world / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    (world / "eval_truth.json").write_text("{}")
    return world


def _fake_run(seconds: dict[str, float]) -> Any:
    """A stand-in for `demo.run_task`: fake rows computed from the spec only."""
    from selfreward_vlm.demo import _label

    def run(task: Task) -> dict[str, Any]:
        time.sleep(seconds.get(task.name, 0.0))
        spec = task.spec
        if spec["kind"] == "base":
            return {"eval": {"base (SFT)": {"chair_s": [0.5]}}, "lengths": {}, "runs": {}}
        labels = [_label(spec["run"], t) for t in range(1, spec["iterations"] + 1)]
        score = len(spec["run"]) / 100 + (0.01 if spec["init_adapter"] else 0)
        return {
            "eval": {label: {"chair_s": [score], "example": spec["method"]} for label in labels},
            "lengths": {label: {"pairs": float(len(labels))} for label in labels},
            "runs": {spec["run"]: [{"iteration": t} for t in range(1, len(labels) + 1)]},
        }

    return run


def test_the_demo_puts_the_lanes_results_together_in_the_serial_order(tmp_path: Path) -> None:
    """lanes = 2, whose tasks finish in another order, gives the same per-seed results as
    lanes = 1, key order included (report.json is written from them)."""
    from selfreward_vlm.demo import DemoConfig, fingerprint, seed_result, seed_tasks

    world = _fake_world(tmp_path)
    outs = []
    for lanes, seconds in ((1, {}), (2, {"base": 0.3, "csr": 0.1})):
        config = DemoConfig.make(True, [0], tmp_path / f"work{lanes}", world=str(world))
        got_world, tasks = seed_tasks(config, 0)
        assert got_world == world.resolve()
        assert [t.name for t in tasks] == ["base", "csr", "csr-lambda0", "csr-lambda1", "sbspo"]
        sbspo = tasks[-1]
        assert sbspo.after == ("csr",)
        assert sbspo.spec["init_adapter"].endswith("csr/iter1/train/adapter")
        results = schedule(tasks, lanes, _fake_run(seconds))
        out = seed_result(config, 0, got_world, results)
        out["world"] = "w"
        outs.append(out)
    assert json.dumps(outs[0]) == json.dumps(outs[1])
    assert fingerprint([outs[0]]) == fingerprint([outs[1]])
    assert list(outs[0]["eval"]) == ["base (SFT)", "csr iter1", "csr λ=0", "csr λ=1", "sbspo"]


def test_several_seeds_share_the_lanes(tmp_path: Path) -> None:
    from selfreward_vlm.demo import DemoConfig, seed_tasks

    for seed in (0, 1):
        _fake_world(tmp_path, f"w{seed}")
    config = DemoConfig.make(True, [0, 1], tmp_path / "work", world=str(tmp_path / "w{seed}"))
    tasks = [t for seed in (0, 1) for t in seed_tasks(config, seed)[1]]
    names = [t.name for t in tasks]
    assert names[:2] == ["seed0/base", "seed0/csr"] and "seed1/sbspo" in names
    assert dict((t.name, t.after) for t in tasks)["seed1/sbspo"] == ("seed1/csr",)
    assert tasks[-1].spec["work"].endswith("seed1")
    check_tasks(tasks)


def test_a_seeds_world_is_a_lane_task_its_other_tasks_wait_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without `--world` each seed's world is built by a task of its own: with two lanes seed 1's
    world builds while seed 0's runs go on (before, every world was built first, one core)."""
    import selfreward_vlm.demo as demo
    import selfreward_vlm.world.build as build
    from selfreward_vlm.demo import DemoConfig, run_task, seed_tasks

    monkeypatch.setattr(demo, "_reproducible", dict)  # it pins this process's torch threads

    built: list[tuple[Path, int, bool, float]] = []

    def fake_build(root: Path, seed: int, quick: bool, disfluency: float) -> None:
        built.append((Path(root), seed, quick, disfluency))
        root.mkdir(parents=True)
        (root / "prompts.jsonl").write_text("".join(f'{{"id": "p{i}"}}\n' for i in range(9)))

    monkeypatch.setattr(build, "build_world", fake_build)
    config = DemoConfig.make(True, [0, 1], tmp_path / "work", full=False)
    tasks = [t for seed in (0, 1) for t in seed_tasks(config, seed)[1]]
    check_tasks(tasks)
    assert not built  # nothing is built while the tasks are listed
    after = {t.name: t.after for t in tasks}
    assert after["seed0/world"] == () and after["seed1/world"] == ()
    assert after["seed1/base"] == ("seed1/world",)
    assert after["seed1/sbspo"] == ("seed1/world", "seed1/csr")
    assert all(t.name.endswith("/world") or t.after[0].endswith("/world") for t in tasks)
    # the two worlds start first, side by side
    assert [t.name for t in start_order(tasks, 2)][:2] == ["seed0/world", "seed1/world"]
    # the world task builds the world and writes the run's prompt files from it
    world = next(t for t in tasks if t.name == "seed1/world")
    assert run_task(world.spec) == {"eval": {}, "lengths": {}, "runs": {}}
    root = Path(world.spec["world"])
    assert built == [(root, 1, True, 0.0)] and root.name == "world-seed1-quick"
    work = Path(world.spec["work"])
    assert len((work / "prompts.jsonl").read_text().splitlines()) == 9  # quick: 300, all 9 here
