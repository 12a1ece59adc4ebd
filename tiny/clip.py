"""Tiny CLIP-side models: an open_clip `local-dir` folder, and transformers `CLIPModel` /
`SiglipModel` directories (with their processors), for the service's CLIP scorer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfreward_vlm.tiny.common import CLIP_MEAN, CLIP_STD, VISION_SIZES


def build_tiny_clip(
    out_dir: str | Path, seed: int = 0, image_size: int = 32, siglip: bool = False
) -> Path:
    """Write a tiny open_clip model as a `local-dir:` folder (config + safetensors);
    `siglip=True`: SigLIP-style (a learned logit bias for the sigmoid loss, scale 10, as
    open_clip's SigLIP configs)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "patch_size": 8},
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 4,
            "layers": 2,
        },
    }
    if siglip:
        model_cfg.update(init_logit_bias=-10.0, init_logit_scale=2.302585)  # log 10
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    preprocess_cfg = {
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
    }
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2)
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        out / "open_clip_model.safetensors",
    )
    return out


def build_tiny_hf_clip(out_dir: str | Path, kind: str = "clip", seed: int = 0) -> Path:
    """Write a tiny transformers `CLIPModel` (kind="clip") or `SiglipModel` (kind="siglip")
    with its processor; 32-px images, 16-token texts."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
    )

    from selfreward_vlm.tiny.llava import build_tokenizer

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 16
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 16,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    vision = dict(VISION_SIZES)
    torch.manual_seed(seed)
    model: Any
    image_processor: Any
    processor: Any
    if kind == "siglip":
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
        processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    else:
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
        model = CLIPModel(config)
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out
