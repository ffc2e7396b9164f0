"""The Amazon Rekognition moderation label tree, both model generations.

Model 6.x has two levels, model 7.x three. Names are matched on slugs
(``Female Swimwear Or Underwear`` -> ``female_swimwear_or_underwear``), with an alias
table for the spellings AWS itself uses inconsistently. A name can be both a parent and
a child (``Gambling > Gambling``), so nodes are told apart by level.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from functools import cache

# Each tree maps a top-level category to its children; a child is either a leaf name or
# a (name, children) pair.
_Tree = Mapping[str, "list[str | tuple[str, list[str]]]"]

TAXONOMY_6: _Tree = {
    "Explicit Nudity": [
        "Nudity",
        "Graphic Male Nudity",
        "Graphic Female Nudity",
        "Sexual Activity",
        "Illustrated Explicit Nudity",
        "Adult Toys",
    ],
    "Suggestive": [
        "Female Swimwear Or Underwear",
        "Male Swimwear Or Underwear",
        "Partial Nudity",
        "Barechested Male",
        "Revealing Clothes",
        "Sexual Situations",
    ],
    "Violence": [
        "Graphic Violence Or Gore",
        "Physical Violence",
        "Weapon Violence",
        "Weapons",
        "Self Injury",
    ],
    "Visually Disturbing": [
        "Emaciated Bodies",
        "Corpses",
        "Hanging",
        "Air Crash",
        "Explosions And Blasts",
    ],
    "Rude Gestures": ["Middle Finger"],
    "Drugs": ["Drug Products", "Drug Use", "Pills", "Drug Paraphernalia"],
    "Tobacco": ["Tobacco Products", "Smoking"],
    "Alcohol": ["Drinking", "Alcoholic Beverages"],
    "Gambling": ["Gambling"],
    "Hate Symbols": ["Nazi Party", "White Supremacy", "Extremist"],
}

TAXONOMY_7: _Tree = {
    "Explicit": [
        (
            "Explicit Nudity",
            [
                "Exposed Male Genitalia",
                "Exposed Female Genitalia",
                "Exposed Buttocks or Anus",
                "Exposed Female Nipple",
            ],
        ),
        "Explicit Sexual Activity",
        "Sex Toys",
    ],
    "Non-Explicit Nudity of Intimate parts and Kissing": [
        (
            "Non-Explicit Nudity",
            [
                "Bare Back",
                "Exposed Male Nipple",
                "Partially Exposed Buttocks",
                "Partially Exposed Female Breast",
                "Implied Nudity",
            ],
        ),
        ("Obstructed Intimate Parts", ["Obstructed Female Nipple", "Obstructed Male Genitalia"]),
        "Kissing on the Lips",
    ],
    "Swimwear or Underwear": ["Female Swimwear or Underwear", "Male Swimwear or Underwear"],
    "Violence": [
        "Weapons",
        (
            "Graphic Violence",
            [
                "Weapon Violence",
                "Physical Violence",
                "Self-Harm",
                "Blood & Gore",
                "Explosions and Blasts",
            ],
        ),
    ],
    "Visually Disturbing": [
        ("Death and Emaciation", ["Emaciated Bodies", "Corpses"]),
        ("Crashes", ["Air Crash"]),
    ],
    "Drugs & Tobacco": [
        ("Products", ["Pills"]),
        ("Drugs & Tobacco Paraphernalia & Use", ["Smoking"]),
    ],
    "Alcohol": [("Alcohol Use", ["Drinking"]), "Alcoholic Beverages"],
    "Rude Gestures": ["Middle Finger"],
    "Gambling": ["Gambling"],
    "Hate Symbols": ["Nazi Party", "White Supremacy", "Extremist"],
}

# What a model 7.x answer's ContentTypes can say about the whole picture. Rules may name
# them like categories: they set the threshold of every label in such a picture.
CONTENT_TYPES = ("Animated", "Illustrated")

# Spellings seen in AWS's documentation and responses, slugged, -> the slug used here.
ALIASES: Mapping[str, str] = {
    "drug_and_tobacco_paraphernalia_and_use": "drugs_and_tobacco_paraphernalia_and_use",
    "drug_and_tobacco": "drugs_and_tobacco",
    "exposed_female_nipples": "exposed_female_nipple",
    # AWS's 6.1 -> 7 mapping table writes it so.
    "exposed_buttocks": "exposed_buttocks_or_anus",
}


def slug(name: str) -> str:
    """Lower-case, '&' spelt 'and', every other run of non-alphanumerics an underscore."""
    text = name.replace("&", " and ").lower()
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def _without_and(text: str) -> str:
    return re.sub(r"(^|_)and(_|$)", "_", text).strip("_")


@cache
def _nodes() -> dict[tuple[str, int], frozenset[str]]:
    """(slug, level) -> slugs of the parents that node has in either generation."""
    nodes: dict[tuple[str, int], set[str]] = {}

    def add(name: str, level: int, parent: str) -> None:
        nodes.setdefault((slug(name), level), set()).add(parent)

    for tree in (TAXONOMY_6, TAXONOMY_7):
        for top, children in tree.items():
            add(top, 1, "")
            for child in children:
                if isinstance(child, tuple):
                    name, grandchildren = child
                    add(name, 2, slug(top))
                    for grandchild in grandchildren:
                        add(grandchild, 3, slug(name))
                else:
                    add(child, 2, slug(top))
    return {key: frozenset(parents) for key, parents in nodes.items()}


@cache
def known_slugs() -> frozenset[str]:
    """Every category slug of either generation."""
    return frozenset(name for name, _ in _nodes())


@cache
def _lookup() -> dict[str, str]:
    table = {name: name for name in known_slugs()}
    table.update((slug(kind), slug(kind)) for kind in CONTENT_TYPES)
    for name in known_slugs():
        table.setdefault(_without_and(name), name)
    for alias, target in ALIASES.items():
        table.setdefault(alias, target)
        table.setdefault(_without_and(alias), target)
    return table


def canonical(name: str) -> str | None:
    """The known slug a category name stands for, or None if it names no category."""
    text = slug(name)
    return _lookup().get(text) or _lookup().get(_without_and(text))


def suggest(name: str) -> str | None:
    """The known slug closest to a misspelt name, if any is close."""
    matches = difflib.get_close_matches(slug(name), sorted(known_slugs()), n=1, cutoff=0.75)
    return matches[0] if matches else None


def parents_of(name: str, level: int) -> frozenset[str]:
    """Slugs of the parents a category has at that level, in either generation."""
    return _nodes().get((name, level), frozenset())


def lineage(name: str, parent: str, level: int) -> tuple[str, ...]:
    """A label's slug followed by its ancestors' slugs, nearest first."""
    own = canonical(name) or slug(name)
    if not parent:
        return (own,)
    chain = [own, canonical(parent) or slug(parent)]
    current, current_level = chain[-1], level - 1
    while current_level > 1:
        above = parents_of(current, current_level) - {""}
        if len(above) != 1:
            break
        current = next(iter(above))
        chain.append(current)
        current_level -= 1
    return tuple(chain)


def infer_level(parent: str, level: int | None, siblings: Iterable[tuple[str, str]]) -> int:
    """A label's taxonomy level; model 6.x responses may not say it."""
    if level:
        return level
    if not parent:
        return 1
    parent_slug = canonical(parent) or slug(parent)

    def key(name: str) -> str:
        return canonical(name) or slug(name)

    # A name can be its own parent (Gambling > Gambling): that entry is the label itself,
    # not a grandparent.
    parent_has_parent = any(
        key(name) == parent_slug and grand and key(grand) != parent_slug for name, grand in siblings
    )
    return 3 if parent_has_parent else 2
