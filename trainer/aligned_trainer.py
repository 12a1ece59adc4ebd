"""`AlignedDPOTrainer`: TRL 1.16's DPOTrainer with the service's tokenization.

Three small overrides, each because of something DPOTrainer does (trl/trainer/dpo_trainer.py):
- `_prepare_dataset` is skipped: its text path tokenizes with TRL's own `_tokenize`; here every
  row is tokenized on the fly by `ServiceAlignedCollator`, for text and vision alike;
- the kept dataset columns include the service's per-token reference log-probs (a vision
  dataset's default signature columns would drop them);
- `precompute_ref_logps` is switched on after `__init__` when the batches carry reference
  log-probs: `_compute_loss` then reads `ref_chosen_logps`/`ref_rejected_logps` from the batch.
  (`DPOConfig(precompute_ref_log_probs=True)` itself raises for vision datasets, and would run
  the trainer's own reference forward anyway.)
"""

from __future__ import annotations

from typing import Any

from trl import DPOTrainer

SIGNATURE_COLUMNS = [
    "prompt",
    "chosen",
    "rejected",
    "images",
    "ref_chosen_token_logps",
    "ref_rejected_token_logps",
]


class AlignedDPOTrainer(DPOTrainer):
    """DPOTrainer whose batches come from `ServiceAlignedCollator` (pass it as data_collator)."""

    def __init__(self, *args: Any, service_reference: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.precompute_ref_logps = service_reference

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # type: ignore[no-untyped-def]
        return dataset  # tokenized per batch by the collator, exactly like the service

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = list(SIGNATURE_COLUMNS)  # type: ignore[assignment]
