"""The interface every model family implements, and the fast path most of them share.

A family answers what differs between VLM architectures when a prefix state is cached and text
is appended to it one token at a time:

- `image_features`: the vision tower + connector output for one image, in the form the model's
  own forward accepts back as `mm_encoder_outputs["image"]` (so it can be cached per image);
- `prefix_forward`: the model's OWN multimodal forward over image + prompt (+ prefix) tokens with
  those features, which builds positions (Qwen's 3-D M-RoPE), masks (Gemma 3's bidirectional
  image block) and merges (LLaVA-NeXT newlines, Idefics3 tiles) exactly as the model does;
- `rope_delta`: what the cached prefix state must carry so that text after it gets the position
  the model would give it (Qwen: `max(position) + 1 - length`; 0 for 1-D positions);
- `token_type_inputs`: per-token tensors the forward needs (`mm_token_type_ids`,
  `token_type_ids`), extended over prefix/continuation text.

Text after a prefix state runs through the decoder stack with position `length + rope_delta`:
for every fast-path family a text token's position (in all three M-RoPE axes) is that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

# The BOS rule, shared with the trainer's collator, lives in core; `lm.py` imports it from here.
from selfreward_vlm.core.tokenization import special_tokens_kwargs as special_tokens_kwargs

PER_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")
DROP_KEYS = ("input_ids", "attention_mask")


@dataclass
class Prompt:
    """A templated prompt: its token ids (image placeholders expanded) and the processor's
    other outputs (pixel tensors only while fresh: the prompt cache keeps the small ones)."""

    text: str
    ids: list[int]
    inputs: dict[str, Any] = field(default_factory=dict)
    has_image: bool = False

    def light(self) -> Prompt:
        """A copy without the pixel tensors (what the prompt cache may keep)."""
        small = {k: v for k, v in self.inputs.items() if not k.startswith("pixel_")}
        return Prompt(self.text, self.ids, small, self.has_image)

    def geometry(self, image_token_id: int | None) -> tuple[Any, ...]:
        """The image's shape as the model sees it: part of every feature cache key, so two
        images of different sizes never share features. Built from what the prompt cache keeps
        (`light()`), so a fresh and a cached prompt give the same key, and independent of the
        prompt's text, so other prompts on the same image reuse the features: the number of
        image tokens (tiles, grid) plus the grid and size tensors where the family has them."""
        out: list[Any] = [sum(1 for t in self.ids if t == image_token_id)]
        for key in ("image_grid_thw", "image_sizes"):
            value = self.inputs.get(key)
            if isinstance(value, torch.Tensor):
                out.append((key, *value.flatten().tolist()))
        return tuple(out)


class Family:
    """Fast path: cached image features, prefix KV states, text through the decoder stack."""

    name: ClassVar[str] = "llava"
    path: ClassVar[str] = "fast"
    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: Any):
        self.model = model  # the *ForConditionalGeneration
        self.inner = getattr(model, "model", model)  # the *Model: tower, connector, decoder

    # ---------------------------------------------------------------- images

    def feature_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Arguments of `get_image_features`, exactly as the model's forward passes them."""
        return {"pixel_values": inputs["pixel_values"]}

    def image_features(self, inputs: dict[str, Any]) -> Any:
        """The encoder output the forward takes back as `mm_encoder_outputs["image"]`."""
        kwargs = self.feature_kwargs(self.to_device(inputs))
        return self.inner.get_image_features(**kwargs, return_dict=True)

    # ---------------------------------------------------------------- prefix

    def token_type_inputs(self, inputs: dict[str, Any], length: int) -> dict[str, torch.Tensor]:
        """Per-token inputs, padded with 0 (text) over tokens appended after the prompt."""
        out = {}
        for key in PER_TOKEN_KEYS:
            value = inputs.get(key)
            if isinstance(value, torch.Tensor):
                pad = length - value.shape[-1]
                out[key] = torch.nn.functional.pad(value, (0, pad)) if pad > 0 else value
        return out

    def forward_kwargs(self, inputs: dict[str, Any], ids: torch.Tensor) -> dict[str, Any]:
        """Non-pixel inputs of the multimodal forward (positions are the model's own)."""
        return {}

    def prefix_forward(
        self, ids: Sequence[int], inputs: dict[str, Any], features: Any, cache: Any
    ) -> tuple[torch.Tensor, int]:
        """The model's own forward over `ids` with cached image `features`; fills `cache` and
        returns the last hidden states (1, T, H) and the rope delta of text after them."""
        device = self.model.device
        ids_t = torch.tensor([list(ids)], device=device)
        kwargs = {**self.forward_kwargs(inputs, ids_t)}
        kwargs.update(self.to_device(self.token_type_inputs(inputs, len(ids))))
        kwargs[cache_keyword(self.inner)] = cache
        out = self.inner(
            input_ids=ids_t, mm_encoder_outputs={"image": features}, use_cache=True, **kwargs
        )
        return out.last_hidden_state, self.rope_delta(ids_t, inputs, kwargs)

    def rope_delta(self, ids: torch.Tensor, inputs: dict[str, Any], kwargs: dict[str, Any]) -> int:
        return 0

    # ---------------------------------------------------------------- helpers

    def to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        dev, dtype = self.model.device, self.model.dtype
        return {
            k: (v.to(dev, dtype) if v.is_floating_point() else v.to(dev))
            if isinstance(v, torch.Tensor)
            else v
            for k, v in inputs.items()
        }


def cache_keyword(module: Any) -> str:
    """`cache` where the forward takes it (transformers 5 renamed `past_key_values`, which still
    works there but warns), else `past_key_values`."""
    import inspect

    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class UnsupportedModelError(RuntimeError):
    """The service cannot score this model correctly; the message names what is unsupported."""
