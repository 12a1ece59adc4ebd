"""The policy model: tokenization, image features, prefix KV states and continuation scoring.

The image + prompt (+ prefix) runs through the model's own multimodal forward (its family
module supplies cached image features, positions and per-token inputs; see `families`); its KV
state is cached and shared by all continuations, which run through the decoder stack at
position `length + rope_delta`. Models without a family module take the generic path: their
own full forward for every score. Tests check the numbers against `model(**processor(...))`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from selfreward_vlm.core.schemas import Usage
from selfreward_vlm.service.engine.adapters import AdapterRegistry
from selfreward_vlm.service.engine.cache import LRUCache, PrefixCache, PrefixState
from selfreward_vlm.service.engine.families import Prompt, pick_family
from selfreward_vlm.service.engine.families.base import cache_keyword, special_tokens_kwargs
from selfreward_vlm.service.engine.generic_path import generic_score
from selfreward_vlm.service.engine.rows import ScoredTokens, score_grouped, score_rows
from selfreward_vlm.service.errors import InvalidRequestError
from selfreward_vlm.service.settings import ServiceSettings


@dataclass
class ScoreItem:
    """Continuations to score after one image + prompt + prefix, under one adapter."""

    adapter: str
    prompt: str
    continuations: Sequence[str]
    prefix: str = ""
    image_id: str | None = None
    image: Any = None  # PIL image (only needed on a feature-cache miss)
    append_eos: bool = False
    usage: Usage = field(default_factory=Usage)


class LanguageEngine:
    """A causal LM or LLaVA-style VLM with LoRA adapters, caches and batched scoring."""

    def __init__(self, model: Any, processor: Any, kind: str, settings: ServiceSettings):
        self.hf = model  # the transformers model; PEFT injects LoRA layers into it in place
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.kind = kind
        self.settings = settings
        self.family = pick_family(model, kind, settings.model_path)
        self.naive = settings.naive_mode
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.lock = threading.RLock()  # one forward at a time; adapter swaps wait for it
        self.adapters = AdapterRegistry(self)
        self.decoder = model.get_decoder()
        self.cache_kw = cache_keyword(self.decoder)
        # Only where the model's own forward caps its logits: a causal LM reads it from its top
        # config (Gemma 2/3 text); Gemma 3's VLM keeps it in text_config and does not apply it.
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        cfg = model.config
        self.image_token_id = getattr(cfg, "image_token_id", None) or getattr(
            cfg, "image_token_index", None
        )
        self.eos_token_id = self.tokenizer.eos_token_id
        self.pad_token_id = self.tokenizer.pad_token_id or 0
        n_img = 0 if self.naive else settings.image_cache_size
        n_pfx = 0 if self.naive else settings.prefix_cache_size
        self.image_features: LRUCache[Any] = LRUCache(n_img)
        self.prompts: LRUCache[Prompt] = LRUCache(4 * n_img)
        self.prefix_cache = PrefixCache(n_pfx, settings.prefix_cache_tokens)
        self._stop_sets: dict[tuple[str, str], frozenset[int]] = {}
        mode = settings.cross_prefix_batching
        self.cross_prefix_batching = mode == "on" or (mode == "auto" and self.device.type == "cuda")
        self.never_generate = [
            t
            for t in (self.image_token_id, self.tokenizer.pad_token_id)
            if t is not None and t != self.eos_token_id
        ]

    # ------------------------------------------------------------------ tokenization

    def render_prompt(self, prompt: str, with_image: bool) -> str:
        """The chat-templated user turn plus the generation prompt (assistant tag)."""
        if self.kind == "vlm":
            content: Any = [{"type": "text", "text": prompt}]
            if with_image:
                content = [{"type": "image"}, *content]
        else:
            content = prompt
        messages = [{"role": "user", "content": content}]
        template_owner = self.processor if self.kind == "vlm" else self.tokenizer
        if getattr(template_owner, "chat_template", None):
            return str(
                template_owner.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            )
        return prompt

    # Looked up on every call, never stored: a LoRA on lm_head / embed_tokens (or
    # modules_to_save) makes PEFT swap these modules for wrappers on their parent after build.
    @property
    def lm_head(self) -> Any:
        """The output projection as the model holds it now (a PEFT wrapper if adapted)."""
        return self.hf.get_output_embeddings()

    @property
    def embed(self) -> Any:
        """The input embedding as the model holds it now (a PEFT wrapper if adapted)."""
        return self.hf.get_input_embeddings()

    @property
    def path(self) -> str:
        """ "fast" (family module with caches) or "generic" (the model's own full forward)."""
        return self.family.path

    def encode_prompt(self, prompt: str, image_id: str | None, image: Any) -> Prompt:
        """The templated prompt, image placeholders expanded, with the processor's outputs.

        Cached per (prompt, image id) without pixel tensors; an image id names the image's
        bytes, so its size, tiles and grid are the same on every request.
        """
        key = (prompt, image_id, image is not None)
        cacheable = image is None or image_id is not None
        hit = self.prompts.get(key) if cacheable else None
        if hit is not None:
            return hit
        text = self.render_prompt(prompt, image is not None or image_id is not None)
        if self.kind == "vlm" and image is not None:
            out = self.processor(
                text=text, images=image, return_tensors="pt", **self.special_tokens(text)
            )
            ids = out["input_ids"][0].tolist()
            inputs = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}
            result = Prompt(text, ids, inputs, has_image=True)
        else:
            result = Prompt(
                text, list(self.tokenizer(text, **self.special_tokens(text))["input_ids"])
            )
        if cacheable:
            self.prompts.put(key, result.light())
        return result

    def pixel_inputs(self, prompt: Prompt, image: Any) -> dict[str, Any]:
        """The processor's outputs including pixels (re-run if the cache dropped them)."""
        if any(k.startswith("pixel_") for k in prompt.inputs):
            return prompt.inputs
        kwargs = self.special_tokens(prompt.text)
        out = self.processor(text=prompt.text, images=image, return_tensors="pt", **kwargs)
        return {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}

    def special_tokens(self, text: str) -> dict[str, Any]:
        """No second BOS for a prompt that starts with one (`special_tokens_kwargs`)."""
        return special_tokens_kwargs(self.tokenizer, text)

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def check_no_image_tokens(self, ids: Sequence[int], field: str) -> None:
        """Placeholder tokens belong to the prompt only: in assistant text they would desync the
        image features from their slots (a generated `<image>` fed back as text has no image)."""
        if self.image_token_id is not None and self.image_token_id in ids:
            raise InvalidRequestError(
                "the image placeholder token may appear only in the prompt's image slot",
                field=field,
            )

    def stop_token_ids(self, stop: str, stop_text: str) -> frozenset[int]:
        """Token ids that end a candidate: EOS, plus every token whose text contains the
        delimiter (stop='sentence'), or only the token that IS the delimiter (stop='token':
        its vocabulary string equals `stop_text`, as `eos_token_id=period_id` stops the
        official CSR code at "." alone)."""
        key = (stop, stop_text)
        if key not in self._stop_sets:
            ids = {self.eos_token_id}
            if stop == "sentence":
                texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
                ids |= {i for i, t in enumerate(texts) if stop_text in t}
            elif stop == "token":
                pieces = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
                exact = {i for i, t in enumerate(pieces) if t == stop_text}
                if not exact:
                    raise InvalidRequestError(
                        f"stop 'token': no token of this model's vocabulary is {stop_text!r}",
                        field="stop_text",
                    )
                ids |= exact
            self._stop_sets[key] = frozenset(i for i in ids if i is not None)
        return self._stop_sets[key]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    # ------------------------------------------------------------------ image features

    def image_embeds(self, image_id: str | None, image: Any, prompt: Prompt, usage: Usage) -> Any:
        """The image's encoder output (what the forward takes as `mm_encoder_outputs`), cached
        per image, geometry (tiles, grid, size) and vision scope (adapters on the tower)."""
        key = (self.adapters.vision_scope(), image_id, prompt.geometry(self.image_token_id))
        hit = self.image_features.get(key) if image_id is not None else None
        if hit is not None:
            usage.image_cache_hits += 1
            return hit
        out = self.family.image_features(self.pixel_inputs(prompt, image))
        # Keep what the forward reads back; the tower's hidden states would only cost memory.
        feats = type(out)(
            **{k: v for k, v in out.items() if k in ("pooler_output", "deepstack_features")}
        )
        usage.image_encodes += 1
        if image_id is not None:
            self.image_features.put(key, feats)
        return feats

    # ------------------------------------------------------------------ forward

    def run_decoder(
        self,
        embeds: torch.Tensor,
        past: list[tuple[torch.Tensor, torch.Tensor]] | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        layers: list[Any] | None = None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Run the decoder stack; returns last hidden states (B, T, H) and the new per-layer KV.
        `layers`: cache layers to extend (decoding's in-place buffers) instead of `past`."""
        cache = DynamicCache()
        if layers is not None:
            cache.layers = layers
        elif past:
            # Hand the tensors over as they are: DynamicCache(ddp_cache_data=...) would copy
            # every prefix KV once more before the forward concatenates it anyway.
            cache.layers = [_layer(k, v) for k, v in past]
        out = self.decoder(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{self.cache_kw: cache},
        )
        kv = _kv_of(out.past_key_values)
        return out.last_hidden_state, kv

    def logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Raw log-softmax over the vocabulary, in float32 (after the logit soft-capping that
        the model's own head applies, e.g. Gemma 2's `final_logit_softcapping`)."""
        logits = self.lm_head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return torch.log_softmax(logits, dim=-1)

    # ------------------------------------------------------------------ prefix states

    def namespace(self, adapter: str, image_id: str | None) -> tuple[Any, ...]:
        return (adapter, self.adapters.version(adapter), image_id)

    def prefix_state(
        self,
        adapter: str,
        image_id: str | None,
        image: Any,
        prompt: Prompt,
        ids: list[int],
        min_reuse: int,
        usage: Usage,
    ) -> PrefixState:
        """The KV state after `ids`, reusing the longest cached prefix of at least `min_reuse`
        (one forward for what the cache lacks)."""
        job = Prefill(self, adapter, image_id, image, prompt, ids, min_reuse, usage)
        while job.state is None:
            job.run()
        return job.state

    def item_state(self, item: ScoreItem) -> tuple[PrefixState, list[list[int]]]:
        """Prefix state of an item and the token ids of its continuations (limits checked)."""
        prompt = self.encode_prompt(item.prompt, item.image_id, item.image)
        prompt_ids = prompt.ids
        ids = prompt_ids + self.encode_text(item.prefix)
        self.check_no_image_tokens(ids[len(prompt_ids) :], "prefix")
        conts = [self.encode_text(c) for c in item.continuations]
        for i, c in enumerate(conts):
            self.check_no_image_tokens(c, f"continuations[{i}]")
        if item.append_eos:
            conts = [[*c, self.eos_token_id] for c in conts]
        limit = self.settings.max_text_tokens
        for i, c in enumerate(conts):
            if len(ids) + len(c) > limit:
                raise InvalidRequestError(
                    f"prompt + prefix + continuation is {len(ids) + len(c)} tokens, over the "
                    f"limit of {limit}",
                    field=f"continuations[{i}]",
                )
        state = self.prefix_state(
            item.adapter, item.image_id, item.image, prompt, ids, len(prompt_ids), item.usage
        )
        return state, conts

    # ------------------------------------------------------------------ scoring

    @torch.inference_mode()
    def score(self, items: Sequence[ScoreItem]) -> list[list[ScoredTokens]]:
        """Token log-probs of every continuation of every item (items share one adapter)."""
        if not items:
            return []
        adapter = items[0].adapter
        with self.lock, self.adapters.active(adapter):
            if self.family.path == "generic":
                return [generic_score(self, item) for item in items]
            if self.naive:
                return [self._score_naive(item) for item in items]
            rows: list[tuple[PrefixState, list[int], Usage]] = []
            for item in items:
                state, conts = self.item_state(item)
                rows.extend((state, c, item.usage) for c in conts)
            flat = score_grouped(self, rows)
        out: list[list[ScoredTokens]] = []
        k = 0
        for item in items:
            out.append(flat[k : k + len(item.continuations)])
            k += len(item.continuations)
        return out

    def _score_naive(self, item: ScoreItem) -> list[ScoredTokens]:
        """The published code's way: image + prompt + prefix + continuation, one at a time."""
        prompt = self.encode_prompt(item.prompt, item.image_id, item.image)
        ids = prompt.ids + self.encode_text(item.prefix)
        results = []
        for text in item.continuations:
            cont = self.encode_text(text) + ([self.eos_token_id] if item.append_eos else [])
            if len(ids) + len(cont) > self.settings.max_text_tokens:
                raise InvalidRequestError("text over the token limit", field="continuations")
            state = self.prefix_state(
                item.adapter, item.image_id, item.image, prompt, ids, 0, item.usage
            )
            results.append(score_rows(self, [(state, cont, item.usage)])[0])
        return results


class Prefill:
    """The KV state after `ids` (image + prompt + prefix), computed in one forward or, for the
    scheduler, in chunks between decode steps, so that a long prompt joining does not hold the
    running generations for its whole prefill.

    The longest cached prefix of at least `min_reuse` tokens is reused. An image prompt's own
    multimodal forward (its image block's attention and positions are the model's code) is one
    piece, the first; text after it, or after a cached state, goes through the decoder stack in
    chunks of at most `run(limit)` tokens each. `state` is set once all of `ids` is in."""

    def __init__(
        self,
        engine: LanguageEngine,
        adapter: str,
        image_id: str | None,
        image: Any,
        prompt: Prompt,
        ids: list[int],
        min_reuse: int,
        usage: Usage,
    ):
        self.engine, self.image_id, self.image = engine, image_id, image
        self.prompt, self.ids, self.usage = prompt, ids, usage
        self.namespace = engine.namespace(adapter, image_id)
        # An image without an id cannot be told apart from another one: never cache its state.
        self.cacheable = not engine.naive and (image is None or image_id is not None)
        self.state: PrefixState | None = None
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.length, self.rope_delta = 0, 0
        hit = (
            engine.prefix_cache.longest_prefix(self.namespace, ids, min_reuse)
            if self.cacheable
            else None
        )
        if hit is not None:
            usage.tokens_cached += hit.length
            if hit.length == len(ids):
                self.state = hit
            self.kv, self.length, self.rope_delta = hit.kv, hit.length, hit.rope_delta

    def run(self, limit: int | None = None) -> int:
        """Forward the next piece (all that is left when `limit` is None); returns its tokens."""
        engine, ids, start = self.engine, self.ids, self.length
        if self.kv is None and self.prompt.has_image:
            # the whole prompt (and its prefix, when the limit allows) with cached features
            whole = limit is None or len(ids) <= limit
            end = len(ids) if whole else len(self.prompt.ids)
            cache = DynamicCache()
            feats = engine.image_embeds(self.image_id, self.image, self.prompt, self.usage)
            hidden, self.rope_delta = engine.family.prefix_forward(
                ids[:end], self.prompt.inputs, feats, cache
            )
            kv = _kv_of(cache)
        else:
            end = len(ids) if limit is None else min(len(ids), start + max(limit, 1))
            embeds = engine.embed(torch.tensor([ids[start:end]], device=engine.device))
            positions = torch.arange(start, end, device=engine.device)[None] + self.rope_delta
            hidden, kv = engine.run_decoder(embeds, self.kv, None, positions)
        self.usage.tokens_forwarded += end - start
        self.kv, self.length = kv, end
        if end == len(ids):
            logp = engine.logprobs(hidden[0, -1])
            self.state = PrefixState(self.namespace, tuple(ids), kv, logp, self.rope_delta)
            if self.cacheable:
                engine.prefix_cache.put(self.state)
        return end - start


def _kv_of(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of a `DynamicCache` after a forward."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def _layer(keys: torch.Tensor, values: torch.Tensor) -> DynamicLayer:
    layer = DynamicLayer()
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values
    return layer
