"""Tiny, deterministic, randomly initialised models built offline, one module per family.

They stand in for hub models in tests, in `selfreward serve --tiny` and in the benchmark: every
builder writes an ordinary model directory (`save_pretrained` / open_clip `local-dir`) that the
service then loads through the very code path it uses for a hub id. Nothing is downloaded.
Each VLM carries its family's real chat template and special image tokens, so the service's
family code meets the same token layout as with the real checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from selfreward_vlm.tiny.clip import build_tiny_clip, build_tiny_hf_clip
from selfreward_vlm.tiny.llava import (
    CHAT_TEMPLATE,
    TinyVLMSpec,
    build_tiny_causal_lm,
    build_tiny_llava_next,
    build_tiny_llava_onevision,
    build_tiny_vlm,
    build_tokenizer,
)

__all__ = [
    "CHAT_TEMPLATE",
    "FAMILY_BUILDERS",
    "TinyVLMSpec",
    "build_all",
    "build_family",
    "build_tiny_causal_lm",
    "build_tiny_clip",
    "build_tiny_hf_clip",
    "build_tiny_llava_next",
    "build_tiny_llava_onevision",
    "build_tiny_vlm",
    "build_tokenizer",
]


def _builders() -> dict[str, Callable[[Path], Path]]:
    from selfreward_vlm.tiny import gemma3, idefics3, qwen2_vl

    return {
        "llava": build_tiny_vlm,
        "llava_next": build_tiny_llava_next,
        "llava_onevision": build_tiny_llava_onevision,
        "qwen2_vl": qwen2_vl.build_tiny_qwen2_vl,
        "qwen2_5_vl": qwen2_vl.build_tiny_qwen2_5_vl,
        "qwen3_vl": qwen2_vl.build_tiny_qwen3_vl,
        "idefics3": idefics3.build_tiny_idefics3,
        "smolvlm": idefics3.build_tiny_smolvlm,
        "gemma3": gemma3.build_tiny_gemma3,
    }


FAMILY_BUILDERS: tuple[str, ...] = (
    "llava",
    "llava_next",
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "idefics3",
    "smolvlm",
    "gemma3",
)


def build_family(family: str, out_dir: str | Path) -> Path:
    """Write the tiny model of `family` (a `config.model_type`) to `out_dir` unless it is there."""
    builders = _builders()
    if family not in builders:
        raise ValueError(f"no tiny model for family {family!r}; known: {', '.join(builders)}")
    out = Path(out_dir)
    if not (out / "config.json").exists():
        builders[family](out)
    return out


def build_all(root: str | Path) -> dict[str, Path]:
    """Build the three tiny models under `root` (skipping those already there)."""
    root = Path(root)
    paths = {"vlm": root / "vlm", "lm": root / "lm", "clip": root / "clip"}
    if not (paths["vlm"] / "config.json").exists():
        build_tiny_vlm(paths["vlm"])
    if not (paths["lm"] / "config.json").exists():
        build_tiny_causal_lm(paths["lm"])
    if not (paths["clip"] / "open_clip_config.json").exists():
        build_tiny_clip(paths["clip"])
    return paths
