"""The generic path: any model `AutoModelForImageTextToText` loads, scored by its OWN forward.

Nothing about positions, masks or feature merging is assumed: every score runs
`model(input_ids=prompt + prefix + continuation, **processor outputs)` and reads the log-probs
off its logits; generation re-runs that forward for every new token. Correct first: no prefix
KV state is reused, because text appended to a cached state needs positions and masks only the
model's own code knows (Qwen's M-RoPE deltas live in a model attribute, for instance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from selfreward_vlm.service.engine.families.base import DROP_KEYS, Family


class GenericFamily(Family):
    name: ClassVar[str] = "generic"
    path: ClassVar[str] = "generic"

    def per_token_inputs(self, inputs: dict[str, Any], prompt_len: int) -> set[str]:
        """Inputs with one value per prompt token (token types, masks of unknown models)."""
        return {
            k
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor) and v.ndim == 2 and v.shape == (1, prompt_len)
        }

    @torch.inference_mode()
    def full_logprobs(
        self, ids: Sequence[int], inputs: dict[str, Any], prompt_len: int
    ) -> torch.Tensor:
        """(T, V) float32 log-softmax of the model's own forward over `ids` (prompt first)."""
        device = self.model.device
        ids_t = torch.tensor([list(ids)], device=device)
        kwargs = {k: v for k, v in inputs.items() if k not in DROP_KEYS}
        for key in self.per_token_inputs(kwargs, prompt_len):
            kwargs[key] = torch.nn.functional.pad(kwargs[key], (0, len(ids) - prompt_len))
        out = self.model(
            input_ids=ids_t,
            attention_mask=torch.ones_like(ids_t),
            use_cache=False,
            **self.to_device(kwargs),
        )
        return torch.log_softmax(out.logits[0].float(), dim=-1)
