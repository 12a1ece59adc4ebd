"""Batches tokenized exactly the way the service's `POST /v1/logprobs` tokenizes.

TRL's `DataCollatorForVisionPreference` tokenizes the rendered prompt with
`add_special_tokens=False`, so for a tokenizer that adds BOS (LLaVA-1.5's Llama tokenizer) its
sequences lack the BOS the service scores with, and log-probs from the service would not be the
trainer's. This collator makes the trainer's tokenization the service's, by construction:

- prompt: the chat template with `add_generation_prompt=True` over
  `[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]`
  (text-only: content is the plain prompt string), tokenized by the processor WITH its default
  special tokens unless the rendered text already starts with BOS (transformers' own rule);
  the processor expands the image placeholder;
- completion: `tokenizer(response + eos_token, add_special_tokens=False)` -- the service's
  continuation `response + "</s>"` with `prefix=""`.

Batch layout is TRL's: rows [chosen..., rejected...], right padded, `completion_mask` marking
completion tokens. Per-token processor outputs (Qwen's `mm_token_type_ids`, Gemma 3's
`token_type_ids`, which the model needs for M-RoPE positions and the bidirectional image mask)
are extended with 0 (text) over the completion and padding, as the service extends them; image
tensors with a per-image tile axis (Idefics3/SmolVLM, LLaVA-NeXT) are zero-padded to the most
tiles, which those models drop as padding. With service reference log-probs,
`ref_chosen_logps`/`ref_rejected_logps` are the sums of the service's per-token log-probs over
the completion tokens that fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from selfreward_vlm.core.tokenization import special_tokens_kwargs
from selfreward_vlm.trainer.data import message_text

IMAGE_KEYS_SKIP = ("input_ids", "attention_mask")


def render_prompt(processing_class: Any, prompt: str, num_images: int) -> str:
    """The service's prompt rendering: the chat template with a generation prompt.

    A VLM processor gets a list of content parts (image placeholders first), a text-only
    tokenizer the plain string; without a chat template the prompt is used as is.
    """
    content: Any = prompt
    if hasattr(processing_class, "tokenizer"):  # a processor: the VLM content-parts form
        content = [{"type": "image"}] * num_images + [{"type": "text", "text": prompt}]
    if not getattr(processing_class, "chat_template", None):
        return prompt
    messages = [{"role": "user", "content": content}]
    return str(
        processing_class.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    )


def tokenizer_of(processing_class: Any) -> Any:
    return getattr(processing_class, "tokenizer", processing_class)


@dataclass
class ServiceAlignedCollator:
    """Collates TRL conversational preference rows into DPO batches (see the module doc)."""

    processing_class: Any
    max_length: int | None = None

    @property
    def eos_text(self) -> str:
        return str(tokenizer_of(self.processing_class).eos_token)

    def encode_prompt(self, prompt: str, images: list[Any]) -> tuple[list[int], dict[str, Any]]:
        """Prompt token ids (special tokens included) and the image tensors for the model."""
        text = render_prompt(self.processing_class, prompt, len(images))
        kwargs = special_tokens_kwargs(tokenizer_of(self.processing_class), text)
        if images:
            out = self.processing_class(text=[text], images=images, return_tensors="pt", **kwargs)
        else:  # as the service: no image, the tokenizer alone
            out = tokenizer_of(self.processing_class)([text], return_tensors="pt", **kwargs)
        ids = out["input_ids"][0].tolist()
        extras = {k: v for k, v in out.items() if k not in IMAGE_KEYS_SKIP}
        if not images:  # a text-only tokenizer's token_type_ids are all 0 and not needed
            extras = {}
        return ids, extras

    def encode_completion(self, response: str) -> list[int]:
        """Response + EOS, no special tokens added (the EOS text maps to the EOS id)."""
        tokenizer = tokenizer_of(self.processing_class)
        return list(tokenizer(response + self.eos_text, add_special_tokens=False)["input_ids"])

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        prompts, extras = [], []
        for ex in examples:
            ids, extra = self.encode_prompt(message_text(ex["prompt"]), ex.get("images") or [])
            if self.max_length is not None and len(ids) >= self.max_length:
                raise ValueError(
                    f"max_length {self.max_length} leaves no room for a response after a prompt "
                    f"of {len(ids)} tokens (image tokens included): raise max_length"
                )
            prompts.append(ids)
            extras.append(extra)
        rows, masks, kept = [], [], []
        for side in ("chosen", "rejected"):
            for ids, ex in zip(prompts, examples, strict=True):
                completion = self.encode_completion(message_text(ex[side]))
                room = len(completion) if self.max_length is None else self.max_length - len(ids)
                completion = completion[:room]
                rows.append(ids + completion)
                masks.append([0] * len(ids) + [1] * len(completion))
                kept.append(len(completion))
        batch = self._pad(rows, masks)
        width = batch["input_ids"].shape[1]
        per_token = {
            k for e, ids in zip(extras, prompts, strict=True) for k in per_token_keys(e, ids)
        }
        for key in sorted(per_token):
            batch[key] = _per_token(key, extras + extras, width)
        images = [{k: v for k, v in e.items() if k not in per_token} for e in extras]
        batch.update(_stack_image_tensors(images + images))  # the rejected half repeats them
        if "ref_chosen_token_logps" in examples[0]:
            n = len(examples)
            for side, offset in (("chosen", 0), ("rejected", n)):
                sums = [
                    sum(ex[f"ref_{side}_token_logps"][: kept[offset + i]])
                    for i, ex in enumerate(examples)
                ]
                batch[f"ref_{side}_logps"] = torch.tensor(sums, dtype=torch.float32)
        return batch

    def _pad(self, rows: list[list[int]], masks: list[list[int]]) -> dict[str, Any]:
        import torch

        tokenizer = tokenizer_of(self.processing_class)
        pad_id = tokenizer.pad_token_id
        pad_id = tokenizer.eos_token_id if pad_id is None else pad_id
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        completion = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention[i, : len(row)] = 1
            completion[i, : len(mask)] = torch.tensor(mask)
        return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}


def per_token_keys(extra: dict[str, Any], ids: list[int]) -> list[str]:
    """Processor outputs with one value per prompt token (shape (1, len(ids)))."""
    return [k for k, v in extra.items() if getattr(v, "shape", None) == (1, len(ids))]


def _per_token(key: str, extras: list[dict[str, Any]], width: int) -> Any:
    """(rows, width) of a per-token input: the prompt's values, then 0 (text, padding)."""
    import torch

    out = torch.zeros((len(extras), width), dtype=torch.long)
    for i, extra in enumerate(extras):
        if key in extra:
            values = extra[key][0]
            out[i, : values.shape[0]] = values
    return out


def _stack_image_tensors(extras: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate per-example image tensors (`pixel_values`, `image_sizes`, ...) in row order;
    a tile axis (dim 1 of a 5-D `pixel_values` or 4-D `pixel_attention_mask`) of differing
    length is zero-padded, as the processors pad a batch themselves."""
    import torch

    keys = sorted({k for extra in extras for k in extra})
    out = {}
    for k in keys:
        parts = [extra[k] for extra in extras if k in extra]
        if parts[0].ndim >= 4 and len({p.shape[1] for p in parts}) > 1:
            most = max(p.shape[1] for p in parts)
            parts = [_pad_dim1(p, most) for p in parts]
        out[k] = torch.cat(parts, dim=0)
    return out


def _pad_dim1(t: Any, size: int) -> Any:
    import torch

    pad = torch.zeros((t.shape[0], size - t.shape[1], *t.shape[2:]), dtype=t.dtype)
    return torch.cat([t, pad], dim=1)
