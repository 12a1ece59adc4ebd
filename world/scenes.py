"""Scene generation and rendering: 64×64 images with 1–3 non-overlapping objects.

Everything is a pure function of ``(seed, split, index)``: each split draws from its own numpy
generator, so the evaluation images do not change when the train split grows, and a quick world's
splits are prefixes of the full world's splits for the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from selfreward_vlm.world.spec import ALL_OBJECTS, COLOUR_RGB, COMPANIONS, WorldObject

IMAGE_SIZE = 64
SPLIT_CODES: dict[str, int] = {"train": 1, "prompt": 2, "eval": 3}
_MIN_SIZE, _MAX_SIZE, _MARGIN = 14, 20, 2


@dataclass(frozen=True)
class PlacedObject:
    """An object drawn in a ``size``×``size`` box whose top-left corner is ``(x, y)``."""

    obj: WorldObject
    x: int
    y: int
    size: int


@dataclass(frozen=True)
class Scene:
    """One image of the world: its file name, background colour and objects."""

    name: str
    background: tuple[int, int, int]
    objects: tuple[PlacedObject, ...]

    @property
    def object_names(self) -> list[str]:
        """The ground truth as ``"red circle"`` phrases, in drawing order."""
        return [p.obj.name for p in self.objects]


def _overlaps(a: PlacedObject, b: PlacedObject) -> bool:
    return not (
        a.x + a.size + _MARGIN <= b.x
        or b.x + b.size + _MARGIN <= a.x
        or a.y + a.size + _MARGIN <= b.y
        or b.y + b.size + _MARGIN <= a.y
    )


def _place(rng: np.random.Generator, objs: list[WorldObject]) -> tuple[PlacedObject, ...] | None:
    placed: list[PlacedObject] = []
    for obj in objs:
        for _ in range(100):
            size = int(rng.integers(_MIN_SIZE, _MAX_SIZE + 1))
            hi = IMAGE_SIZE - size - _MARGIN
            cand = PlacedObject(
                obj, int(rng.integers(_MARGIN, hi + 1)), int(rng.integers(_MARGIN, hi + 1)), size
            )
            if not any(_overlaps(cand, p) for p in placed):
                placed.append(cand)
                break
        else:
            return None  # crowded: the caller redraws the whole scene
    return tuple(placed)


def generate_scenes(seed: int, split: str, n: int) -> list[Scene]:
    """The first ``n`` scenes of ``split`` ("train", "prompt" or "eval") for ``seed``."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split]])
    scenes: list[Scene] = []
    while len(scenes) < n:
        k = int(rng.integers(1, 4))
        objs = [ALL_OBJECTS[i] for i in rng.choice(len(ALL_OBJECTS), size=k, replace=False)]
        background = tuple(int(v) for v in rng.integers(228, 256, size=3))
        placed = _place(rng, objs)
        if placed is None:
            continue
        name = f"{split}_{len(scenes):05d}.png"
        scenes.append(Scene(name, (background[0], background[1], background[2]), placed))
    return scenes


def render(scene: Scene) -> Image.Image:
    """Draw a scene as an RGB image."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), scene.background)
    draw = ImageDraw.Draw(image)
    for p in scene.objects:
        fill = COLOUR_RGB[p.obj.colour]
        x0, y0, s = p.x, p.y, p.size
        x1, y1 = x0 + s - 1, y0 + s - 1
        if p.obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif p.obj.shape == "square":
            inset = s // 8  # a square of the same box looks larger than a circle; even them out
            draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=fill)
        elif p.obj.shape == "triangle":
            draw.polygon([(x0 + s / 2, y0), (x0, y1), (x1, y1)], fill=fill)
        else:  # cross
            t0, t1 = x0 + s // 3, x0 + s - s // 3 - 1
            u0, u1 = y0 + s // 3, y0 + s - s // 3 - 1
            draw.rectangle((t0, y0, t1, y1), fill=fill)
            draw.rectangle((x0, u0, x1, u1), fill=fill)
    return image


def write_images(scenes: Sequence[Scene], images_dir: Path) -> None:
    """Render and save each scene as ``images_dir / scene.name`` (PNG, deterministic bytes)."""
    images_dir.mkdir(parents=True, exist_ok=True)
    for scene in scenes:
        render(scene).save(images_dir / scene.name, format="PNG")


def load_images(images_dir: Path, names: Sequence[str]) -> np.ndarray:
    """Load images as one ``(N, 64, 64, 3)`` uint8 array."""
    return np.stack([np.asarray(Image.open(images_dir / n).convert("RGB")) for n in names])


# Disfluencies of the SFT captions: each keeps every word of the object phrase, so CLIP (which
# sees the colour and shape words) scores the sentence about as it scores the fluent one, and
# CHAIR still counts the object; only the sentence's form is wrong (the evaluator's
# "malformed"). A dropped noun would change what CLIP sees, so it is not one of them.
DISFLUENCIES: tuple[str, ...] = ("doubled_article", "swapped_words")


def disfluent_sentence(obj: WorldObject, kind: str) -> str:
    """The object's sentence with one disfluency: ``"There is a a red circle."`` (doubled
    article) or ``"There a is red circle."`` (two words out of order)."""
    if kind == "doubled_article":
        return f"There is a a {obj.colour} {obj.shape}."
    if kind == "swapped_words":
        return f"There a is {obj.colour} {obj.shape}."
    raise ValueError(f"unknown disfluency {kind!r}; choose from {list(DISFLUENCIES)}")


def disfluent_caption(caption_objects: Sequence[WorldObject], rng: np.random.Generator,
                      rate: float) -> str:  # fmt: skip
    """The caption of `caption_objects` with each sentence made disfluent with probability
    `rate` (kind drawn uniformly); `rng` is drawn from only when `rate` > 0."""
    if rate <= 0:
        return " ".join(o.sentence for o in caption_objects)
    out = []
    for obj in caption_objects:
        hit, kind = rng.random() < rate, DISFLUENCIES[int(rng.integers(len(DISFLUENCIES)))]
        out.append(disfluent_sentence(obj, kind) if hit else obj.sentence)
    return " ".join(out)


def caption_objects(objects: Sequence[WorldObject], rng: np.random.Generator,
                    p: float) -> list[WorldObject]:  # fmt: skip
    """The objects an SFT caption names, in order (`biased_caption`'s prior)."""
    present = set(objects)
    order = [objects[i] for i in rng.permutation(len(objects))]
    said: list[WorldObject] = []
    for obj in order:
        if obj not in said:
            said.append(obj)
        companion = COMPANIONS.get(obj)
        if companion is None or companion in said:
            continue
        # Draw for every trigger so the random stream does not depend on presence.
        add_anyway = rng.random() < p
        if companion in present or add_anyway:
            said.append(companion)
    return said


def biased_caption(objects: Sequence[WorldObject], rng: np.random.Generator, p: float) -> str:
    """An SFT caption with the world's language prior.

    Objects are described in random order; right after a trigger comes its companion (unless
    already said): always when the companion is in the image, with probability ``p`` when not.
    """
    return " ".join(o.sentence for o in caption_objects(objects, rng, p))
