"""The Rekognition label tree: slugs, aliases, lineages and levels, for both generations."""

from __future__ import annotations

import pytest

from thumbor_rekognition import taxonomy
from thumbor_rekognition.decision import labels_from_rekognition

# Every category of Rekognition's model 6.x and 7.x trees, spelt as the design's notes on
# Rekognition (taken from AWS's documentation) spell them, written out here rather than
# read from the package so that a category dropped from its tree shows.
DESIGN_6X = {
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
DESIGN_7X = [
    "Explicit",
    "Explicit Nudity",
    "Exposed Male Genitalia",
    "Exposed Female Genitalia",
    "Exposed Buttocks or Anus",
    "Exposed Female Nipple",
    "Explicit Sexual Activity",
    "Sex Toys",
    "Non-Explicit Nudity of Intimate parts and Kissing",
    "Non-Explicit Nudity",
    "Bare Back",
    "Exposed Male Nipple",
    "Partially Exposed Buttocks",
    "Partially Exposed Female Breast",
    "Implied Nudity",
    "Obstructed Intimate Parts",
    "Obstructed Female Nipple",
    "Obstructed Male Genitalia",
    "Kissing on the Lips",
    "Swimwear or Underwear",
    "Female Swimwear or Underwear",
    "Male Swimwear or Underwear",
    "Violence",
    "Weapons",
    "Graphic Violence",
    "Weapon Violence",
    "Physical Violence",
    "Self-Harm",
    "Blood & Gore",
    "Explosions and Blasts",
    "Visually Disturbing",
    "Death and Emaciation",
    "Emaciated Bodies",
    "Corpses",
    "Crashes",
    "Air Crash",
    "Drugs & Tobacco",
    "Products",
    "Pills",
    "Drugs & Tobacco Paraphernalia & Use",
    "Smoking",
    "Alcohol",
    "Alcohol Use",
    "Drinking",
    "Alcoholic Beverages",
    "Rude Gestures",
    "Middle Finger",
    "Gambling",
    "Hate Symbols",
    "Nazi Party",
    "White Supremacy",
    "Extremist",
]
DESIGN_6X_NAMES = [name for top, children in DESIGN_6X.items() for name in (top, *children)]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Female Swimwear Or Underwear", "female_swimwear_or_underwear"),
        ("female_swimwear_or_underwear", "female_swimwear_or_underwear"),
        ("Drugs & Tobacco", "drugs_and_tobacco"),
        ("Blood & Gore", "blood_and_gore"),
        ("Self-Harm", "self_harm"),
        (
            "Non-Explicit Nudity of Intimate parts and Kissing",
            "non_explicit_nudity_of_intimate_parts_and_kissing",
        ),
        ("  Explicit   Nudity  ", "explicit_nudity"),
        ("EXPLICIT-NUDITY", "explicit_nudity"),
    ],
)
def test_slug_lowercases_spells_out_ampersands_and_joins_words_with_underscores(
    name: str, expected: str
) -> None:
    result = taxonomy.slug(name)

    assert result == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Explicit Nudity", "explicit_nudity"),
        ("explicit_nudity", "explicit_nudity"),
        ("EXPLICIT NUDITY", "explicit_nudity"),
        ("Female Swimwear Or Underwear", "female_swimwear_or_underwear"),
        ("Female Swimwear or Underwear", "female_swimwear_or_underwear"),
        ("Drug & Tobacco Paraphernalia & Use", "drugs_and_tobacco_paraphernalia_and_use"),
        ("Drugs & Tobacco Paraphernalia & Use", "drugs_and_tobacco_paraphernalia_and_use"),
        ("Drug & Tobacco", "drugs_and_tobacco"),
        ("Exposed Female Nipples", "exposed_female_nipple"),
        ("Exposed Female Nipple", "exposed_female_nipple"),
        ("Self-Harm", "self_harm"),
    ],
)
def test_canonical_maps_every_known_spelling_to_one_slug(name: str, expected: str) -> None:
    result = taxonomy.canonical(name)

    assert result == expected


@pytest.mark.parametrize("name", ["Cats", "", "explict_nudity", "Nudity Explicit", "Drugs Use"])
def test_canonical_is_none_for_names_that_are_no_category(name: str) -> None:
    result = taxonomy.canonical(name)

    assert result is None


@pytest.mark.parametrize(
    ("misspelt", "expected"),
    [
        ("explict_nudity", "explicit_nudity"),
        ("Revealing Cloths", "revealing_clothes"),
        ("Female Swimware or Underwear", "female_swimwear_or_underwear"),
    ],
)
def test_suggest_finds_the_category_a_misspelt_name_meant(misspelt: str, expected: str) -> None:
    result = taxonomy.suggest(misspelt)

    assert result == expected


def test_suggest_offers_nothing_for_a_name_unlike_any_category() -> None:
    result = taxonomy.suggest("zebra crossing")

    assert result is None


@pytest.mark.parametrize(
    ("name", "parent", "level", "expected"),
    [
        # Model 6.x: two levels.
        ("Explicit Nudity", "", 1, ("explicit_nudity",)),
        ("Nudity", "Explicit Nudity", 2, ("nudity", "explicit_nudity")),
        (
            "Female Swimwear Or Underwear",
            "Suggestive",
            2,
            ("female_swimwear_or_underwear", "suggestive"),
        ),
        ("Smoking", "Tobacco", 2, ("smoking", "tobacco")),
        (
            "Explosions And Blasts",
            "Visually Disturbing",
            2,
            ("explosions_and_blasts", "visually_disturbing"),
        ),
        # Model 7.x: three levels.
        (
            "Exposed Female Nipple",
            "Explicit Nudity",
            3,
            ("exposed_female_nipple", "explicit_nudity", "explicit"),
        ),
        (
            "Exposed Female Nipples",
            "Explicit Nudity",
            3,
            ("exposed_female_nipple", "explicit_nudity", "explicit"),
        ),
        ("Explicit Nudity", "Explicit", 2, ("explicit_nudity", "explicit")),
        ("Explicit", "", 1, ("explicit",)),
        (
            "Smoking",
            "Drug & Tobacco Paraphernalia & Use",
            3,
            ("smoking", "drugs_and_tobacco_paraphernalia_and_use", "drugs_and_tobacco"),
        ),
        ("Drinking", "Alcohol Use", 3, ("drinking", "alcohol_use", "alcohol")),
        ("Air Crash", "Crashes", 3, ("air_crash", "crashes", "visually_disturbing")),
        (
            "Explosions and Blasts",
            "Graphic Violence",
            3,
            ("explosions_and_blasts", "graphic_violence", "violence"),
        ),
        (
            "Bare Back",
            "Non-Explicit Nudity",
            3,
            (
                "bare_back",
                "non_explicit_nudity",
                "non_explicit_nudity_of_intimate_parts_and_kissing",
            ),
        ),
        (
            "Female Swimwear or Underwear",
            "Swimwear or Underwear",
            2,
            ("female_swimwear_or_underwear", "swimwear_or_underwear"),
        ),
        # A name that is its own parent.
        ("Gambling", "Gambling", 2, ("gambling", "gambling")),
        ("Gambling", "", 1, ("gambling",)),
    ],
)
def test_lineage_lists_a_label_and_its_ancestors_nearest_first(
    name: str, parent: str, level: int, expected: tuple[str, ...]
) -> None:
    result = taxonomy.lineage(name, parent, level)

    assert result == expected


@pytest.mark.parametrize(
    ("parent", "level", "siblings", "expected"),
    [
        ("Explicit Nudity", 2, [], 2),
        ("Explicit Nudity", 3, [], 3),
        ("", None, [("Suggestive", "")], 1),
        ("Suggestive", None, [("Suggestive", ""), ("Revealing Clothes", "Suggestive")], 2),
        (
            "Explicit Nudity",
            None,
            [
                ("Explicit", ""),
                ("Explicit Nudity", "Explicit"),
                ("Exposed Female Nipple", "Explicit Nudity"),
            ],
            3,
        ),
    ],
)
def test_infer_level_keeps_a_given_level_and_works_out_a_missing_one(
    parent: str, level: int | None, siblings: list[tuple[str, str]], expected: int
) -> None:
    result = taxonomy.infer_level(parent, level, siblings)

    assert result == expected


def test_infer_level_puts_the_6x_gambling_child_at_level_two() -> None:
    siblings = [("Gambling", ""), ("Gambling", "Gambling")]

    result = taxonomy.infer_level("Gambling", None, siblings)

    assert result == 2


def test_labels_from_a_6x_response_without_taxonomy_level_get_levels_one_and_two() -> None:
    items = [
        {"Name": "Suggestive", "ParentName": "", "Confidence": 81.5},
        {"Name": "Revealing Clothes", "ParentName": "Suggestive", "Confidence": 81.5},
    ]

    labels = labels_from_rekognition(items)

    assert [(label.name, label.parent, label.level) for label in labels] == [
        ("Suggestive", "", 1),
        ("Revealing Clothes", "Suggestive", 2),
    ]
    assert [label.confidence for label in labels] == [81.5, 81.5]


def test_labels_from_a_7x_response_keep_the_taxonomy_level_it_gives() -> None:
    items = [
        {"Name": "Explicit", "ParentName": "", "Confidence": 93.0, "TaxonomyLevel": 1},
        {
            "Name": "Explicit Nudity",
            "ParentName": "Explicit",
            "Confidence": 93.0,
            "TaxonomyLevel": 2,
        },
        {
            "Name": "Exposed Female Nipple",
            "ParentName": "Explicit Nudity",
            "Confidence": 93.0,
            "TaxonomyLevel": 3,
        },
    ]

    labels = labels_from_rekognition(items)

    assert [label.level for label in labels] == [1, 2, 3]


def test_known_slugs_are_exactly_the_categories_of_both_generations_in_the_design() -> None:
    expected = {taxonomy.slug(name) for name in DESIGN_6X_NAMES + DESIGN_7X}

    result = taxonomy.known_slugs()

    assert result == expected


@pytest.mark.parametrize("name", DESIGN_6X_NAMES + DESIGN_7X)
def test_every_category_the_design_names_is_recognised(name: str) -> None:
    result = taxonomy.canonical(name)

    assert result in taxonomy.known_slugs()
