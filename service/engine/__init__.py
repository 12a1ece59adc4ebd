"""The model layer: policy LM/VLM with LoRA adapters, CLIP, caches and micro-batching.

Public surface used by the HTTP layer:

- `load_models(settings) -> Models` (blocking; the lifespan runs it in a thread)
- `Models.engine` (`LanguageEngine`): `.kind`, `.family` / `.path` (the model family module and
  "fast" or "generic", see `families`), `.adapters` (`AdapterRegistry`: `names()`,
  `load(name, path, source)`, `delete(name)`, `info(name)`), scoring and generation
- `Models.clip` (`ClipScorer | None`)
- `Models.info() -> core.schemas.ModelInfo`, `Models.served_info()` (family, path, CLIP logit
  scale), `Models.warmup()`
"""

from selfreward_vlm.service.engine.loader import Models, load_models

__all__ = ["Models", "load_models"]
