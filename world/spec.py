"""The miniature world's vocabulary: colours, shapes, objects, sentences and the companion map.

Pure Python (no torch, no numpy) so that the CHAIR evaluator and light clients can import it.
"""

from __future__ import annotations

from typing import NamedTuple

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

# RGB fill per colour; saturated and dark enough to stand out on the light background.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (35, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (225, 180, 0),
}


class WorldObject(NamedTuple):
    """One object kind of the world: a colour and a shape."""

    colour: str
    shape: str

    @property
    def name(self) -> str:
        """The object's phrase, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"

    @property
    def sentence(self) -> str:
        """The object's caption sentence, e.g. ``"There is a red circle."``."""
        return f"There is a {self.colour} {self.shape}."


ALL_OBJECTS: tuple[WorldObject, ...] = tuple(WorldObject(c, s) for c in COLOURS for s in SHAPES)

# Trigger -> companion. Companions have another colour than their trigger, so a CLIP that only
# sees colour cannot veto them, and triggers and companions are disjoint so priors do not chain.
COMPANIONS: dict[WorldObject, WorldObject] = {
    WorldObject("red", "circle"): WorldObject("blue", "square"),
    WorldObject("green", "triangle"): WorldObject("red", "square"),
    WorldObject("blue", "cross"): WorldObject("yellow", "circle"),
    WorldObject("yellow", "triangle"): WorldObject("green", "cross"),
    WorldObject("red", "cross"): WorldObject("green", "circle"),
    WorldObject("blue", "triangle"): WorldObject("yellow", "square"),
}

# Words of the SFT prompts; anything else a user sends maps to <unk> in the VLM tokenizer.
PROMPTS: tuple[str, ...] = (
    "Describe the image.",
    "Describe this image.",
    "What is in the image?",
)
DEFAULT_PROMPT = PROMPTS[0]


def parse_object(name: str) -> WorldObject:
    """Parse ``"red circle"`` into a :class:`WorldObject`; raises ``ValueError`` if unknown."""
    parts = name.split()
    if len(parts) != 2 or parts[0] not in COLOURS or parts[1] not in SHAPES:
        raise ValueError(f"not an object of the world: {name!r}")
    return WorldObject(parts[0], parts[1])


def caption_for(objects: list[WorldObject]) -> str:
    """The ground-truth caption: one sentence per object, in the given order."""
    return " ".join(o.sentence for o in objects)


def world_words() -> list[str]:
    """Every word the VLM tokenizer knows (besides special tokens), in a fixed order."""
    words = ["There", "is", "a", *COLOURS, *SHAPES, ".", "?", ":", "USER", "ASSISTANT"]
    for prompt in PROMPTS:
        for word in prompt.replace(".", " ").replace("?", " ").split():
            if word not in words:
                words.append(word)
    return words
