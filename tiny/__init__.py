"""Tiny, deterministic, randomly initialised models built offline.

They stand in for hub models in tests, in `selfreward serve --tiny` and in the benchmark: every
builder writes an ordinary model directory (`save_pretrained` / open_clip `local-dir`) that the
service then loads through the very code path it uses for a hub id. Nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{{ item['text'] }}{% endfor %}{% endif %}"
    "{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_CORPUS = [
    "There is a red circle. There is a blue square. The cat sits on the mat.",
    "A dog runs in the park. The sky is blue and the grass is green.",
    "USER: Describe the image. ASSISTANT: There is a green triangle next to a yellow cross.",
    "The image shows a small house, a tree, and two people walking on the road.",
    "Objects: circle square triangle cross red green blue yellow white black large small.",
    "0 1 2 3 4 5 6 7 8 9 , ; : ! ? ' \" ( ) - + = / * % & @ # $",
]


@dataclass(frozen=True)
class TinyVLMSpec:
    """Sizes of the tiny LLaVA; the defaults make a model that loads and runs in milliseconds.

    `image_size=336, patch_size=14` reproduces LLaVA-1.5's 576 image tokens for benchmarks.
    """

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 32
    vision_layers: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = 400
    seed: int = 0


def build_tokenizer(vocab_size: int = 400):  # -> PreTrainedTokenizerFast
    """A byte-level BPE trained on a few sentences, with `<image>` and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_vlm(out_dir: str | Path, spec: TinyVLMSpec | None = None) -> Path:
    """Write a tiny `LlavaForConditionalGeneration` + `LlavaProcessor` to `out_dir`."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    spec = spec or TinyVLMSpec()
    out = Path(out_dir)
    tokenizer = build_tokenizer(spec.vocab_size)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=4,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_hidden * 2,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config).eval()
    _sharpen(model)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_causal_lm(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny text-only `LlamaForCausalLM` + tokenizer (with chat template)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    _sharpen(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_clip(out_dir: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny open_clip model as a `local-dir:` folder (config + safetensors)."""
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
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    preprocess_cfg = {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    }
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2)
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        out / "open_clip_model.safetensors",
    )
    return out


def _sharpen(model) -> None:
    """Scale the output head so a random model is peaked rather than uniform.

    A randomly initialised LM spreads probability almost evenly, which makes every test
    that compares candidates (beam order, chosen vs rejected) a coin toss on float noise.
    """
    import torch

    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight.mul_(8.0)


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
