# ruff: noqa: E501
"""COCO's object vocabulary for CHAIR: the 80 categories, the CHAIR authors' synonym list, their
phrase rules, and readers of COCO's `instances_*.json` / `captions_*.json`.

Source: Rohrbach et al. 2018, "Object Hallucination in Image Captioning", code at
github.com/LisaAnne/Hallucination — `data/synonyms.txt` (commit d0e65fe, reproduced verbatim
below: the first word of a line is the COCO category, the others its synonyms; only two
trailing spaces are dropped) and the rules of `utils/chair.py` (`coco_double_words`, the baby/
adult animal and passenger vehicle phrases, "bow tie" → tie, "toilet seat" → toilet, and a
toilet's seat is no chair).

Where this reading (the default) differs from that script's; `--metric-compat rohrbach`
(`ROHRBACH_VOCABULARY`, `core.chair_rohrbach`) reproduces the script instead, for numbers
comparable with published ones:
- list items are stripped, so the double-spaced " cheesecake" and " motor bike" match. The
  script's `split(', ')` keeps the space, so its " motor bike" never matches a word; its pair
  rule still merges the two words "motor bike" into one word that is no synonym, so a "motor
  bike" counts as nothing (neither a motorcycle nor a bicycle); "iPhone" never matches there or
  here (captions are lowercased);
- phrases of any length are merged (the script only looked at word pairs, so its
  "stove top oven" counted two ovens), and every multi-word synonym is a phrase ("dining table");
- plurals come from `core.chair.plural_forms` over the vocabulary's words instead of
  pattern.en's `singularize` over every word, which misfires on some: the script reads "bus"
  as "bu" and "minibus" as "minibu" (it never counts a bus), "canoes" as "cano", and keeps
  "collies" and "doggies" plural, so none of those counts there; here they do.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfreward_vlm.core.chair import ObjectReader, Vocabulary
from selfreward_vlm.core.chair_rohrbach import RohrbachVocabulary

SYNONYMS_TXT = """\
person, girl, boy, man, woman, kid, child, chef, baker, people, adult, rider, children, baby, worker, passenger, sister, biker, policeman, cop, officer, lady, cowboy, bride, groom, male, female, guy, traveler, mother, father, gentleman, pitcher, player, skier, snowboarder, skater, skateboarder, person, woman, guy, foreigner, child, gentleman, caller, offender, coworker, trespasser, patient, politician, soldier, grandchild, serviceman, walker, drinker, doctor, bicyclist, thief, buyer, teenager, student, camper, driver, solider, hunter, shopper, villager
bicycle, bike, bicycle, bike, unicycle, minibike, trike
car, automobile, van, minivan, sedan, suv, hatchback, cab, jeep, coupe, taxicab, limo, taxi
motorcycle, scooter,  motor bike, motor cycle, motorbike, scooter, moped
airplane, jetliner, plane, air plane, monoplane, aircraft, jet, jetliner, airbus, biplane, seaplane
bus, minibus, trolley
train, locomotive, tramway, caboose
truck, pickup, lorry, hauler, firetruck
boat, ship, liner, sailboat, motorboat, dinghy, powerboat, speedboat, canoe, skiff, yacht, kayak, catamaran, pontoon, houseboat, vessel, rowboat, trawler, ferryboat, watercraft, tugboat, schooner, barge, ferry, sailboard, paddleboat, lifeboat, freighter, steamboat, riverboat, battleship, steamship
traffic light, street light, traffic signal, stop light, streetlight, stoplight
fire hydrant, hydrant
stop sign
parking meter
bench, pew
bird, ostrich, owl, seagull, goose, duck, parakeet, falcon, robin, pelican, waterfowl, heron, hummingbird, mallard, finch, pigeon, sparrow, seabird, osprey, blackbird, fowl, shorebird, woodpecker, egret, chickadee, quail, bluebird, kingfisher, buzzard, willet, gull, swan, bluejay, flamingo, cormorant, parrot, loon, gosling, waterbird, pheasant, rooster, sandpiper, crow, raven, turkey, oriole, cowbird, warbler, magpie, peacock, cockatiel, lorikeet, puffin, vulture, condor, macaw, peafowl, cockatoo, songbird
cat, kitten, feline, tabby
dog, puppy, beagle, pup, chihuahua, schnauzer, dachshund, rottweiler, canine, pitbull, collie, pug, terrier, poodle, labrador, doggie, doberman, mutt, doggy, spaniel, bulldog, sheepdog, weimaraner, corgi, cocker, greyhound, retriever, brindle, hound, whippet, husky
horse, colt, pony, racehorse, stallion, equine, mare, foal, palomino, mustang, clydesdale, bronc, bronco
sheep, lamb, ram, lamb, goat, ewe
cow, cattle, oxen, ox, calf, cattle, holstein, heifer, buffalo, bull, zebu, bison
elephant
bear, panda
zebra
giraffe
backpack, knapsack
umbrella
handbag, wallet, purse, briefcase
tie, bow, bow tie
suitcase, suit case, luggage
frisbee
skis, ski
snowboard
sports ball, ball
kite
baseball bat
baseball glove
skateboard
surfboard, longboard, skimboard, shortboard, wakeboard
tennis racket, racket
bottle
wine glass
cup
fork
knife, pocketknife, knive
spoon
bowl, container
banana
apple
sandwich, burger, sub, cheeseburger, hamburger
orange
broccoli
carrot
hot dog
pizza
donut, doughnut, bagel
cake,  cheesecake, cupcake, shortcake, coffeecake, pancake
chair, seat, stool
couch, sofa, recliner, futon, loveseat, settee, chesterfield
potted plant, houseplant
bed
dining table, table, desk
toilet, urinal, commode, toilet, lavatory, potty
tv, monitor, televison, television
laptop, computer, notebook, netbook, lenovo, macbook, laptop computer
mouse
remote
keyboard
cell phone, mobile phone, phone, cellphone, telephone, phon, smartphone, iPhone
microwave
oven, stovetop, stove, stove top oven
toaster
sink
refrigerator, fridge, fridge, freezer
book
clock
vase
scissors
teddy bear, teddybear
hair drier, hairdryer
toothbrush
"""

# utils/chair.py: "common 'double words' in MSCOCO that should be treated as a single word".
COCO_DOUBLE_WORDS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
    "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
    "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
    "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
    "stove top oven", "home plate", "train track",
)  # fmt: skip
# "baby bird" is a bird, not a person; "passenger jet" a jet, not a person.
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
                "giraffe", "animal", "cub")  # fmt: skip
VEHICLE_WORDS = ("jet", "train")


def synonym_groups(text: str = SYNONYMS_TXT) -> list[list[str]]:
    """The synonym lines as lists (category first), items stripped, empty items dropped."""
    groups = []
    for line in text.splitlines():
        items = [s.strip() for s in line.split(",")]
        if items and items[0]:
            groups.append([s for s in items if s])
    return groups


def phrase_rules() -> dict[str, str]:
    """Multi-word phrase → the word it counts as (utils/chair.py's `double_word_dict`)."""
    rules = {w: w for w in COCO_DOUBLE_WORDS}
    for animal in ANIMAL_WORDS:
        rules[f"baby {animal}"] = rules[f"adult {animal}"] = animal
    for vehicle in VEHICLE_WORDS:
        rules[f"passenger {vehicle}"] = vehicle
    rules["bow tie"] = "tie"
    rules["toilet seat"] = "toilet"
    return rules


COCO_CATEGORIES: tuple[str, ...] = tuple(g[0] for g in synonym_groups())
VOCABULARY = Vocabulary.build(
    synonym_groups(), phrases=phrase_rules(), exclusions={"seat": "toilet"}
)
# utils/chair.py's own tables and caption reading, quirks included (`core.chair_rohrbach`).
ROHRBACH_VOCABULARY = RohrbachVocabulary.build(
    SYNONYMS_TXT, COCO_DOUBLE_WORDS, ANIMAL_WORDS, VEHICLE_WORDS
)
METRIC_COMPAT = ("default", "rohrbach")


def vocabulary(metric_compat: str = "default") -> ObjectReader:
    """The COCO reading of `--metric-compat`: `default` (this module's) or `rohrbach` (the
    CHAIR script's)."""
    if metric_compat not in METRIC_COMPAT:
        raise ValueError(
            f"metric_compat must be one of {list(METRIC_COMPAT)}, not {metric_compat!r}"
        )
    return VOCABULARY if metric_compat == "default" else ROHRBACH_VOCABULARY


@dataclass(frozen=True)
class CocoImage:
    """One annotated image: its file and the categories really in it."""

    image_id: int
    file_name: str
    objects: frozenset[str]


def _load_json(path: str | Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(f"{path} is not a COCO {what} file (no 'annotations')")
    return data


def load_coco(
    instances: str | Path, captions: str | Path | None = None, vocab: ObjectReader = VOCABULARY
) -> dict[int, CocoImage]:
    """Images of an `instances_*.json` with their ground-truth categories: every segmented
    object's category, plus (as CHAIR does) every object the reference captions of
    `captions_*.json` name."""
    data = _load_json(instances, "instances")
    names = {c["id"]: c["name"] for c in data.get("categories", [])}
    objects: dict[int, set[str]] = {int(im["id"]): set() for im in data.get("images", [])}
    for ann in data["annotations"]:
        category = vocab.category(names.get(ann["category_id"], ""))
        if category is None:
            raise ValueError(f"{instances}: unknown category id {ann['category_id']}")
        objects.setdefault(int(ann["image_id"]), set()).add(category)
    if captions is not None:
        for ann in _load_json(captions, "captions")["annotations"]:
            if int(ann["image_id"]) in objects:
                objects[int(ann["image_id"])].update(
                    m.category for m in vocab.mentions(ann["caption"])
                )
    files = {int(im["id"]): str(im["file_name"]) for im in data.get("images", [])}
    return {
        i: CocoImage(i, files[i], frozenset(objs))
        for i, objs in sorted(objects.items())
        if i in files
    }


def sample_images(images: Iterable[CocoImage], limit: int | None, seed: int) -> list[CocoImage]:
    """`limit` images drawn at random (all when None): a seeded shuffle of the images sorted by
    id, so a larger limit with the same seed extends a smaller one."""
    pool = sorted(images, key=lambda im: im.image_id)
    random.Random(seed).shuffle(pool)
    return pool if limit is None else pool[:limit]
