"""`train(config) -> TrainResult`: one LoRA DPO run on preference pairs (TRL DPOTrainer + PEFT).

Layout of `config.out`:
    checkpoints/checkpoint-N/   every `save_steps`; a rerun resumes from the last one
    log.jsonl                   one record per logged step (loss, rewards/margins, ...)
    adapter/                    adapter_config.json + adapter_model.safetensors, nothing else
    train_summary.json          steps, losses, margins, accuracy, pairs used/dropped, time
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selfreward_vlm.trainer.collator import ServiceAlignedCollator, tokenizer_of
from selfreward_vlm.trainer.config import DPOTrainConfig, is_http, split_dataset_url

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced; also written to `train_summary.json`."""

    adapter_dir: str
    steps: int
    pairs: dict[str, int]
    reference: str
    seconds: float
    first_loss: float | None = None
    final_loss: float | None = None
    mean_margin: float | None = None
    final_margin: float | None = None
    accuracy: float | None = None
    final_accuracy: float | None = None
    resumed_from: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dpo_args(config: DPOTrainConfig) -> Any:
    """TRL `DPOConfig` for this run (settings that are known to work on CPU and GPU)."""
    from trl import DPOConfig

    from selfreward_vlm.trainer.model import resolve_bf16

    # transformers 5 renamed gradient_checkpointing; the new name too avoids its warning
    renamed: dict[str, Any] = {
        name: False for name in ("activation_checkpointing",) if name in fields_of(DPOConfig)
    }
    return DPOConfig(
        **renamed,
        output_dir=str(Path(config.out) / "checkpoints"),
        learning_rate=config.lr,
        beta=config.beta,
        loss_type=list(config.loss_type),
        loss_weights=config.loss_weights,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        max_length=config.max_length,
        seed=config.seed,
        use_cpu=config.device == "cpu",
        bf16=resolve_bf16(config),  # TRL turns bf16 on by default, which fails on CPU
        gradient_checkpointing=False,  # LoRA fits without it; it only costs time here
        disable_dropout=config.disable_dropout,
        report_to="none",
        dataloader_pin_memory=False,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        pad_to_multiple_of=None,
    )


def fields_of(cls: type) -> set[str]:
    from dataclasses import fields

    return {f.name for f in fields(cls)}


def make_client(url: str) -> Any:
    import os

    from selfreward_vlm.client import ScoringClient

    return ScoringClient(url, api_key=os.environ.get("SELFREWARD_API_KEY"))


def load_rows(
    config: DPOTrainConfig, processing_class: Any
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Pairs -> filtered -> TRL rows (+ the service's reference log-probs when asked)."""
    from selfreward_vlm.trainer.data import (
        ImageLoader,
        filter_pairs,
        iter_pairs,
        special_token_texts,
        to_trl_row,
    )

    eos_text = tokenizer_of(processing_class).eos_token
    # pairs and their images come from the service in the pairs URL
    pair_client = make_client(split_dataset_url(config.pairs)[0]) if is_http(config.pairs) else None
    pairs, report = filter_pairs(
        iter_pairs(config.pairs, config.page_size, pair_client),
        special_token_texts(processing_class),
        eos_text,
    )
    images = ImageLoader(pair_client, config.images)
    rows = [to_trl_row(pair, images) for pair in pairs]
    if pair_client is not None:
        pair_client.close()
    if config.reference_logprobs == "service":
        rows = with_service_reference(config, processing_class, pairs, rows)
    return rows, report.to_dict()


def with_service_reference(
    config: DPOTrainConfig, processing_class: Any, pairs: list[Any], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Rows + the reference's per-token log-probs from the service's /v1/logprobs."""
    from selfreward_vlm.trainer.reference import service_reference_logps

    assert config.service_url and config.reference_name  # DPOTrainConfig checks both
    collator = ServiceAlignedCollator(processing_class, config.max_length)
    with make_client(config.service_url) as client:
        columns = service_reference_logps(client, pairs, config.reference_name, collator)
    return [{**row, **cols} for row, cols in zip(rows, columns, strict=True)]


def build_trainer(config: DPOTrainConfig) -> tuple[Any, dict[str, int], str]:
    """(AlignedDPOTrainer ready to train, pairs report, reference description)."""
    from selfreward_vlm.trainer.aligned_trainer import AlignedDPOTrainer
    from selfreward_vlm.trainer.callbacks import JsonlLogCallback, StepLineProgressCallback
    from selfreward_vlm.trainer.data import build_dataset
    from selfreward_vlm.trainer.model import build_policy, load_base, setup_reference

    model, processing_class, is_vlm = load_base(config)
    rows, report = load_rows(config, processing_class)
    dataset = build_dataset(rows)
    policy = build_policy(model, config, is_vlm)
    service_reference = config.reference_logprobs == "service"
    trainer = AlignedDPOTrainer(
        model=policy,
        args=dpo_args(config),
        train_dataset=dataset,
        processing_class=processing_class,
        data_collator=ServiceAlignedCollator(processing_class, config.max_length),
        service_reference=service_reference,
    )
    reference = setup_reference(trainer.model, config, service_reference)
    from transformers import ProgressCallback

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(StepLineProgressCallback())
    trainer.add_callback(JsonlLogCallback(Path(config.out) / "log.jsonl"))
    return trainer, report, reference


def last_checkpoint(config: DPOTrainConfig) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = Path(config.out) / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def train(config: DPOTrainConfig) -> TrainResult:
    """Train (or resume) a LoRA DPO adapter; write adapter/, log.jsonl, train_summary.json."""
    from selfreward_vlm.trainer.callbacks import read_log, summarize_log

    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer, report, reference = build_trainer(config)
    resume = last_checkpoint(config)
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    # Under `accelerate launch` every process trains (DDP / DeepSpeed); one writes the outputs.
    accelerator = trainer.accelerator
    adapter_dir = save_trained_adapter(trainer, out / "adapter")
    result = TrainResult(
        adapter_dir=str(adapter_dir),
        steps=int(trainer.state.global_step),
        pairs=report,
        reference=reference,
        seconds=round(time.perf_counter() - started, 3),
        resumed_from=resume,
        config=config.to_dict(),
        **summarize_log(read_log(out / "log.jsonl")),
    )
    if accelerator.is_main_process:
        (out / "train_summary.json").write_text(json.dumps(result.to_dict(), indent=2))
    accelerator.wait_for_everyone()  # no process returns before the adapter is on disk
    return result


def save_trained_adapter(trainer: Any, out_dir: Path) -> Path:
    """Write the trained adapter (main process). Under DeepSpeed every process must take part,
    since ZeRO-3 shards the LoRA weights: `Trainer.save_model` gathers them there."""
    import shutil

    from accelerate.utils import DistributedType

    from selfreward_vlm.trainer.model import save_adapter

    accelerator = trainer.accelerator
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        gathered = out_dir.with_name(out_dir.name + ".gathered")
        trainer.save_model(str(gathered))  # collective; writes on the main process only
        if accelerator.is_main_process:  # PEFT writes the "default" adapter at the top level
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copyfile(gathered / name, out_dir / name)
            shutil.rmtree(gathered, ignore_errors=True)
    elif accelerator.is_main_process:
        save_adapter(accelerator.unwrap_model(trainer.model), out_dir)
    return out_dir


def main(config: DPOTrainConfig) -> TrainResult:
    """TRL-style entry point (`trl dpo` scripts call `main(script_args, training_args, ...)`)."""
    return train(config)
