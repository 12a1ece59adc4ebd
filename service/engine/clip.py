"""CLIP relevance: cosine of image and text embeddings, with caches. Models: open_clip names
(CLIP, SigLIP, SigLIP 2) and `local-dir:` folders, or transformers `CLIPModel`/`SiglipModel`
directories (adapted to open_clip's interface by `clip_hf`)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfreward_vlm.core.schemas import Usage
from selfreward_vlm.service.engine.cache import LRUCache


@dataclass
class ClipResult:
    cosine: float
    truncated: bool


class ClipScorer:
    """An open_clip model: `cosines(image_id, image, texts)` → cosine per text."""

    def __init__(
        self,
        model: Any,
        preprocess: Any,
        tokenizer: Any,
        name: str,
        device: torch.device,
        cache_size: int,
    ):
        self.model, self.preprocess, self.tokenizer, self.name = model, preprocess, tokenizer, name
        self.device = device
        self.context_length = int(getattr(tokenizer, "context_length", 77))
        self.lock = threading.Lock()
        self.image_cache: LRUCache[torch.Tensor] = LRUCache(cache_size)
        self.text_cache: LRUCache[tuple[torch.Tensor, bool]] = LRUCache(cache_size)

    @classmethod
    def load(cls, spec: str, device: torch.device, cache_size: int) -> ClipScorer:
        """`spec`: a local open_clip or transformers CLIP/SigLIP directory, `local-dir:DIR`,
        `hf-hub:ID`, `NAME:PRETRAINED` (e.g. `ViT-SO400M-14-SigLIP-384:webli`)."""
        import open_clip

        from selfreward_vlm.service.engine.clip_hf import is_hf_clip_dir, load_hf_dual_encoder

        if is_hf_clip_dir(spec):
            model, preprocess, tokenizer = load_hf_dual_encoder(spec, device)
            return cls(model, preprocess, tokenizer, spec, device, cache_size)
        if Path(spec).is_dir():
            name, pretrained = f"local-dir:{spec}", None
        elif spec.startswith(("local-dir:", "hf-hub:")):
            name, pretrained = spec, None
        else:
            name, _, pretrained = spec.partition(":")
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained or None, device=device
        )
        tokenizer = open_clip.get_tokenizer(name)
        return cls(model.eval(), preprocess, tokenizer, spec, device, cache_size)

    @property
    def logit_scale(self) -> float | None:
        """exp(learned logit scale): CLIP's own multiplier of the cosine (100 for OpenAI CLIP;
        SigLIP's sigmoid uses it with a bias), reported so users can pick `scale`."""
        value = getattr(self.model, "logit_scale", None)
        if value is None:
            return None
        return float(torch.as_tensor(value).detach().float().exp().reshape(-1)[0])

    def n_tokens(self, text: str) -> int:
        """BPE tokens of `text` plus start/end tokens (what CLIP's context must hold)."""
        count = getattr(self.tokenizer, "count", None)
        if count is not None:  # transformers tokenizers (clip_hf) count their own specials
            return int(count(text))
        encode = getattr(self.tokenizer, "encode", None)
        if encode is not None:
            return len(encode(text)) + 2
        return len(self.tokenizer.tokenizer(text)["input_ids"])  # HF tokenizers count specials

    @torch.inference_mode()
    def image_embedding(self, image_id: str | None, image: Any, usage: Usage) -> torch.Tensor:
        hit = self.image_cache.get(image_id) if image_id else None
        if hit is not None:
            usage.image_cache_hits += 1
            return hit
        pixels = self.preprocess(image).unsqueeze(0).to(self.device)
        emb = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)[0]
        usage.image_encodes += 1
        if image_id:
            self.image_cache.put(image_id, emb)
        return emb

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> list[tuple[torch.Tensor, bool]]:
        out: dict[str, tuple[torch.Tensor, bool]] = {}
        missing = []
        for t in dict.fromkeys(texts):
            hit = self.text_cache.get(t)
            if hit is None:
                missing.append(t)
            else:
                out[t] = hit
        if missing:
            tokens = self.tokenizer(missing).to(self.device)
            embs = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
            for t, e in zip(missing, embs, strict=True):
                value = (e, self.n_tokens(t) > self.context_length)
                out[t] = value
                self.text_cache.put(t, value)
        return [out[t] for t in texts]

    def cosines(
        self, image_id: str | None, image: Any, texts: Sequence[str], usage: Usage
    ) -> list[ClipResult]:
        with self.lock:
            img = self.image_embedding(image_id, image, usage)
            return [ClipResult(float(img @ e), trunc) for e, trunc in self.text_embeddings(texts)]
