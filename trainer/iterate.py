"""Iterative DPO: pairs with adapter t−1, train adapter t against it, upload, repeat.

Per iteration t = 1..T:
1. pairs   -- `client.pairs.run_pairs` with policy `{run}-iter{t-1}` (`base` for t = 1) writes
              `work/iter{t}/pairs.jsonl` and publishes dataset `{run}-iter{t}` on the service
              (reference for implicit rewards, SBSPO: `{run}-iter{t-2}`, base for t <= 2);
2. trained -- `trainer.dpo.train` on that dataset's URL, init_adapter = reference = adapter t−1
              (base for t = 1), output `work/iter{t}/train/`;
3. uploaded -- adapter t goes to the service as `{run}-iter{t}`.

`init_adapter` (a LoRA dir) is iteration 0: uploaded as `{run}-iter0`, it generates the pairs of
t = 1 and is where t = 1's training starts and its reference. SBSPO needs it (the paper's M1′:
an already aligned policy; with policy = reference every implicit reward is 0, so `iterate
--method sbspo` without one is refused). `preset` (`paper | official | tuned`) supplies the
method's options and the training options; explicit ones win.

`work/state.json` records the finished stages and each iteration's table row, so a rerun
skips what is done (an unfinished stage resumes: run_pairs from its output file, training from
its last checkpoint; an upload is idempotent and is redone if the service lost the adapter).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from selfreward_vlm.trainer.report import IterationRecord, build_record, render_table


class IterationState:
    """`work/state.json`: finished stages and rows per iteration, written atomically."""

    def __init__(self, work: Path) -> None:
        self.path = work / "state.json"
        self.data: dict[str, Any] = {"iterations": {}}
        if self.path.exists():
            self.data = json.loads(self.path.read_text())

    def entry(self, t: int) -> dict[str, Any]:
        return dict(self.data["iterations"].setdefault(str(t), {"done": []}))

    def done(self, t: int, stage: str) -> bool:
        return stage in self.entry(t)["done"]

    def mark(self, t: int, stage: str, **info: Any) -> None:
        entry = self.data["iterations"].setdefault(str(t), {"done": []})
        if stage not in entry["done"]:
            entry["done"].append(stage)
        entry.update(info)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)  # a crash never leaves half a state file


def _write_if_changed(path: Path, text: str) -> None:
    """A rerun with nothing to do leaves every file untouched."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def adapter_name(run: str, t: int, has_init: bool = False) -> str:
    """The service's name of adapter t: iteration 0 is the base, or `init_adapter` if given."""
    if t < 0 or (t == 0 and not has_init):
        return "base"
    return f"{run}-iter{t}"


def _generate_pairs(
    service_url: str, method: str, prompts: str, images: str, out: Path, dataset: str,
    policy: str, reference: str, t: int, method_options: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Stage 1 through the client's search runner; returns its summary as a dict.

    `method_options` are fields of the method's config dataclass (num_candidates, ...); an
    unknown one is a ValueError from the client, not a silent default.
    """
    from selfreward_vlm.client.methods import build_config as method_config
    from selfreward_vlm.client.pairs import run_pairs

    out.parent.mkdir(parents=True, exist_ok=True)
    summary = run_pairs(
        service_url, method, prompts, images, out,
        config=method_config(method, **method_options), publish=dataset, model=policy,
        reference=reference, iteration=t, api_key=os.environ.get("SELFREWARD_API_KEY"),
    )  # fmt: skip
    result = dict(summary.as_dict())
    if result.get("prompts_failed"):
        # Transient errors are not in the journal: a rerun retries them, so stage 1 stays open.
        # Skipped prompts (a deterministic 4xx, recorded with its reason) do not block it.
        raise RuntimeError(
            f"{result['prompts_failed']} prompt(s) failed on transient errors "
            f"({result.get('failed_kinds')}: {result.get('failed')}); "
            f"{result.get('prompts_skipped', 0)} skipped ({result.get('skipped_kinds')}) are "
            "final; rerun iterate to retry the failed ones"
        )
    return result


# Loop-level training levers (not DPOTrainConfig fields), read from `train_overrides`:
# `lr_decay`: iteration t trains at lr·decay^(t−1); `sft_weight_growth`: the SFT term's loss
# weight is multiplied by it each iteration; `fresh_adapter`: each iteration trains a new LoRA
# from the base with the base as reference (default: continue adapter t−1, reference t−1);
# `merge_adapter`: each iteration trains a new LoRA on the model with adapter t−1 merged in,
# that model as reference, as the released CSR code iterates (`trainer.merge`).
LOOP_LEVERS = ("lr_decay", "sft_weight_growth", "fresh_adapter", "merge_adapter")


def _iteration_overrides(overrides: dict[str, Any], t: int) -> dict[str, Any]:
    """The DPOTrainConfig fields of iteration t, after the loop levers."""
    values = {k: v for k, v in overrides.items() if k not in LOOP_LEVERS}
    if overrides.get("lr_decay") is not None and "lr" in values:
        values["lr"] = values["lr"] * float(overrides["lr_decay"]) ** (t - 1)
    growth = overrides.get("sft_weight_growth")
    types = values.get("loss_type") or []
    if growth is not None and "sft" in types:
        weights = list(values.get("loss_weights") or [1.0] * len(types))
        weights[types.index("sft")] *= float(growth) ** (t - 1)
        values["loss_weights"] = weights
    return values


def _train(
    service_url: str, model: str, dataset: str, out: Path, previous: Path | None,
    previous_name: str, overrides: dict[str, Any], launcher: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Stage 2: LoRA DPO on the published dataset, reference = adapter t−1 (or base).

    `launcher` (e.g. `accelerate launch --config_file deploy/accelerate/zero2.yaml`) runs the
    training as `LAUNCHER -m selfreward_vlm.trainer train --config FILE` (several GPUs)
    instead of in this process."""
    from selfreward_vlm.trainer.config import build_config
    from selfreward_vlm.trainer.dpo import train

    if overrides.get("fresh_adapter"):
        previous, previous_name = None, "base"
    values: dict[str, Any] = {
        "model": model,
        "pairs": f"{service_url}/v1/datasets/{dataset}",
        "out": str(out),
        "init_adapter": str(previous) if previous else None,
        "reference": str(previous) if previous else "base",
        "reference_name": previous_name,
        "service": service_url,
        **{k: v for k, v in overrides.items() if k not in LOOP_LEVERS},
    }
    config_file = values.pop("config", None)
    config = build_config(config_file, **values)
    if launcher:
        return _launch_train(launcher, config, out)
    result = train(config)
    return {k: v for k, v in result.to_dict().items() if k != "config"}


def _launch_train(launcher: str, config: Any, out: Path) -> dict[str, Any]:
    """Run one training under `launcher` with the resolved config; its summary."""
    import json
    import shlex
    import subprocess

    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "train_config.json"
    config_file.write_text(json.dumps(config.to_dict(), indent=2, default=str))
    cmd = [*shlex.split(launcher), "-m", "selfreward_vlm.trainer", "train", "--config",
           str(config_file)]  # fmt: skip
    subprocess.run(cmd, check=True)  # a failed launch raises: the stage stays open
    summary = json.loads((out / "train_summary.json").read_text())
    return {k: v for k, v in summary.items() if k != "config"}


def _upload(client: Any, name: str, adapter_dir: Path, already: bool) -> bool:
    """Stage 3, idempotent: skipped only when recorded done AND the service still has it."""
    if already and name in {a.name for a in client.list_adapters().adapters}:
        return False
    client.upload_adapter(name, adapter_dir)
    return True


@dataclass
class _Loop:
    """Everything one `iterate` call shares across its iterations."""

    service_url: str
    method: str
    prompts: str
    images: str
    work: Path
    run: str
    model: str
    train_overrides: dict[str, Any]
    method_options: dict[str, Any]
    state: IterationState
    client: Any
    init_adapter: Path | None = None
    launcher: str | None = None  # runs the train stage (e.g. `accelerate launch ...`)

    def name(self, t: int) -> str:
        return adapter_name(self.run, t, self.init_adapter is not None)

    def adapter_dir(self, t: int) -> Path | None:
        if t == 0:
            return self.init_adapter
        return self.work / f"iter{t}" / "train" / "adapter"

    def step(self, t: int) -> bool:
        """Finish iteration t's missing stages; True when any work was done."""
        folder, state = self.work / f"iter{t}", self.state
        previous = self.adapter_dir(t - 1)
        worked = False
        if not state.done(t, "pairs"):
            started = time.perf_counter()
            options = dict(self.method_options)
            # the implicit reward of policy t-1 is measured against the reference it was
            # trained with (t-2; base early on), unless the caller names one
            reference = options.pop("reference", self.name(t - 2))
            summary = _generate_pairs(
                self.service_url, self.method, self.prompts, self.images,
                folder / "pairs.jsonl", self.name(t), self.name(t - 1), reference, t, options,
            )  # fmt: skip
            seconds = round(time.perf_counter() - started, 3)
            state.mark(t, "pairs", pairs_summary=summary, pairs_seconds=seconds)
            worked = True
        if not state.done(t, "trained"):
            if self.train_overrides.get("merge_adapter"):
                summary = self._train_merged(t, previous)
            else:
                summary = _train(
                    self.service_url, self.model, self.name(t), folder / "train",
                    previous, self.name(t - 1),
                    {**_iteration_overrides(self.train_overrides, t),
                     "fresh_adapter": self.train_overrides.get("fresh_adapter")},
                    self.launcher,
                )  # fmt: skip
            state.mark(t, "trained", train=summary)
            worked = True
        uploaded = state.done(t, "uploaded")
        name = self.name(t)
        worked |= _upload(self.client, name, folder / "train" / "adapter", uploaded)
        if not uploaded:
            state.mark(t, "uploaded")
        return worked

    def _train_merged(self, t: int, previous: Path | None) -> dict[str, Any]:
        """`merge_adapter`: a fresh LoRA on M_{t−1} (the base with adapter t−1 merged in; the
        base itself at t = 1 without `init_adapter`), M_{t−1} as its reference. Adapter t, what
        the service and the evaluator use, is adapter t−1 and the fresh one stacked into one
        LoRA (`trainer.merge`), written to `iter{t}/train/adapter`."""
        from selfreward_vlm.trainer.merge import merged_model, stack_adapters

        folder = self.work / f"iter{t}"
        model = self.model
        if previous is not None:
            model = str(merged_model(self.model, previous, self.work / f"iter{t - 1}" / "merged"))
        summary = _train(
            self.service_url, model, self.name(t), folder / "train-fresh", None,
            self.name(t - 1), _iteration_overrides(self.train_overrides, t), self.launcher,
        )  # fmt: skip
        fresh = folder / "train-fresh" / "adapter"
        stack_adapters([previous, fresh] if previous else [fresh], folder / "train" / "adapter")
        return {**summary, "merged_model": model, "fresh_adapter_dir": str(fresh)}


def check_iterate(
    method: str, has_init: bool, preset: str | None, method_options: dict[str, Any]
) -> None:
    """Refuse, before any work, what cannot give meaningful pairs (a ValueError): an unknown
    method, preset or option, and SBSPO without a starting policy (t = 1 scores iteration 0
    against the base: with no `init_adapter` both are the base and every reward is 0)."""
    from selfreward_vlm.client.methods import build_config, check_run
    from selfreward_vlm.core.presets import method_for_preset

    method = method_for_preset(method, preset)
    options = {k: v for k, v in method_options.items() if k not in ("reference", "preset")}
    build_config(method, preset, **options)
    try:
        check_run(method, adapter_name("run", 0, has_init), method_options.get("reference", "base"))
    except ValueError as exc:
        raise ValueError(f"iterate --method {method} needs --init-adapter: {exc}") from None


def iterate(
    service_url: str,
    method: str,
    prompts: str | Path,
    images: str | Path,
    iterations: int,
    work_dir: str | Path,
    model: str | None = None,
    train_overrides: dict[str, Any] | None = None,
    method_options: dict[str, Any] | None = None,
    run: str | None = None,
    init_adapter: str | Path | None = None,
    preset: str | None = None,
    launcher: str | None = None,
) -> list[IterationRecord]:
    """Run (or resume) `iterations` rounds of pairs -> DPO -> upload; see the module doc.

    `model`: the base model for training (default: the one the service reports it serves).
    `train_overrides`: DPOTrainConfig fields (e.g. lr, max_steps, or `config`: a config file).
    `method_options`: fields of the method's client config (num_candidates, max_new_tokens,
    ...), plus `reference` (the implicit-reward reference adapter name).
    `run`: prefix of dataset and adapter names (default: the work dir's name).
    `init_adapter`: a LoRA dir to start from (iteration 0; SBSPO needs one).
    `preset`: paper | official | tuned (core.presets); explicit options win; under
    a preset, `method="csr"` runs the preset's CSR (`csr-official` under `official`).
    `launcher`: run each train stage under it, e.g. `accelerate launch --num_processes 8`.
    Prints the table after each iteration; writes work/iterations.json.
    """
    from rich.console import Console

    from selfreward_vlm.client import ScoringClient
    from selfreward_vlm.core.presets import method_for_preset, train_options

    if method_for_preset(method, preset) != method:
        print(f"--preset {preset}: --method {method} runs {method_for_preset(method, preset)}",
              file=sys.stderr)  # fmt: skip
        method = method_for_preset(method, preset)
    work = Path(work_dir)
    run = run or work.resolve().name
    init = Path(init_adapter) if init_adapter else None
    options = dict(method_options or {})
    if preset is not None:
        options = {"preset": preset, **options}
    check_iterate(method, init is not None, preset, options)
    work.mkdir(parents=True, exist_ok=True)
    client = ScoringClient(service_url, api_key=os.environ.get("SELFREWARD_API_KEY"))
    loop = _Loop(
        service_url.rstrip("/"), method, str(prompts), str(images), work, run,
        model or client.info().model.model, {**train_options(preset), **(train_overrides or {})},
        options, IterationState(work), client, init, launcher,
    )  # fmt: skip
    # A log file (no terminal) gets wide tables rather than rich's 80-column default.
    console, records = Console(width=None if sys.stdout.isatty() else 140), []
    table_file = work / "iterations.json"
    try:
        if init is not None:
            _upload(client, loop.name(0), init, loop.state.done(0, "uploaded"))
            loop.state.mark(0, "uploaded", init_adapter=str(init))
        for t in range(1, iterations + 1):
            worked = loop.step(t)
            names = loop.name(t - 1), loop.name(t)
            entry = loop.state.entry(t)
            records.append(build_record(t, *names, entry, work / f"iter{t}" / "pairs.jsonl"))
            if worked:  # a rerun with nothing to do rewrites nothing
                table_file.write_text(json.dumps([asdict(r) for r in records], indent=2))
            console.print(render_table(records))
    finally:
        client.close()
    _write_if_changed(table_file, json.dumps([asdict(r) for r in records], indent=2))
    return records
