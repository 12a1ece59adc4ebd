"""Loading: one code path for hub ids and local directories (the demo's models included)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from selfreward_vlm.core.schemas import ModelInfo, Usage
from selfreward_vlm.service.engine.clip import ClipScorer
from selfreward_vlm.service.engine.families import check_supported
from selfreward_vlm.service.engine.lm import LanguageEngine, ScoreItem
from selfreward_vlm.service.settings import ServiceSettings

log = logging.getLogger("selfreward.engine")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but CUDA is not available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass
class Models:
    """Everything the service serves: the policy engine and, optionally, CLIP."""

    engine: LanguageEngine
    clip: ClipScorer | None
    settings: ServiceSettings

    def info(self) -> ModelInfo:
        e = self.engine
        return ModelInfo(
            model=self.settings.model,
            kind="vlm" if e.kind == "vlm" else "causal_lm",
            clip=self.clip.name if self.clip else None,
            clip_context_length=self.clip.context_length if self.clip else None,
            device=str(e.device),
            dtype=str(e.dtype).removeprefix("torch."),
            eos_token=e.tokenizer.eos_token,
        )

    def served_info(self) -> dict[str, object]:
        """The family module and path the policy takes, and CLIP's logit scale (for /info)."""
        e = self.engine
        scale = self.clip.logit_scale if self.clip is not None else None
        return {
            "family": e.family.name,
            "path": e.path,
            "clip_logit_scale": scale,
            "decode_batching": self.decode_batching(),
        }

    def decode_batching(self) -> str:
        """How live generations share decode steps (see `ServiceSettings.decode_batching`):
        the generic path and naive mode always forward each generation on its own."""
        s = self.settings
        if self.engine.path == "generic" or s.naive_mode or s.decode_batching == "isolated":
            return "isolated"
        return f"continuous ({s.adapter_batching} adapters)"

    def warmup(self) -> None:
        """One small request through every model, so the first user request is not the slow one."""
        from PIL import Image

        image = Image.new("RGB", (32, 32), (128, 128, 128)) if self.engine.kind == "vlm" else None
        item = ScoreItem("base", "Describe the image.", ["A test."], image=image)
        self.engine.score([item])
        if self.clip is not None:
            self.clip.cosines(None, image or Image.new("RGB", (32, 32)), ["a test"], Usage())
        # Warm-up must not leave entries that later requests would count as cache hits.
        self.engine.prefix_cache.clear()


def load_models(settings: ServiceSettings) -> Models:
    """Load the policy (VLM or causal LM), its start-up adapters and CLIP."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    config = AutoConfig.from_pretrained(settings.model)
    check_supported(config)  # before loading weights: a clear error, never wrong numbers
    if getattr(config, "vision_config", None) is not None:
        kind = "vlm"
        model = AutoModelForImageTextToText.from_pretrained(settings.model, dtype=dtype)
        processor = AutoProcessor.from_pretrained(settings.model)
    else:
        kind = "causal_lm"
        model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=dtype)
        processor = AutoTokenizer.from_pretrained(settings.model)
    model = model.to(device).eval()  # type: ignore[arg-type]
    model.requires_grad_(False)
    engine = LanguageEngine(model, processor, kind, settings)
    for name, path in settings.adapters.items():
        engine.adapters.load(name, path, source="startup")
    clip = None
    if settings.clip:
        size = 0 if settings.naive_mode else settings.clip_cache_size
        clip = ClipScorer.load(settings.clip, device, size)
    log.info(
        "loaded %s (%s, %s path, family %s) on %s/%s; clip=%s",
        settings.model, kind, engine.path, engine.family.name, device, dtype, settings.clip,
    )  # fmt: skip
    return Models(engine, clip, settings)
