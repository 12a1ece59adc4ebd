"""The world's tiny CLIP: open_clip's own ``CLIP`` class, trained on the world's images.

Loss (a feasibility probe found that plain in-batch contrast learned mostly colour): every image is
contrasted with all 16 object sentences, each present object against every absent one, and each
sentence with the batch's images; sigmoid terms push absent objects below cosine 0 (so ``R_I =
max(100·cos, 0)`` is 0 for them) and present ones above 0.25.
``logit_scale`` gets no weight decay.

Colour-only saddle (measured here): early on the text tower maps all four shapes of a colour to
nearly the same embedding (same-colour cosine 0.99); then no gradient asks the image tower for
shape, and some seeds stayed colour-only (pairwise accuracy 0.80) for 800+ steps. A small term
penalising positive cosines between different sentences keeps them apart and removed the
plateau (0.98 pairwise after 800 steps on seeds 0 and 1). The 49k-row token embedding (of which
the sentences use ~20 rows; 3.2 of 3.6 M parameters) is frozen: a quarter of the step time.

Why not `tiny.clip.build_tiny_clip`: that builder writes a random model to disk for tests; this
one is trained, and its sizes (`CLIP_MODEL_CFG`: 64-px images, width 96, 3 layers) are the
world's. Both are one `open_clip.CLIP(**cfg)` call on their own sizes; what they share, the CLIP
normalisation, comes from `tiny.common`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from selfreward_vlm.tiny.common import CLIP_MEAN, CLIP_STD
from selfreward_vlm.world.spec import ALL_OBJECTS, COLOURS, WorldObject

CONTEXT_LENGTH = 16
CLIP_MODEL_CFG: dict[str, object] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 96, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 64, "heads": 4,
                 "layers": 2},
}  # fmt: skip
PREPROCESS_CFG: dict[str, object] = {
    "size": 64,
    "mode": "RGB",
    "mean": list(CLIP_MEAN),
    "std": list(CLIP_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
_SIGMOID_SLOPE = 10.0  # slope of the sigmoid terms on cosines
_ABSENT_BELOW = -0.05  # absent objects are pushed below this cosine (R_I = 0 for them) ...
_PRESENT_ABOVE = 0.25  # ... and present ones above this one, so the two cannot both sink
_TEXT_SPREAD_WEIGHT = 4.0  # weight of the term keeping the 16 sentence embeddings apart


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, 64, 64, 3)`` → normalised float ``(N, 3, 64, 64)``, as open_clip's transform."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def presence_matrix(truths: Sequence[Sequence[WorldObject]]) -> torch.Tensor:
    """``(N, 16)`` bool: which of :data:`ALL_OBJECTS` each image contains."""
    index = {o: i for i, o in enumerate(ALL_OBJECTS)}
    present = torch.zeros(len(truths), len(ALL_OBJECTS), dtype=torch.bool)
    for row, objs in enumerate(truths):
        for o in objs:
            present[row, index[o]] = True
    return present


def object_text_tokens() -> torch.Tensor:
    """The 16 object sentences tokenized for the tiny CLIP, ``(16, CONTEXT_LENGTH)``."""
    tokenizer = open_clip.SimpleTokenizer(context_length=CONTEXT_LENGTH)
    return tokenizer([o.sentence for o in ALL_OBJECTS])


def multi_positive_contrast(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over positives of ``-log(e^pos / (e^pos + Σ_negatives e^neg))`` per row.

    ``logits``, ``positive``: (R, C); rows without a negative contribute nothing useful and rows
    without a positive nothing at all.
    """
    neg_lse = logits.masked_fill(positive, -math.inf).logsumexp(dim=1, keepdim=True)  # (R, 1)
    return F.softplus(neg_lse - logits)[positive].mean()


def clip_loss(cos: torch.Tensor, present: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Contrast both ways + sigmoid terms that put absent objects below 0 and present ones above.

    ``cos``: (B, 16) cosines between images and the 16 object sentences; ``present``: (B, 16)
    bool; ``scale``: the (clamped) logit scale. Image→sentences ranks each present object above
    every absent one; sentence→images (sentences present somewhere in the batch) adds hard
    negatives of the same colour from other images, which sped up learning shape.
    """
    logits = scale * cos  # (B, 16)
    in_batch = present.any(dim=0)  # (16,)
    contrast = multi_positive_contrast(logits, present) + multi_positive_contrast(
        logits.T[in_batch], present.T[in_batch]
    )
    absent = F.softplus(_SIGMOID_SLOPE * (cos - _ABSENT_BELOW))[~present].mean()
    above = F.softplus(_SIGMOID_SLOPE * (_PRESENT_ABOVE - cos))[present].mean()
    return contrast + absent + above


def text_spread_loss(txt: torch.Tensor) -> torch.Tensor:
    """Mean positive cosine between different sentence embeddings ``txt`` (S, D), normalised."""
    sim = txt @ txt.T  # (S, S)
    off_diagonal = ~torch.eye(len(txt), dtype=torch.bool)
    return sim[off_diagonal].clamp(min=0).mean()


def _optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Gains, biases, embeddings' 1-d parts and logit_scale stay out of weight decay.
        (no_decay if param.ndim < 2 or name == "logit_scale" else decay).append(param)
    groups = [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_clip(
    images: np.ndarray,
    truths: Sequence[Sequence[WorldObject]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> open_clip.CLIP:
    """Train the tiny CLIP from scratch on ``images`` (uint8 NHWC) and their object lists."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(**CLIP_MODEL_CFG)  # type: ignore[arg-type]
    model.token_embedding.requires_grad_(False)
    model.train()
    texts = object_text_tokens()
    present_all = presence_matrix(truths)
    opt = _optimizer(model, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, steps, max(1, steps // 20))
    )
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="CLIP", unit="step", dynamic_ncols=True, mininterval=1.0)
    for _ in bar:
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        pixels = to_pixels(images[idx.numpy()])
        img = F.normalize(model.encode_image(pixels), dim=-1)  # (B, D)
        txt = F.normalize(model.encode_text(texts), dim=-1)  # (16, D)
        scale = model.logit_scale.exp().clamp(max=100.0)
        loss = clip_loss(img @ txt.T, present_all[idx], scale)
        loss = loss + _TEXT_SPREAD_WEIGHT * text_spread_loss(txt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{scale.item():.1f}", refresh=False)
    model.eval()
    return model


@torch.no_grad()
def clip_cosines(model: open_clip.CLIP, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """``(N, 16)`` cosines between each image and the 16 object sentences."""
    txt = F.normalize(model.encode_text(object_text_tokens()), dim=-1)
    rows = []
    for start in range(0, len(images), batch_size):
        img = model.encode_image(to_pixels(images[start : start + batch_size]))
        rows.append(F.normalize(img, dim=-1) @ txt.T)
    return torch.cat(rows)


def clip_report(cos: torch.Tensor, truths: Sequence[Sequence[WorldObject]]) -> dict[str, float]:
    """Pairwise accuracy (a present object's sentence above an absent one's), also for absent
    objects of a present colour, and the mean 100·cos of present and absent objects."""
    present = presence_matrix(truths)
    colour = torch.tensor([COLOURS.index(o.colour) for o in ALL_OBJECTS])
    wins = pairs = same_wins = same_pairs = 0
    for row in range(len(cos)):
        pos, neg = present[row].nonzero()[:, 0], (~present[row]).nonzero()[:, 0]
        beats = cos[row, pos][:, None] > cos[row, neg][None, :]  # (P, A)
        same = colour[pos][:, None] == colour[neg][None, :]
        wins, pairs = wins + int(beats.sum()), pairs + beats.numel()
        same_wins, same_pairs = same_wins + int(beats[same].sum()), same_pairs + int(same.sum())
    return {
        "pairwise_accuracy": wins / max(1, pairs),
        "same_colour_pairwise_accuracy": same_wins / max(1, same_pairs),
        "present_cos100": float(100 * cos[present].mean()),
        "absent_cos100": float(100 * cos[~present].mean()),
        "absent_above_zero": float((cos[~present] > 0).float().mean()),
        "absent_p95_cos100": float(100 * cos[~present].quantile(0.95)),
    }


def save_clip(model: open_clip.CLIP, out_dir: Path) -> None:
    """Write an open_clip ``local-dir:`` folder (config + safetensors weights)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": CLIP_MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))


def load_clip(clip_dir: Path) -> open_clip.CLIP:
    """Load a saved tiny CLIP (eval mode) through open_clip's ``local-dir:`` schema."""
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}")
    model.eval()
    return model  # type: ignore[no-any-return]
