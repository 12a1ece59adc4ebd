"""Multi-process training on an existing engine (accelerate: DDP, DeepSpeed configs shipped).

A DPO run under `accelerate launch` with two processes (gloo on CPU) and per-process batch 1
must give the adapter of a single-process run with batch 2 (the same global batch): DDP
averages the two processes' gradients, and accelerate's seeded sampler shards the same shuffled
order across them. Stated tolerance: every LoRA weight within 1e-4 (measured: 5e-6), while the
two optimizer steps move the weights by ~1e-2. The launch goes through `iterate`'s `--launcher`
path (`trainer.iterate._launch_train`).

Note: accelerate 1.x's `--cpu` flag always picks its single-process launcher, so the two CPU
processes are started with `--multi_gpu --num_processes 2` on a machine (or with
CUDA_VISIBLE_DEVICES) without GPUs: torchrun spawns them and they fall back to gloo on CPU.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.trainer.test_trainer import config, make_pairs

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "deploy" / "accelerate").glob("*.yaml"))
TOLERANCE = 1e-4


def test_shipped_accelerate_configs_parse(tmp_path: Path) -> None:
    """DDP, ZeRO-2 and ZeRO-3 configs load with accelerate's own config class (which refuses
    unknown keys, so a typo fails here)."""
    from accelerate.commands.config.config_args import ClusterConfig

    stages = {}
    for path in CONFIGS:
        loaded = ClusterConfig.from_yaml_file(str(path))
        stages[path.stem] = (
            loaded.distributed_type.value,
            loaded.deepspeed_config.get("zero_stage"),
        )
    assert stages == {
        "ddp": ("MULTI_GPU", None),
        "zero2": ("DEEPSPEED", 2),
        "zero3": ("DEEPSPEED", 3),
    }
    typo = tmp_path / "typo.yaml"
    typo.write_text(CONFIGS[0].read_text().replace("num_processes", "num_processs"))
    with pytest.raises(ValueError, match="unknown keys"):
        ClusterConfig.from_yaml_file(str(typo))


@pytest.mark.slow
def test_two_process_dpo_step_equals_one_process(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    from selfreward_vlm.localserver import free_port
    from selfreward_vlm.trainer.dpo import train
    from selfreward_vlm.trainer.iterate import _launch_train

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU processes, even on a GPU box
    pairs = make_pairs(tmp_path, n=4)
    common = {"lr": 1e-2, "max_steps": 2, "seed": 7, "lora_dropout": 0.0}
    single = train(config(tiny_models, pairs, tmp_path / "single", batch_size=2, **common))
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    launcher = (
        f"{accelerate} launch --multi_gpu --num_processes 2 --main_process_port {free_port()}"
    )
    multi_cfg = config(tiny_models, pairs, tmp_path / "multi", batch_size=1, **common)
    summary = _launch_train(launcher, multi_cfg, tmp_path / "multi")
    assert summary["steps"] == single.steps == 2
    assert summary["first_loss"] == pytest.approx(single.first_loss, abs=1e-6)
    one = load_file(Path(single.adapter_dir) / "adapter_model.safetensors")
    two = load_file(tmp_path / "multi" / "adapter" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    moved = max(one[k].abs().max().item() for k in one if "lora_B" in k)  # B starts at 0
    assert moved > 1e-3
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    assert diff < TOLERANCE, f"max |single - ddp| = {diff:.2e} (weights moved {moved:.2e})"
    written = json.loads((tmp_path / "multi" / "train_summary.json").read_text())
    assert written["steps"] == 2  # written once, by the main process
