"""LoRA DPO training on preference pairs from the scoring service, and the iterative loop.

`trainer` talks to the service only through `client`. Nothing heavy (torch, transformers, trl,
peft) is imported at package import: `selfreward --help` stays fast.
"""

from selfreward_vlm.trainer.config import DPOTrainConfig

__all__ = ["DPOTrainConfig"]
