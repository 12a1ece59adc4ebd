"""transformers `CLIPModel` / `SiglipModel` (and SigLIP 2) directories behind open_clip's
interface (`encode_image`, `encode_text`, `logit_scale`, a preprocess callable, a tokenizer
callable), so `ClipScorer` serves them with the same caches and the same cosine.

SigLIP is trained with a sigmoid over `logit_scale * cos + logit_bias`, but its embeddings are
still compared by cosine: `R_I = max(scale * cos, 0)` works the same, and /info reports the
model's logit scale so users can pick `scale`. SigLIP's text tower was trained on texts padded
to its full context ("max_length" padding), CLIP's to the longest text; each gets its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

# SigLIP 2 directories are not here: their image tower also needs `pixel_attention_mask` and
# `spatial_shapes` (NaFlex); SigLIP 2 is served through its open_clip names.
HF_CLIP_TYPES = ("clip", "siglip")


def is_hf_clip_dir(spec: str) -> bool:
    """A local transformers directory whose config is a CLIP/SigLIP dual encoder."""
    config = Path(spec) / "config.json"
    if not config.is_file():
        return False
    return json.loads(config.read_text()).get("model_type") in HF_CLIP_TYPES


class HFTextTokenizer:
    """texts -> a BatchEncoding (`.to(device)` works), plus exact token counts."""

    def __init__(self, tokenizer: Any, context_length: int, pad_to_max: bool):
        self.tokenizer, self.context_length, self.pad_to_max = tokenizer, context_length, pad_to_max

    def __call__(self, texts: list[str]) -> Any:
        return self.tokenizer(
            texts,
            padding="max_length" if self.pad_to_max else True,
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )

    def count(self, text: str) -> int:
        """Tokens of `text` with the special tokens the tokenizer adds."""
        return len(self.tokenizer(text)["input_ids"])


class HFDualEncoder(torch.nn.Module):
    """A transformers CLIP/SigLIP model with open_clip's `encode_image`/`encode_text`."""

    def __init__(self, model: Any):
        super().__init__()
        self.inner = model
        self.logit_scale = model.logit_scale  # a log scale, as open_clip's

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.inner.get_image_features(pixel_values=pixels))

    def encode_text(self, batch: Any) -> torch.Tensor:
        # The mask only where the tokenizer gives one (SigLIP's own tokenizer does not), as
        # `model(**processor(text=...))` would pass it.
        kwargs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
        return _features(self.inner.get_text_features(**kwargs))


def _features(out: Any) -> torch.Tensor:
    """transformers 5 may return a model output whose pooler_output holds the embeddings."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_hf_dual_encoder(spec: str, device: torch.device) -> tuple[Any, Any, Any]:
    """(model, preprocess(image) -> (3, H, W), tokenizer) for a transformers CLIP/SigLIP dir."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(spec).to(device).eval()  # type: ignore[arg-type]
    processor = AutoProcessor.from_pretrained(spec)
    siglip = model.config.model_type.startswith("siglip")
    context = int(model.config.text_config.max_position_embeddings)

    def preprocess(image: Any) -> torch.Tensor:
        return processor.image_processor(image, return_tensors="pt")["pixel_values"][0]

    tokenizer = HFTextTokenizer(processor.tokenizer, context, pad_to_max=siglip)
    return HFDualEncoder(model).eval(), preprocess, tokenizer
