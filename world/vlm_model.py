"""The world's tiny VLM: LLaVA with the tiny CLIP's visual tower and a 3-layer Llama.

The vision tower is the trained CLIP's ViT converted to a HF ``CLIPVisionModel`` and frozen;
LLaVA reads layer -2 (the probe found an unfrozen tower or layer -1 fragile). Supervised
fine-tuning on the biased captions teaches the language prior that makes it hallucinate
companions; the loss covers the assistant tokens only.

Why not `tiny.llava.build_tiny_vlm`: both assemble a `LlavaConfig` from a `CLIPVisionConfig` and
a `LlamaConfig`, but with different values in nearly every field (this tower mirrors the trained
CLIP, open_clip's GELU, `image_seq_length`; tiny's is random, sharpened and written to disk with
its own tokenizer), so a shared builder would take every field as an argument: no shorter than
the calls themselves. The weights drawn here (seeded, in this order) are the demo's starting
point and feed its reproducibility fingerprint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
from tqdm.auto import tqdm
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from selfreward_vlm.world.clip_model import CLIP_MODEL_CFG, to_pixels, warmup_cosine
from selfreward_vlm.world.scenes import IMAGE_SIZE, caption_objects, disfluent_caption
from selfreward_vlm.world.spec import PROMPTS, WorldObject
from selfreward_vlm.world.vlm_text import NUM_IMAGE_TOKENS, PATCH_SIZE, user_messages

IGNORE_INDEX = -100


def vlm_config(processor: LlavaProcessor) -> LlavaConfig:
    """LLaVA config: CLIP-ViT tower shaped like the tiny CLIP's, Llama hidden 128, 3 layers."""
    vision = CLIP_MODEL_CFG["vision_cfg"]
    assert isinstance(vision, dict)
    tok = processor.tokenizer
    vision_config = CLIPVisionConfig(
        hidden_size=vision["width"],
        intermediate_size=4 * vision["width"],
        num_hidden_layers=vision["layers"],
        num_attention_heads=vision["width"] // vision["head_width"],
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_act="gelu",  # open_clip's default GELU, not OpenAI's quick_gelu
        layer_norm_eps=1e-5,
        projection_dim=int(CLIP_MODEL_CFG["embed_dim"]),  # type: ignore[call-overload]
    )
    text_config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=processor.image_token_id,
        image_seq_length=NUM_IMAGE_TOKENS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def clip_visual_to_hf(
    visual: dict[str, torch.Tensor], layers: int, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Rename open_clip ``VisionTransformer`` weights to HF ``CLIPVisionModel`` names.

    open_clip packs q, k, v into one ``in_proj``; HF keeps three projections. ``visual.proj``
    (the CLIP embedding projection) has no counterpart: LLaVA reads hidden states. ``prefix``
    is ``"vision_model."`` for transformers 4.x, whose ``CLIPVisionModel`` nests one level deeper.
    """
    out = {
        "embeddings.class_embedding": visual["class_embedding"],
        "embeddings.patch_embedding.weight": visual["conv1.weight"],
        "embeddings.position_embedding.weight": visual["positional_embedding"],
    }
    for part in ("weight", "bias"):
        out[f"pre_layrnorm.{part}"] = visual[f"ln_pre.{part}"]
        out[f"post_layernorm.{part}"] = visual[f"ln_post.{part}"]
        for i in range(layers):
            src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
            q, k, v = visual[f"{src}attn.in_proj_{part}"].chunk(3, dim=0)
            out[f"{dst}self_attn.q_proj.{part}"] = q
            out[f"{dst}self_attn.k_proj.{part}"] = k
            out[f"{dst}self_attn.v_proj.{part}"] = v
            out[f"{dst}self_attn.out_proj.{part}"] = visual[f"{src}attn.out_proj.{part}"]
            out[f"{dst}layer_norm1.{part}"] = visual[f"{src}ln_1.{part}"]
            out[f"{dst}layer_norm2.{part}"] = visual[f"{src}ln_2.{part}"]
            out[f"{dst}mlp.fc1.{part}"] = visual[f"{src}mlp.c_fc.{part}"]
            out[f"{dst}mlp.fc2.{part}"] = visual[f"{src}mlp.c_proj.{part}"]
    return {prefix + k: v.detach().clone().contiguous() for k, v in out.items()}


def build_vlm(
    clip: open_clip.CLIP, processor: LlavaProcessor, seed: int
) -> LlavaForConditionalGeneration:
    """A fresh LLaVA whose frozen vision tower carries the trained CLIP's visual weights."""
    torch.manual_seed(seed)
    config = vlm_config(processor)
    model = LlavaForConditionalGeneration(config)
    visual = {k: v for k, v in clip.visual.state_dict().items()}
    tower = model.model.vision_tower
    nested = any(k.startswith("vision_model.") for k in tower.state_dict())
    layers = len(clip.visual.transformer.resblocks)
    converted = clip_visual_to_hf(visual, layers, "vision_model." if nested else "")
    missing, unexpected = tower.load_state_dict(converted, strict=False)
    # position_ids is a buffer HF rebuilds itself; anything else missing is a conversion bug.
    if [m for m in missing if not m.endswith("position_ids")] or unexpected:
        raise RuntimeError(f"CLIP→HF conversion mismatch: {missing=} {unexpected=}")
    tower.requires_grad_(False)
    gen = model.generation_config
    gen.eos_token_id = processor.tokenizer.eos_token_id
    gen.pad_token_id = processor.tokenizer.pad_token_id
    gen.bos_token_id = processor.tokenizer.bos_token_id
    gen.do_sample = False
    gen.max_new_tokens = 64
    return model


def _prompt_ids(processor: LlavaProcessor) -> list[list[int]]:
    """Token ids of each SFT prompt, image tokens expanded, as the processor makes them."""
    dummy = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, dtype=np.uint8)
    ids = []
    for prompt in PROMPTS:
        text = processor.apply_chat_template(user_messages(prompt), add_generation_prompt=True)
        ids.append(processor(text=text, images=dummy).input_ids[0])
    return [list(map(int, x)) for x in ids]


def sft_batch(
    prompt_ids: Sequence[list[int]],
    caption_ids: Sequence[list[int]],
    prompt_choice: Sequence[int],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (prompt and pad ignored)."""
    rows = [(prompt_ids[p], c) for p, c in zip(prompt_choice, caption_ids, strict=True)]
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(p + c)
        labels[i, len(p) : n] = torch.tensor(c)
        mask[i, :n] = 1
    return input_ids, mask, labels


@torch.no_grad()
def image_features(
    model: LlavaForConditionalGeneration, images: np.ndarray, batch_size: int = 256
) -> torch.Tensor:
    """Frozen-tower features LLaVA feeds its projector: layer -2, CLS dropped, ``(N, 64, 96)``."""
    rows = []
    for start in range(0, len(images), batch_size):
        pixels = to_pixels(images[start : start + batch_size])
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        rows.append(hidden[model.config.vision_feature_layer][:, 1:])
    return torch.cat(rows)


def embed_with_features(
    model: LlavaForConditionalGeneration, input_ids: torch.Tensor, features: torch.Tensor
) -> torch.Tensor:
    """``inputs_embeds`` with projected image features at the image tokens, as LLaVA's forward
    builds them (``masked_scatter``), but from cached tower features."""
    embeds = model.get_input_embeddings()(input_ids)  # (B, T, H)
    projected = model.model.multi_modal_projector(features)  # (B, 64, H)
    mask = (input_ids == model.config.image_token_id).unsqueeze(-1)
    return embeds.masked_scatter(mask, projected.to(embeds.dtype))


def train_vlm(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    images: np.ndarray,
    truths: Sequence[Sequence[WorldObject]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    companion_p: float,
    seed: int,
    disfluency: float = 0.0,
) -> None:
    """SFT on freshly drawn biased captions (a new draw per visit keeps the prior at ``p``);
    with `disfluency` > 0 each sentence is disfluent with that probability (its own random
    stream, so the caption draws are the same whatever `disfluency` is).

    The tower is frozen, so its features are computed once up front instead of every step.
    """
    tok = processor.tokenizer
    prompt_ids = _prompt_ids(processor)
    rng = np.random.default_rng([seed, 7])
    form_rng = np.random.default_rng([seed, 11])
    features = image_features(model, images)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, steps, max(1, steps // 20))
    )
    model.train()
    bar = tqdm(range(steps), desc="VLM SFT", unit="step", dynamic_ncols=True, mininterval=1.0)
    for _ in bar:
        idx = rng.integers(len(images), size=batch_size)
        captions = [
            disfluent_caption(caption_objects(truths[i], rng, companion_p), form_rng, disfluency)
            for i in idx
        ]
        caption_ids = [tok(c + tok.eos_token).input_ids for c in captions]
        choice = rng.integers(len(PROMPTS), size=batch_size).tolist()
        input_ids, mask, labels = sft_batch(prompt_ids, caption_ids, choice, tok.pad_token_id)
        embeds = embed_with_features(model, input_ids, features[torch.from_numpy(idx)])
        out = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{out.loss.item():.3f}", refresh=False)
    model.eval()


def save_vlm(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, out_dir: Path
) -> None:
    """``save_pretrained`` of model and processor into one directory."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
