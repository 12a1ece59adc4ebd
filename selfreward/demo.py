"""`selfreward demo`: the whole loop on the miniature world, end to end on a laptop.

Per seed (`--seeds 0,1,2`; each seed its own world):
1. build (or load from cache) the world: images, a tiny CLIP, a tiny VLM that hallucinates;
2. each run (and the world's build, and the base model's evaluation) is a task in a process of
   its own, with a scoring service of its own on loopback (both models, the same paths as hub
   models); up to `--lanes N` tasks (default 2) run at once, a task after those it waits for
   (a seed's tasks wait for its world, so one seed's world builds while another seed's runs
   go on; the SBSPO rows wait for CSR); a lane's output lines start with its task's name;
3. CSR with the preset's settings (`--preset paper | official | tuned`, default tuned):
   `iterate` for T iterations on the prompt images (pairs → DPO → adapter upload);
4. ablation rows, one iteration each: λ = 0, 0.5, 0.9, 1 (CSR Table 2), the official code's
   rank fusion (`csr-official`), SBSPO (starting policy M1′ = CSR iteration 1, reference base);
   with `--full` (a second lane, longer than `make demo`), on worlds whose SFT captions carry
   disfluencies CLIP does not see (`--disfluency`, default 0.15 there): CSR under the `paper`
   and the `official` presets for T iterations each, beside the chosen preset's, and SBSPO's
   Table 2 selections (sum only, average only, the eq. 5 union);
5. evaluate the base model and every adapter on the evaluation images with greedy decoding
   (CHAIR_S, CHAIR_I, recall, length, malformed and repeat rates), and with `--eval-samples N`
   (`--full`: 4) on N seeded samples per image too (malformed rate, CHAIR_S): only this step
   reads ground truth;
6. mean ± sd over seeds per row, the tables (metrics; chosen vs rejected lengths per run),
   report.json (every setting of the preset included) and a plot with error bars.

Reproducibility: every process runs one torch thread (`OMP_NUM_THREADS=1`, `--torch-threads
1`) with deterministic algorithms and fixed seeds, and on x86-64 the float kernels are pinned to
AVX2 (`PINNED_KERNELS`), so a seed gives the same numbers on a rerun and on another x86-64
machine with the same torch; report.json records these settings under "numerics". A run's
numbers do not depend on the lanes: each run talks to a fresh service of its own, whatever ran
before it or runs beside it, and its results are put together in the serial order.

Resumable: rerun to continue; `iterate` skips the stages done (each run's service keeps its
pairs and adapters in `WORK/RUN/service`), and every model is evaluated again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from selfreward_vlm.lanes import Task

console = Console(width=None if sys.stdout.isatty() else 140)

FULL_ROWS = ("lambda0", "lambda0p5", "lambda0p9", "lambda1", "official", "sbspo")
QUICK_ROWS = ("lambda0", "lambda1", "sbspo")
# `--full`: CSR under each preset for T iterations (run name -> preset), SBSPO's Table 2
LANE_PRESET_ROWS = {"csr-paper": "paper", "csr-official-preset": "official"}
LANE_ROWS = (*LANE_PRESET_ROWS, "sbspo-sum", "sbspo-avg", "sbspo-eq5")
# SBSPO rows: run name -> options over the preset's (eq. 5 as written for Table 2's three)
SBSPO_ROWS: dict[str, dict[str, Any]] = {
    "sbspo": {},
    "sbspo-sum": {"selection": "sum", "overlap": "keep"},
    "sbspo-avg": {"selection": "avg", "overlap": "keep"},
    "sbspo-eq5": {"selection": "union", "overlap": "keep"},
}
FULL_LANE_DISFLUENCY = 0.15
# `--full`: sampled captions per evaluation image, for the malformed rate greedy decoding hides
FULL_EVAL_SAMPLES = 4
# run names become adapter names on the service, which may not contain "."
ROW_LAMBDA = {"lambda0": 0.0, "lambda0p5": 0.5, "lambda0p9": 0.9, "lambda1": 1.0}


@dataclass
class DemoConfig:
    """Sizes and settings of a demo run (`quick` shrinks everything for CI)."""

    quick: bool = False
    seeds: list[int] = field(default_factory=lambda: [0])
    work: Path = Path("runs/demo")
    world: str | None = None  # a built world; "{seed}" in it is replaced per seed
    preset: str = "tuned"
    iterations: int = 3
    prompts: int | None = None  # None: every prompt image of the world
    eval_images: int | None = None
    ablation_prompts: int | None = None
    rows: tuple[str, ...] = FULL_ROWS
    method: dict[str, Any] = field(default_factory=dict)  # the preset's CSR-flavour options
    train: dict[str, Any] = field(default_factory=dict)  # the preset's training options
    full: bool = False  # the second lane: LANE_ROWS too, on disfluent worlds
    disfluency: float = 0.0  # share of disfluent SFT sentences in the worlds built
    eval_samples: int = 0  # sampled captions per evaluation image (0: greedy ones only)

    @classmethod
    def make(
        cls, quick: bool, seeds: list[int], work: Path, world: str | None = None,
        preset: str = "tuned", full: bool = False, disfluency: float | None = None,
        eval_samples: int | None = None,
    ) -> DemoConfig:  # fmt: skip
        from selfreward_vlm.core.presets import PRESETS, method_options, train_options

        # 1-iteration ablation rows on half the prompt images: 6 rows × 400 prompts would
        # double the demo's time; λ = 0.9 then gets its own row on the same 200
        sizes: dict[str, Any] = {"ablation_prompts": 200}
        if quick and full:
            raise ValueError("--quick and --full are two different lanes: pick one")
        if quick:
            sizes = {"iterations": 1, "prompts": 300, "eval_images": 200, "ablation_prompts": 300,
                     "rows": QUICK_ROWS}  # fmt: skip
        if full:
            rows = (*FULL_ROWS, *(r for r in LANE_ROWS
                                  if LANE_PRESET_ROWS.get(r) not in (preset,)))  # fmt: skip
            sizes = {**sizes, "rows": rows}
        if disfluency is None:
            disfluency = FULL_LANE_DISFLUENCY if full else 0.0
        if eval_samples is None:
            eval_samples = FULL_EVAL_SAMPLES if full else 0
        return cls(quick=quick, seeds=seeds, work=work, world=world, preset=preset,
                   method=method_options(preset, PRESETS[preset].csr_method),
                   train=train_options(preset), full=full, disfluency=disfluency,
                   eval_samples=eval_samples, **sizes)  # fmt: skip


def _limit_prompts(src: Path, dst: Path, n: int | None) -> Path:
    lines = src.read_text().splitlines()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(lines[:n] if n else lines) + "\n")
    return dst


class Evaluator:
    """Greedy captions of the evaluation images and their CHAIR metrics (the only reader of
    ground truth); with `samples` > 0, also that many seeded samples per image, whose
    malformed rate and CHAIR_S go in the row as `sampled_malformed_rate` and `sampled_chair_s`
    (greedy decoding hides a disfluency the model produces in a minority of its samples)."""

    def __init__(self, world: Path, limit: int | None, samples: int = 0):
        from selfreward_vlm.world.evaluate import eval_set

        self.names, self.truths = eval_set(world, limit)
        self.world, self.samples = world, samples
        self.results: dict[str, dict[str, Any]] = {}

    def __call__(self, label: str, adapter_dir: Path | None) -> dict[str, Any]:
        from selfreward_vlm.world.chair import chair
        from selfreward_vlm.world.evaluate import Sampling, caption_images, load_vlm, open_images

        started = time.perf_counter()
        model, processor = load_vlm(self.world / "vlm", adapter_dir)
        images = open_images(self.world / "images", self.names)
        captions = caption_images(model, processor, images)
        metrics = chair(captions, self.truths)
        row: dict[str, Any] = {**metrics.as_dict(), "example": captions[0]}
        summary = metrics.summary()
        if self.samples:  # seed 0 for every model (see `Sampling`)
            sampled = caption_images(model, processor, images, sample=Sampling(self.samples))
            s = chair(sampled, [t for t in self.truths for _ in range(self.samples)])
            row |= {"sampled_malformed_rate": s.malformed_rate, "sampled_chair_s": s.chair_s,
                    "sampled_example": sampled[0]}  # fmt: skip
            summary += (f"  sampled ×{self.samples}: malformed {s.malformed_rate:.3f}  "
                        f"CHAIR_S {s.chair_s:.3f}")  # fmt: skip
        row["seconds"] = time.perf_counter() - started
        self.results[label] = row
        console.print(f"[bold]{label:>22}[/]  {summary}")
        return row


# The float kernels' instruction set, pinned so that x86-64 machines with and without AVX-512
# compute the same numbers: ATen's vectorized ops (softmax differs bit-wise between its AVX2
# and AVX-512 kernels, measured), MKL's GEMM (conditional numerical reproducibility) and
# oneDNN (GELU differs). Read once, at each library's first use; set before torch computes
# anything, and inherited by the service and trainer processes. `VAR=...` in the environment
# wins (e.g. ATEN_CPU_CAPABILITY=default to measure the native kernels).
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"}


def _reproducible() -> dict[str, str]:
    """One thread per process, deterministic algorithms and, on x86-64, AVX2 float kernels:
    a rerun repeats its numbers, on this machine or another. Returns the settings (for the
    report).

    The demo's models are tiny: their ops are too small to split across cores, and two
    processes (service + trainer/evaluator) each spinning a multi-thread pool on a small box
    run many times slower (measured 20-65x on 2 busy cores), and differ from run to run.
    """
    import platform

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # the service subprocess inherits it
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if platform.machine().lower() in ("x86_64", "amd64"):
        for var, value in PINNED_KERNELS.items():
            os.environ.setdefault(var, value)
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    capability = torch.backends.cpu.get_cpu_capability()
    wanted = os.environ.get("ATEN_CPU_CAPABILITY", "").upper()
    if wanted and wanted != "DEFAULT" and capability != wanted:
        console.print(f"[yellow]warning:[/] torch chose {capability} kernels before the demo "
                      f"could pin {wanted}; numbers may differ from other machines")  # fmt: skip
    settings = {var: os.environ.get(var, "") for var in ("OMP_NUM_THREADS", *PINNED_KERNELS)}
    return {**settings, "kernels": capability, "torch": torch.__version__}


def _world_dir(config: DemoConfig, seed: int, work: Path) -> tuple[Path, bool]:
    """Seed's world folder, and whether the demo builds it (False: `--world`, built already)."""
    if config.world is not None:
        return Path(config.world.replace("{seed}", str(seed))).resolve(), False
    name = f"world-seed{seed}{'-quick' if config.quick else ''}"
    if config.disfluency:
        name += f"-disfluent{config.disfluency:g}"
    return work / name, True


def prepare_world(spec: dict[str, Any]) -> None:
    """Build seed's world (stages built already are skipped) unless it was given, and write
    the run's prompt files from it."""
    world, work = Path(spec["world"]), Path(spec["work"])
    if spec["build"]:
        from selfreward_vlm.world.build import build_world

        build_world(world, seed=spec["seed"], quick=spec["quick"], disfluency=spec["disfluency"])
    _limit_prompts(world / "prompts.jsonl", work / "prompts.jsonl", spec["prompts_limit"])
    _limit_prompts(world / "prompts.jsonl", work / "prompts-ablation.jsonl",
                   spec["ablation_limit"])  # fmt: skip


Run = tuple[str, Path, int, dict[str, Any], dict[str, Any]]


def _runs(config: DemoConfig, prompts: Path, ablation: Path) -> dict[str, Run]:
    """run name -> (method, prompts file, iterations, method options, training options) for
    every CSR row (SBSPO rows start from CSR iteration 1: `run_seed` runs them after)."""
    from selfreward_vlm.core.presets import PRESETS, method_options, train_options

    main = PRESETS[config.preset].csr_method
    train = config.train
    runs = {"csr": (main, prompts, config.iterations, method_options(config.preset, main), train)}
    # the CLIP weight of the preset's CSR: λ of the paper's reward, α of the official ranks
    weight = "lam" if main == "csr" else "alpha"
    for row in config.rows:
        if row in ROW_LAMBDA:
            lam = ROW_LAMBDA[row]
            same = (config.method.get(weight) == lam
                    and config.ablation_prompts == config.prompts)  # fmt: skip
            if not same:  # else it is CSR iteration 1 itself
                runs[f"csr-{row}"] = (main, ablation, 1, {**config.method, weight: lam}, train)
        elif row == "official":
            opts = method_options(config.preset, "csr-official")
            runs["csr-official"] = ("csr-official", ablation, 1, opts, train)
        elif row in LANE_PRESET_ROWS:  # the papers' own settings, search and training alike
            preset = LANE_PRESET_ROWS[row]
            method = PRESETS[preset].csr_method
            runs[row] = (method, prompts, config.iterations, method_options(preset, method),
                         train_options(preset))  # fmt: skip
    return runs


def _label(run: str, t: int) -> str:
    if run == "csr":
        return f"csr iter{t}"
    if run in LANE_PRESET_ROWS:
        return f"csr {LANE_PRESET_ROWS[run]} preset iter{t}"
    if run.startswith("csr-lambda"):
        return f"csr λ={ROW_LAMBDA[run.removeprefix('csr-')]:g}"
    return run


def _seed_work(config: DemoConfig, seed: int) -> Path:
    return config.work.resolve() / f"seed{seed}" if len(config.seeds) > 1 else config.work.resolve()


def _task_name(config: DemoConfig, seed: int, name: str) -> str:
    return f"seed{seed}/{name}" if len(config.seeds) > 1 else name


def seed_tasks(config: DemoConfig, seed: int) -> tuple[Path, list[Task]]:
    """Seed's world and its lane tasks, in the serial order: the world's build (a task too, so
    that one seed's world builds while another seed's runs go on; not when `--world` gives
    it), the base model's evaluation, every CSR run, the SBSPO rows (they wait for `csr`, whose
    iteration 1 is their starting policy)."""
    from selfreward_vlm.core.presets import method_options

    work = _seed_work(config, seed)
    work.mkdir(parents=True, exist_ok=True)
    world, build = _world_dir(config, seed, work)
    common = {"seed": seed, "world": str(world), "work": str(work),
              "eval_images": config.eval_images, "eval_samples": config.eval_samples}  # fmt: skip
    prepare = {**common, "kind": "world", "build": build, "quick": config.quick,
               "disfluency": config.disfluency, "prompts_limit": config.prompts,
               "ablation_limit": config.ablation_prompts}  # fmt: skip
    tasks: list[Task] = []
    if build:
        tasks.append(Task(_task_name(config, seed, "world"), (), prepare))
    else:
        prepare_world(prepare)
    ready = tuple(t.name for t in tasks)  # what every other task of the seed waits for
    prompts, ablation = work / "prompts.jsonl", work / "prompts-ablation.jsonl"
    tasks.append(Task(_task_name(config, seed, "base"), ready, {**common, "kind": "base"}))
    for run, (method, prompt_file, iterations, options, run_train) in _runs(
        config, prompts, ablation
    ).items():
        spec = {**common, "kind": "run", "run": run, "method": method, "prompts": str(prompt_file),
                "iterations": iterations, "options": options, "train": run_train,
                "init_adapter": None}  # fmt: skip
        tasks.append(Task(_task_name(config, seed, run), ready, spec))
    csr1 = work / "csr" / "iter1" / "train" / "adapter"
    for run in (r for r in SBSPO_ROWS if r in config.rows):
        options = {**method_options(config.preset, "sbspo"), **SBSPO_ROWS[run]}
        spec = {**common, "kind": "run", "run": run, "method": "sbspo", "prompts": str(ablation),
                "iterations": 1, "options": options, "train": dict(config.train),
                "init_adapter": str(csr1)}  # fmt: skip
        after = (*ready, _task_name(config, seed, "csr"))
        tasks.append(Task(_task_name(config, seed, run), after, spec))
    return world, tasks


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """One lane's task, in its own process: seed's world, the base model's evaluation, or one
    run (`iterate` against a scoring service of its own, then the evaluation of each
    iteration's adapter).
    Returns {eval: {label: row}, lengths: {label: stats}, runs: {run: iteration records}}."""
    from selfreward_vlm.client.methods.lengths import length_stats
    from selfreward_vlm.core.schemas import PreferencePair
    from selfreward_vlm.localserver import local_service
    from selfreward_vlm.trainer.iterate import iterate
    from selfreward_vlm.world.chair import malformed_shares

    _reproducible()
    world, work, seed = Path(spec["world"]), Path(spec["work"]), spec["seed"]
    if spec["kind"] == "world":
        console.rule(f"seed {seed}: the world")
        prepare_world(spec)
        return {"eval": {}, "lengths": {}, "runs": {}}
    evaluate = Evaluator(world, spec["eval_images"], spec.get("eval_samples", 0))
    if spec["kind"] == "base":
        console.rule(f"seed {seed}: evaluation of the base model")
        evaluate("base (SFT)", None)
        return {"eval": evaluate.results, "lengths": {}, "runs": {}}
    run, method, iterations = spec["run"], spec["method"], spec["iterations"]
    init = spec["init_adapter"]
    if init:
        console.rule(f"seed {seed}, {run}: policy M1' = CSR iteration 1, reference = base")
    else:
        console.rule(f"seed {seed}, {run}: {method}, {iterations} iteration(s)")
    (work / run).mkdir(parents=True, exist_ok=True)
    # Each run has a service of its own (its pairs, adapters and caches), so its numbers never
    # depend on the runs beside it or before it; decode_batching=isolated (README "Continuous
    # batching") keeps them bit-for-bit reproducible whatever the requests' timing.
    with local_service(world / "vlm", world / "clip", work / run / "service", "--torch-threads",
                       "1", "--set", "decode_batching=isolated",
                       log_file=work / run / "service.log") as url:  # fmt: skip
        records = iterate(url, method, spec["prompts"], world / "images", iterations, work / run,
                          model=str(world / "vlm"), train_overrides=dict(spec["train"]),
                          method_options=spec["options"], run=run,
                          init_adapter=init)  # fmt: skip
    lengths = {}
    for t in range(1, iterations + 1):
        folder = work / run / f"iter{t}"
        evaluate(_label(run, t), folder / "train" / "adapter")
        lines = (folder / "pairs.jsonl").read_text().splitlines()
        pairs = [PreferencePair.model_validate_json(x) for x in lines if x.strip()]
        lengths[_label(run, t)] = {**length_stats(pairs), **malformed_shares(pairs)}
    return {
        "eval": evaluate.results,
        "lengths": lengths,
        "runs": {run: [asdict(r) for r in records]},
    }


def seed_result(
    config: DemoConfig, seed: int, world: Path, results: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """{seed, world, runs, lengths, eval} from the tasks' results (by task name), in the serial
    order whatever order the lanes finished them in."""
    out: dict[str, Any] = {"seed": seed, "world": str(world), "runs": {}, "lengths": {}}
    rows: dict[str, Any] = {}
    prefix = _task_name(config, seed, "")
    for name, result in results.items():
        if name.startswith(prefix):
            out["runs"].update(result["runs"])
            out["lengths"].update(result["lengths"])
            rows.update(result["eval"])
    for row in config.rows:  # rows that are CSR iteration 1 itself
        label = f"csr λ={ROW_LAMBDA[row]:g}" if row in ROW_LAMBDA else None
        if label and label not in rows:
            rows[label] = {**rows["csr iter1"], "same_as": "csr iter1"}
            out["lengths"][label] = out["lengths"]["csr iter1"]
    out["eval"] = dict(sorted(rows.items(), key=lambda kv: _row_rank(kv[0])))
    return out


def run_seeds(config: DemoConfig, lanes: int) -> list[dict[str, Any]]:
    """Every seed's tasks in `lanes` parallel lanes (each task a process of its own; a task
    starts when the ones it waits for are done); the per-seed results."""
    from selfreward_vlm.lanes import ProcessLanes, schedule

    worlds, tasks = {}, []
    for seed in config.seeds:
        worlds[seed], seed_list = seed_tasks(config, seed)
        tasks += seed_list
    work = {t.name: Path(t.spec["work"]) for t in tasks}

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    runner = ProcessLanes(f"{__name__}:run_task", lambda t: work[t.name] / "lanes", say)
    console.rule(f"{len(tasks)} tasks in {lanes} lane(s): " + ", ".join(t.name for t in tasks))
    results = schedule(tasks, lanes, runner.run, on_stop=runner.stop)
    return [seed_result(config, seed, worlds[seed], results) for seed in config.seeds]


def _row_rank(label: str) -> tuple[int, float]:
    """Table order: base, CSR iterations, the other presets' iterations, λ rows by λ, the
    official code, SBSPO."""
    if label.startswith("csr iter"):
        return (1, float(label.removeprefix("csr iter")))
    if " preset iter" in label:  # after the chosen preset's: paper, then official
        offset = 20.0 if label.startswith("csr official") else 10.0
        return (1, offset + float(label.rsplit("iter", 1)[1]))
    if label.startswith("csr λ="):
        return (2, float(label.removeprefix("csr λ=")))
    return {"base (SFT)": (0, 0.0), "csr-official": (3, 0.0)}.get(label, (4, 0.0))


def check_direction(rows: dict[str, Any]) -> list[str]:
    """What CI asserts: CSR iteration 1 has lower CHAIR_S than the base and than λ = 0."""
    csr1 = rows["csr iter1"]["chair_s"][0]
    problems = []
    for other in ("base (SFT)", "csr λ=0"):
        if other in rows and not csr1 < rows[other]["chair_s"][0]:
            problems.append(f"csr iter1 CHAIR_S {csr1:.3f} is not below {other}'s "
                            f"{rows[other]['chair_s'][0]:.3f}")  # fmt: skip
    return problems


def run_demo(config: DemoConfig, lanes: int = 2) -> dict[str, Any]:
    """Run the demo for every seed; returns (and writes) the report."""
    from selfreward_vlm.core.presets import PRESETS
    from selfreward_vlm.demo_report import (
        LENGTH_KEYS,
        METRICS,
        SAMPLED_METRICS,
        aggregate,
        calibration,
        plot,
        print_tables,
    )

    numerics = _reproducible()
    started = time.perf_counter()
    work = config.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    per_seed = run_seeds(config, lanes)
    preset = PRESETS[config.preset]
    report: dict[str, Any] = {
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "preset": config.preset,
        "preset_settings": json.loads(json.dumps(asdict(preset), default=str)),
        "seeds": config.seeds,
        "numerics": numerics,
        "rows": aggregate([s["eval"] for s in per_seed], (*METRICS, *SAMPLED_METRICS)),
        "lengths": aggregate([s["lengths"] for s in per_seed], LENGTH_KEYS),
        "per_seed": per_seed,
    }
    report["direction_problems"] = check_direction(report["rows"])
    report["calibration"] = calibration(report["rows"])
    report["fingerprint"] = fingerprint(per_seed)
    report["seed_fingerprints"] = {s["seed"]: fingerprint([s]) for s in per_seed}
    report["seconds"] = time.perf_counter() - started
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, work / "report.png")
    print_tables(report, console)
    console.print(f"\nreport: {work / 'report.json'}  plot: {work / 'report.png'}  "
                  f"({report['seconds']:.0f} s)")  # fmt: skip
    kernels = ", ".join(f"{k}={v}" for k, v in numerics.items())
    console.print(f"fingerprint {report['fingerprint']}  ({kernels}): the same on every "
                  "machine that repeats these numbers exactly")  # fmt: skip
    if len(per_seed) > 1:  # a one-seed run of seed s prints seed s's fingerprint above
        console.print("per seed: " + ", ".join(
            f"{seed}: {fp}" for seed, fp in report["seed_fingerprints"].items()))  # fmt: skip
    for problem in report["direction_problems"]:
        console.print(f"[red]direction check failed[/red]: {problem}")
    return report


def fingerprint(per_seed: list[dict[str, Any]]) -> str:
    """A short hash of every evaluated caption and metric (timings left out): two runs, on one
    machine or two, computed the same numbers exactly when their fingerprints match."""
    import hashlib

    evals = [
        {
            row: {k: v for k, v in metrics.items() if k != "seconds"}
            for row, metrics in s["eval"].items()
        }
        for s in per_seed
    ]
    return hashlib.sha256(json.dumps(evals, sort_keys=True).encode()).hexdigest()[:16]


def _seeds(value: str) -> list[int]:
    try:
        seeds = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not seeds:
        raise typer.BadParameter("no seed given")
    return seeds


def demo_command(
    quick: Annotated[bool, typer.Option(help="small sets, 1 iteration, 3 rows (CI)")] = False,
    seed: Annotated[int, typer.Option(help="world seed (one run)")] = 0,
    seeds: Annotated[
        str | None, typer.Option(help="several seeds, e.g. 0,1,2: mean ± sd per row")
    ] = None,
    preset: Annotated[str, typer.Option(help="paper | official | tuned")] = "tuned",
    full: Annotated[
        bool,
        typer.Option(
            help="the second lane: CSR under every preset for 3 iterations and "
            "SBSPO's Table 2 selections, on worlds with disfluent SFT captions"
        ),
    ] = False,
    disfluency: Annotated[
        float | None,
        typer.Option(
            help="share of disfluent SFT caption sentences in the worlds built "
            f"(default 0; --full: {FULL_LANE_DISFLUENCY})"
        ),
    ] = None,
    eval_samples: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="sampled captions per evaluation image, for the malformed rate and CHAIR_S "
            f"of samples beside the greedy ones (default 0; --full: {FULL_EVAL_SAMPLES})",
        ),
    ] = None,
    work: Annotated[Path, typer.Option(help="work dir (world cache, runs, report)")] = Path(
        "runs/demo"
    ),
    world: Annotated[
        str | None,
        typer.Option(help="use this built world instead of building one ({seed}: per seed)"),
    ] = None,
    lanes: Annotated[
        int,
        typer.Option(
            min=1,
            help="runs at once, each in a process with its own service and one torch thread "
            "(1: one after another); the numbers are the same whatever the lanes",
        ),
    ] = 2,
) -> None:
    """Run the end-to-end demo on the miniature world (resumable: rerun to continue)."""
    from selfreward_vlm.core.presets import PRESET_NAMES

    if preset not in PRESET_NAMES:
        raise typer.BadParameter(f"choose from {list(PRESET_NAMES)}", param_hint="--preset")
    if quick and full:
        raise typer.BadParameter("--quick and --full are two lanes: pick one", param_hint="--full")
    if quick and work == Path("runs/demo"):
        work = Path("runs/demo-quick")
    if full and work == Path("runs/demo"):
        work = Path("runs/demo-full")
    from selfreward_vlm.lanes import LaneFailed, interruptible

    config = DemoConfig.make(quick, _seeds(seeds) if seeds else [seed], work, world, preset, full,
                             disfluency, eval_samples)  # fmt: skip
    try:
        with interruptible():  # `kill PID` stops the lanes as Ctrl-C does
            report = run_demo(config, lanes)
    except LaneFailed as exc:  # its output, traceback included, went by with its name in front
        console.print(f"[red]demo stopped[/red]: {exc}; rerun to resume")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("[yellow]demo interrupted[/yellow]: every lane stopped; rerun to resume")
        raise typer.Exit(130) from None
    if quick and report["direction_problems"]:
        raise typer.Exit(1)


def world_command(
    out: Annotated[Path, typer.Option(help="where to write (or find, cached) the world")] = Path(
        "runs/world"
    ),
    seed: Annotated[int, typer.Option(help="world seed")] = 0,
    quick: Annotated[bool, typer.Option(help="small world (CI)")] = False,
    evaluate: Annotated[bool, typer.Option(help="greedy CHAIR of the base VLM")] = True,
    disfluency: Annotated[
        float, typer.Option(help="share of SFT caption sentences made disfluent (CLIP-blind)")
    ] = 0.0,
) -> None:
    """Build the miniature world: images, a tiny CLIP, a tiny VLM with a language prior."""
    from selfreward_vlm.world.build import build_world

    _reproducible()  # with two threads the trained CLIP differed between builds (measured)
    world = build_world(out, seed=seed, quick=quick, disfluency=disfluency).root
    console.print(f"world: {world}  (serve it: selfreward serve --model {world / 'vlm'} "
                  f"--clip {world / 'clip'})")  # fmt: skip
    if evaluate:
        Evaluator(world, None)("base (SFT)", None)
