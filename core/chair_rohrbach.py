"""CHAIR exactly as the CHAIR authors' script reads captions (`--metric-compat rohrbach`).

Published CHAIR numbers, CSR's Table 7 among them, come from `utils/chair.py` of
github.com/LisaAnne/Hallucination (requirements: nltk 3.2.5, pattern 3.6). Its reading has
quirks that `core.chair` (the default reading) does not copy; this module reproduces them, so a
number computed here compares with a published one:

1. `data/synonyms.txt` lines are split on ", " after `strip()`: an item after a double space
   keeps its leading space (" motor bike", " cheesecake") and never matches a word.
2. A synonym listed under two categories belongs to the later line (a dict assignment).
3. Every token goes through pattern.en's `singularize` (restated below from pattern 3.6,
   `pattern/text/en/inflect.py`, BSD licence): "bus" → "bu" and "minibus" → "minibu" (so a
   bus is never counted), "canoes" → "cano", "collies" stays "collies" (the `singular_ie`
   rule), "glass" → "glas" (the script maps "wine glas" back to "wine glass").
4. Only word *pairs* are merged (`double_word_dict`): "motor bike" becomes one word that is no
   synonym (item 1), so it counts nothing; "stove top oven" is never merged, so it counts two
   ovens ("stove", "oven").
5. "seat" is dropped when "toilet" is in the caption; every mention counts, repeats included.

Tokenization: the project's tokenizer (`core.chair.tokenize`) stands in for NLTK's
`word_tokenize`; both lowercase, keep hyphenated compounds whole and split "'s" and
punctuation off, which is all an object word needs (they differ on contractions such as
"don't" and on abbreviations, which name no COCO object).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from selfreward_vlm.core.chair import Mention, tokenize

# ---------------------------------------------------------------- pattern.en 3.6 singularize
# Data of pattern/text/en/inflect.py (SINGULARIZE section), verbatim.
_PLURAL_PREPOSITIONS = frozenset((
    'about', 'above', 'across', 'after', 'among', 'around', 'at', 'athwart', 'before',
    'behind', 'below', 'beneath', 'beside', 'besides', 'between', 'betwixt', 'beyond', 'but',
    'by', 'during', 'except', 'for', 'from', 'in', 'into', 'near', 'of', 'off', 'on', 'onto',
    'out', 'over', 'since', 'till', 'to', 'under', 'until', 'unto', 'upon', 'with',
))  # fmt: skip

_UNINFLECTED = frozenset((
    'bison', 'bream', 'breeches', 'britches', 'carp', 'chassis', 'christmas', 'clippers',
    'cod', 'contretemps', 'corps', 'debris', 'diabetes', 'djinn', 'eland', 'elk', 'flounder',
    'gallows', 'georgia', 'graffiti', 'headquarters', 'herpes', 'high-jinks', 'homework',
    'innings', 'jackanapes', 'mackerel', 'measles', 'mews', 'mumps', 'news', 'pincers',
    'pliers', 'proceedings', 'rabies', 'salmon', 'scissors', 'series', 'shears', 'species',
    'swine', 'swiss', 'trout', 'tuna', 'whiting', 'wildebeest',
))  # fmt: skip

_UNCOUNTABLE = frozenset((
    'advice', 'bread', 'butter', 'cheese', 'electricity', 'equipment', 'fruit', 'furniture',
    'garbage', 'gravel', 'happiness', 'information', 'ketchup', 'knowledge', 'love', 'luggage',
    'mathematics', 'mayonnaise', 'meat', 'mustard', 'news', 'progress', 'research', 'rice',
    'sand', 'software', 'understanding', 'water',
))  # fmt: skip

_IE = frozenset((
    '^pie', '^tie', 'alergie', 'auntie', 'beanie', 'birdie', 'bogie', 'bombie', 'collie',
    'cookie', 'cutie', 'doggie', 'eyrie', 'freebie', 'goonie', 'groupie', 'hankie', 'hippie',
    'hoagie', 'hottie', 'indie', 'junkie', 'laddie', 'laramie', 'lingerie', 'meanie', 'newbie',
    'nightie', 'oldie', 'pixie', 'quickie', 'reverie', 'rookie', 'softie', 'sortie', 'stoolie',
    'sweetie', 'techie', 'toughie', 'valkyrie', 'veggie', 'weenie', 'yuppie', 'zombie',
))  # fmt: skip

_IRREGULAR: dict[str, str] = {  # insertion order is the search order
    'atlantes': 'atlas',
    'atlases': 'atlas',
    'axes': 'axe',
    'beeves': 'beef',
    'brethren': 'brother',
    'children': 'child',
    'corpora': 'corpus',
    'corpuses': 'corpus',
    'ephemerides': 'ephemeris',
    'feet': 'foot',
    'ganglia': 'ganglion',
    'geese': 'goose',
    'genera': 'genus',
    'genii': 'genie',
    'graffiti': 'graffito',
    'helves': 'helve',
    'kine': 'cow',
    'leaves': 'leaf',
    'loaves': 'loaf',
    'men': 'man',
    'mongooses': 'mongoose',
    'monies': 'money',
    'moves': 'move',
    'mythoi': 'mythos',
    'numena': 'numen',
    'occipita': 'occiput',
    'octopodes': 'octopus',
    'opera': 'opus',
    'opuses': 'opus',
    'our': 'my',
    'oxen': 'ox',
    'penes': 'penis',
    'penises': 'penis',
    'people': 'person',
    'sexes': 'sex',
    'soliloquies': 'soliloquy',
    'teeth': 'tooth',
    'testes': 'testis',
    'trilbys': 'trilby',
    'turves': 'turf',
    'zoa': 'zoon',
}  # fmt: skip

_RULES: tuple[tuple[str, str], ...] = (  # in order: the first match applies
    ('(?i)(.)ae$', '\\1a'),
    ('(?i)(.)itis$', '\\1itis'),
    ('(?i)(.)eaux$', '\\1eau'),
    ('(?i)(quiz)zes$', '\\1'),
    ('(?i)(matr)ices$', '\\1ix'),
    ('(?i)(ap|vert|ind)ices$', '\\1ex'),
    ('(?i)^(ox)en', '\\1'),
    ('(?i)(alias|status)es$', '\\1'),
    ('(?i)([octop|vir])i$', '\\1us'),
    ('(?i)(cris|ax|test)es$', '\\1is'),
    ('(?i)(shoe)s$', '\\1'),
    ('(?i)(o)es$', '\\1'),
    ('(?i)(bus)es$', '\\1'),
    ('(?i)([m|l])ice$', '\\1ouse'),
    ('(?i)(x|ch|ss|sh)es$', '\\1'),
    ('(?i)(m)ovies$', '\\1ovie'),
    ('(?i)(.)ombies$', '\\1ombie'),
    ('(?i)(s)eries$', '\\1eries'),
    ('(?i)([^aeiouy]|qu)ies$', '\\1y'),
    ('([aeo]l)ves$', '\\1f'),
    ('([^d]ea)ves$', '\\1f'),
    ('arves$', 'arf'),
    ('erves$', 'erve'),
    ('([nlw]i)ves$', '\\1fe'),
    ('(?i)([lr])ves$', '\\1f'),
    ('([aeo])ves$', '\\1ve'),
    ('(?i)(sive)s$', '\\1'),
    ('(?i)(tive)s$', '\\1'),
    ('(?i)(hive)s$', '\\1'),
    ('(?i)([^f])ves$', '\\1fe'),
    ('(?i)(^analy)ses$', '\\1sis'),
    ('(?i)((a)naly|(b)a|(d)iagno|(p)arenthe|(p)rogno|(s)ynop|(t)he)ses$', '\\1\\2sis'),
    ('(?i)(.)opses$', '\\1opsis'),
    ('(?i)(.)yses$', '\\1ysis'),
    ('(?i)(h|d|r|o|n|b|cl|p)oses$', '\\1ose'),
    ('(?i)(fruct|gluc|galact|lact|ket|malt|rib|sacchar|cellul)ose$', '\\1ose'),
    ('(?i)(.)oses$', '\\1osis'),
    ('(?i)([ti])a$', '\\1um'),
    ('(?i)(n)ews$', '\\1ews'),
    ('(?i)s$', ''),
)  # fmt: skip

_COMPILED = tuple((re.compile(p), r) for p, r in _RULES)


def singularize(word: str) -> str:
    """pattern.en 3.6 `singularize(word)` (pos NOUN, no custom), step for step: compounds with
    a preposition, a trailing apostrophe, the uninflected, uncountable and `-ie` lists (each
    tested as the original does: a list word *ending with* the word, or the word ending with a
    list word + "s"), the irregular suffixes, then the first matching rule."""
    if "-" in word:
        parts = word.split("-")
        if len(parts) > 1 and parts[1] in _PLURAL_PREPOSITIONS:
            return singularize(parts[0]) + "-" + "-".join(parts[1:])
    if word.endswith("'"):
        return singularize(word[:-1]) + "'s"
    w = word.lower()
    if any(x.endswith(w) for x in _UNINFLECTED) or any(x.endswith(w) for x in _UNCOUNTABLE):
        return word
    if any(w.endswith(x + "s") for x in _IE):
        return w
    for suffix, singular in _IRREGULAR.items():
        if w.endswith(suffix):
            return re.sub("(?i)" + suffix + "$", singular, word)
    for pattern, inflection in _COMPILED:
        m = pattern.search(word)
        if m:
            for k, group in enumerate(m.groups()):
                if group is None:
                    inflection = inflection.replace("\\" + str(k + 1), "")
            return pattern.sub(inflection, word)
    return word


# ---------------------------------------------------------------- utils/chair.py


@dataclass(frozen=True)
class RohrbachVocabulary:
    """The script's `CHAIR.__init__` tables and `caption_to_words`, behind the interface of
    `core.chair.Vocabulary` (`category`, `mentions`, `categories`)."""

    objects: frozenset[str]  # mscoco_objects: every synonym as the script split it
    inverse: Mapping[str, str]  # inverse_synonym_dict: synonym -> category, later lines win
    double_words: Mapping[str, str]  # double_word_dict

    @classmethod
    def build(
        cls, synonyms_txt: str, double_words: Iterable[str], animal_words: Sequence[str],
        vehicle_words: Sequence[str],
    ) -> RohrbachVocabulary:  # fmt: skip
        """The tables from the text of `data/synonyms.txt` and the script's word lists."""
        lines = [s.strip().split(", ") for s in synonyms_txt.splitlines(keepends=True)]
        objects: set[str] = set()
        inverse: dict[str, str] = {}
        for synonym in lines:
            objects.update(synonym)
            for s in synonym:
                inverse[s] = synonym[0]
        table = {w: w for w in double_words}
        for animal in animal_words:
            table[f"baby {animal}"] = table[f"adult {animal}"] = animal
        for vehicle in vehicle_words:
            table[f"passenger {vehicle}"] = vehicle
        table |= {"bow tie": "tie", "toilet seat": "toilet", "wine glas": "wine glass"}
        return cls(frozenset(objects), inverse, table)

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(self.inverse.values())

    def category(self, name: str) -> str | None:
        """`inverse_synonym_dict[name]` (annotation category names are looked up as given)."""
        return self.inverse.get(name)

    def words(self, caption: str) -> list[str]:
        """`caption_to_words` up to its object filter: singularize, merge pairs, drop a
        toilet's seat."""
        words = [singularize(w) for w in tokenize(caption)]
        merged: list[str] = []
        i = 0
        while i < len(words):
            pair = " ".join(words[i : i + 2])
            if pair in self.double_words:
                merged.append(self.double_words[pair])
                i += 2
            else:
                merged.append(words[i])
                i += 1
        if "toilet" in merged and "seat" in merged:
            merged = [w for w in merged if w != "seat"]
        return merged

    def mentions(self, caption: str) -> list[Mention]:
        """Every word of the caption that is a synonym, with its category, repeats included."""
        return [Mention(w, self.inverse[w]) for w in self.words(caption) if w in self.objects]
