"""`selfreward demo`: the whole loop on the miniature world, end to end on a laptop.

1. build (or load from cache) the world: images, a tiny CLIP, a tiny VLM that hallucinates;
2. start the scoring service on loopback with both models (the same paths as hub models);
3. CSR: `iterate` for T iterations on the prompt images (pairs → DPO → adapter upload);
4. ablations of CSR Table 2 (λ = 0: language score only; λ = 1: CLIP only) and SBSPO
   (policy = the CSR iteration-1 adapter, reference = base), one iteration each;
5. evaluate the base model and every adapter on the evaluation images with greedy decoding
   (CHAIR_S, CHAIR_I, recall, length, malformed rate) — only this step reads ground truth;
6. print the tables, write report.json and a PNG plot, show one caption per model.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 140)


@dataclass
class DemoConfig:
    """Sizes and hyper-parameters of a demo run (`quick` shrinks everything for CI)."""

    quick: bool = False
    seed: int = 0
    work: Path = Path("runs/demo")
    world: Path | None = None  # an already built world (`selfreward world`); None: build/cache
    iterations: int = 3
    prompts: int | None = None  # None: every prompt image of the world
    eval_images: int | None = None
    ablation_prompts: int | None = None
    method: dict[str, Any] = field(default_factory=lambda: {
        "lam": 0.9, "language_score": "mean_logprob", "path_score": "mean",
        "num_candidates": 5, "keep_top": 1, "keep_bottom": 2, "max_new_tokens": 12,
        "max_steps": 5,
    })  # fmt: skip
    train: dict[str, Any] = field(default_factory=lambda: {
        "lr": 2e-4, "loss_type": ["sigmoid", "sft"], "lora_r": 16, "lora_alpha": 32,
        "batch_size": 8, "epochs": 3.0, "max_length": 256, "save_steps": 1000,
    })  # fmt: skip

    @classmethod
    def make(cls, quick: bool, seed: int, work: Path, world: Path | None = None) -> DemoConfig:
        if not quick:
            return cls(seed=seed, work=work, world=world)
        return cls(quick=True, seed=seed, work=work, world=world, iterations=1, prompts=48,
                   eval_images=100, ablation_prompts=32)  # fmt: skip


def _limit_prompts(src: Path, dst: Path, n: int | None) -> Path:
    lines = src.read_text().splitlines()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(lines[:n] if n else lines) + "\n")
    return dst


class Evaluator:
    """Greedy captions of the evaluation images and their CHAIR metrics (the only reader of
    ground truth)."""

    def __init__(self, world: Path, limit: int | None):
        from selfreward_vlm.world.evaluate import eval_set

        self.names, self.truths = eval_set(world, limit)
        self.world = world
        self.results: dict[str, dict[str, Any]] = {}

    def __call__(self, label: str, adapter_dir: Path | None) -> dict[str, Any]:
        from selfreward_vlm.world.chair import chair
        from selfreward_vlm.world.evaluate import greedy_captions

        started = time.perf_counter()
        captions = greedy_captions(self.world / "vlm", self.world / "images", self.names,
                                   adapter_dir=adapter_dir)  # fmt: skip
        metrics = chair(captions, self.truths)
        row = {
            **metrics.as_dict(),
            "example": captions[0],
            "seconds": time.perf_counter() - started,
        }
        self.results[label] = row
        console.print(f"[bold]{label:>22}[/]  {metrics.summary()}")
        return row


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the demo; returns (and writes) the report."""
    import torch

    from selfreward_vlm.localserver import local_service
    from selfreward_vlm.trainer.iterate import iterate
    from selfreward_vlm.world.build import build_world

    # The demo's models are tiny: their ops are too small to split across cores, and two
    # processes (service + trainer/evaluator) each spinning a multi-thread pool on a small box
    # run many times slower (measured 20-65x on 2 busy cores). One thread each.
    torch.set_num_threads(1)
    started = time.perf_counter()
    work = config.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if config.world is not None:
        world = config.world.resolve()
    else:
        name = f"world-seed{config.seed}{'-quick' if config.quick else ''}"
        world = build_world(work / name, seed=config.seed, quick=config.quick).root
    prompts = _limit_prompts(world / "prompts.jsonl", work / "prompts.jsonl", config.prompts)
    ablation_prompts = _limit_prompts(
        world / "prompts.jsonl", work / "prompts-ablation.jsonl", config.ablation_prompts
    )
    evaluate = Evaluator(world, config.eval_images)
    console.rule("evaluation: base model")
    evaluate("base (SFT)", None)
    report: dict[str, Any] = {
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "world": str(world),
    }
    with local_service(world / "vlm", world / "clip", work / "service", "--torch-threads", "1",
                       log_file=work / "service.log") as url:  # fmt: skip
        runs = {
            "csr": (prompts, config.iterations, {**config.method}),
            "csr-lambda0": (ablation_prompts, 1, {**config.method, "lam": 0.0}),
            "csr-lambda1": (ablation_prompts, 1, {**config.method, "lam": 1.0}),
        }
        for run, (prompt_file, iterations, options) in runs.items():
            console.rule(f"{run}: {iterations} iteration(s), λ = {options['lam']}")
            records = iterate(url, "csr", prompt_file, world / "images", iterations, work / run,
                              model=str(world / "vlm"), train_overrides=dict(config.train),
                              method_options=options, run=run)  # fmt: skip
            report[run] = [asdict(r) for r in records]
            for t in range(1, iterations + 1):
                evaluate(f"{run} iter{t}", work / run / f"iter{t}" / "train" / "adapter")
        console.rule("sbspo: policy = CSR iteration 1, reference = base")
        report["sbspo"] = run_sbspo(url, world, ablation_prompts, work, config)
        evaluate("sbspo", work / "sbspo" / "train" / "adapter")
    report["eval"] = evaluate.results
    report["seconds"] = time.perf_counter() - started
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, work / "report.png")
    print_tables(report)
    console.print(f"\nreport: {work / 'report.json'}  plot: {work / 'report.png'}  "
                  f"({report['seconds']:.0f} s)")  # fmt: skip
    return report


def run_sbspo(url: str, world: Path, prompts: Path, work: Path, config: DemoConfig) -> dict:
    """SBSPO from the CSR iteration-1 model: implicit reward (CSR-1 vs base) picks the pairs,
    then DPO continues CSR-1 with CSR-1 as the reference."""
    from selfreward_vlm.client.methods import build_config
    from selfreward_vlm.client.pairs import run_pairs
    from selfreward_vlm.trainer.config import DPOTrainConfig
    from selfreward_vlm.trainer.dpo import train

    out = work / "sbspo"
    out.mkdir(parents=True, exist_ok=True)
    csr1 = work / "csr" / "iter1" / "train" / "adapter"
    summary = run_pairs(
        url, "sbspo", prompts, world / "images", out / "pairs.jsonl",
        config=build_config("sbspo", max_new_tokens=40), model="csr-iter1", reference="base",
        iteration=1,
    )  # fmt: skip
    result = train(DPOTrainConfig(model=str(world / "vlm"), pairs=str(out / "pairs.jsonl"),
                                  out=str(out / "train"), images=str(world / "images"),
                                  init_adapter=str(csr1), reference=str(csr1),
                                  **config.train))  # fmt: skip
    return {"pairs": summary.as_dict(), "train": result.to_dict()}


def print_tables(report: dict[str, Any]) -> None:
    table = Table(title="Greedy decoding on the evaluation images (lower CHAIR is better)")
    for col in ("model", "CHAIR_S", "CHAIR_I", "recall", "length", "malformed", "companions"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for label, m in report["eval"].items():
        table.add_row(label, f"{m['chair_s']:.3f}", f"{m['chair_i']:.3f}", f"{m['recall']:.3f}",
                      f"{m['mean_length']:.1f}", f"{m['malformed_rate']:.3f}",
                      f"{m['companion_share']:.2f}")  # fmt: skip
    console.print(table)
    console.print("\nOne caption per model (first evaluation image):")
    for label, m in report["eval"].items():
        console.print(f"  {label:>22}: {m['example']}")


def plot(report: dict[str, Any], path: Path) -> None:
    """Metrics per CSR iteration, and R_I of chosen vs rejected per iteration (CSR Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = report["eval"]
    labels = ["base (SFT)"] + [f"csr iter{r['iteration']}" for r in report.get("csr", [])]
    xs = list(range(len(labels)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, name in (("chair_s", "CHAIR_S"), ("chair_i", "CHAIR_I"), ("recall", "recall")):
        ax1.plot(xs, [ev[label][key] for label in labels], marker="o", label=name)
    ax1.set_xticks(xs, ["base"] + [f"it{t}" for t in xs[1:]])
    ax1.set_title("CSR iterations: greedy decoding, eval images")
    ax1.legend()
    rows = report.get("csr", [])
    its = [r["iteration"] for r in rows]
    ax2.plot(its, [r["mean_chosen_r_i"] for r in rows], marker="o", label="chosen")
    ax2.plot(its, [r["mean_rejected_r_i"] for r in rows], marker="o", label="rejected")
    ax2.set_title("mean sentence R_I of the pairs (cf. CSR Fig. 5)")
    ax2.set_xlabel("iteration")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def demo_command(
    quick: Annotated[bool, typer.Option(help="small sets, 1 iteration (CI)")] = False,
    seed: Annotated[int, typer.Option(help="world seed")] = 0,
    work: Annotated[Path, typer.Option(help="work dir (world cache, runs, report)")] = Path(
        "runs/demo"
    ),
    world: Annotated[
        Path | None, typer.Option(help="use this built world instead of building one")
    ] = None,
) -> None:
    """Run the end-to-end demo on the miniature world (resumable: rerun to continue)."""
    if quick and work == Path("runs/demo"):
        work = Path("runs/demo-quick")
    run_demo(DemoConfig.make(quick, seed, work, world))


def world_command(
    out: Annotated[Path, typer.Option(help="where to write (or find, cached) the world")] = Path(
        "runs/world"
    ),
    seed: Annotated[int, typer.Option(help="world seed")] = 0,
    quick: Annotated[bool, typer.Option(help="small world (CI)")] = False,
    evaluate: Annotated[bool, typer.Option(help="greedy CHAIR of the base VLM")] = True,
) -> None:
    """Build the miniature world: images, a tiny CLIP, a tiny VLM with a language prior."""
    from selfreward_vlm.world.build import build_world

    world = build_world(out, seed=seed, quick=quick).root
    console.print(f"world: {world}  (serve it: selfreward serve --model {world / 'vlm'} "
                  f"--clip {world / 'clip'})")  # fmt: skip
    if evaluate:
        Evaluator(world, None)("base (SFT)", None)
