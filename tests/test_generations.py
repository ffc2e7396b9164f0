"""A policy keeps its meaning across Rekognition's model generations (AWS's 6.1 -> 7 table)."""

from __future__ import annotations

from typing import Any

import pytest

from thumbor_rekognition import generations
from thumbor_rekognition.decision import (
    ContentType,
    Label,
    Status,
    content_types_from_rekognition,
    labels_from_rekognition,
)
from thumbor_rekognition.policy import Policy

# AWS's L2 mapping table, typed in from the "Label mappings for Versions 6.1 to 7" page
# (docs.aws.amazon.com/rekognition/latest/dg/moderation-response-transform.html), one
# 7.x finding per line: (6.1 L1, 6.1 L2, 7 path, 7 ContentTypes). Not read from the
# package's own copy of the table, so a wrong row there fails here.
AWS_L2_ROWS = [
    ("Explicit Nudity", "Nudity", ("Explicit", "Explicit Nudity", "Exposed Female Nipple"), ()),
    ("Explicit Nudity", "Nudity", ("Explicit", "Explicit Nudity", "Exposed Buttocks or Anus"), ()),
    (
        "Explicit Nudity",
        "Graphic Male Nudity",
        ("Explicit", "Explicit Nudity", "Exposed Male Genitalia"),
        (),
    ),
    (
        "Explicit Nudity",
        "Graphic Female Nudity",
        ("Explicit", "Explicit Nudity", "Exposed Female Genitalia"),
        (),
    ),
    ("Explicit Nudity", "Sexual Activity", ("Explicit", "Explicit Sexual Activity"), ()),
    (
        "Explicit Nudity",
        "Illustrated Explicit Nudity",
        ("Explicit", "Explicit Nudity"),
        ("Illustrated",),
    ),
    (
        "Explicit Nudity",
        "Illustrated Explicit Nudity",
        ("Explicit", "Explicit Nudity"),
        ("Animated",),
    ),
    (
        "Explicit Nudity",
        "Illustrated Explicit Nudity",
        ("Explicit", "Explicit Sexual Activity"),
        ("Illustrated",),
    ),
    (
        "Explicit Nudity",
        "Illustrated Explicit Nudity",
        ("Explicit", "Explicit Sexual Activity"),
        ("Animated",),
    ),
    ("Explicit Nudity", "Adult Toys", ("Explicit", "Sex Toys"), ()),
    (
        "Suggestive",
        "Female Swimwear Or Underwear",
        ("Swimwear or Underwear", "Female Swimwear or Underwear"),
        (),
    ),
    (
        "Suggestive",
        "Male Swimwear Or Underwear",
        ("Swimwear or Underwear", "Male Swimwear or Underwear"),
        (),
    ),
    (
        "Suggestive",
        "Partial Nudity",
        (
            "Non-Explicit Nudity of Intimate parts and Kissing",
            "Non-Explicit Nudity",
            "Implied Nudity",
        ),
        (),
    ),
    (
        "Suggestive",
        "Barechested Male",
        (
            "Non-Explicit Nudity of Intimate parts and Kissing",
            "Non-Explicit Nudity",
            "Exposed Male Nipple",
        ),
        (),
    ),
    (
        "Suggestive",
        "Revealing Clothes",
        ("Non-Explicit Nudity of Intimate parts and Kissing", "Non-Explicit Nudity"),
        (),
    ),
    (
        "Suggestive",
        "Sexual Situations",
        ("Non-Explicit Nudity of Intimate parts and Kissing", "Kissing on the Lips"),
        (),
    ),
    ("Violence", "Graphic Violence Or Gore", ("Violence", "Graphic Violence", "Blood & Gore"), ()),
    ("Violence", "Physical Violence", ("Violence", "Graphic Violence", "Physical Violence"), ()),
    ("Violence", "Weapon Violence", ("Violence", "Graphic Violence", "Weapon Violence"), ()),
    ("Violence", "Weapons", ("Violence", "Weapons"), ()),
    ("Violence", "Self Injury", ("Violence", "Graphic Violence", "Self-Harm"), ()),
    (
        "Visually Disturbing",
        "Emaciated Bodies",
        ("Visually Disturbing", "Death and Emaciation", "Emaciated Bodies"),
        (),
    ),
    (
        "Visually Disturbing",
        "Corpses",
        ("Visually Disturbing", "Death and Emaciation", "Corpses"),
        (),
    ),
    ("Visually Disturbing", "Air Crash", ("Visually Disturbing", "Crashes", "Air Crash"), ()),
    (
        "Visually Disturbing",
        "Explosions And Blasts",
        ("Violence", "Graphic Violence", "Explosions and Blasts"),
        (),
    ),
    ("Rude Gestures", "Middle Finger", ("Rude Gestures", "Middle Finger"), ()),
    ("Drugs", "Pills", ("Drugs & Tobacco", "Products", "Pills"), ()),
    (
        "Tobacco",
        "Smoking",
        ("Drugs & Tobacco", "Drugs & Tobacco Paraphernalia & Use", "Smoking"),
        (),
    ),
    ("Alcohol", "Drinking", ("Alcohol", "Alcohol Use", "Drinking"), ()),
    ("Alcohol", "Alcoholic Beverages", ("Alcohol", "Alcoholic Beverages"), ()),
    ("Gambling", "Gambling", ("Gambling", "Gambling"), ()),
    ("Hate Symbols", "Nazi Party", ("Hate Symbols", "Nazi Party"), ()),
    ("Hate Symbols", "White Supremacy", ("Hate Symbols", "White Supremacy"), ()),
    ("Hate Symbols", "Extremist", ("Hate Symbols", "Extremist"), ()),
]

# Rows where AWS maps two 6.1 labels onto one 7 label: which one the model meant is
# unknown, so an ignore must name both to approve.
AWS_SHARED_ROWS = [
    (
        [("Drugs", "Drug Products"), ("Tobacco", "Tobacco Products")],
        ("Drugs & Tobacco", "Products"),
    ),
    (
        [("Drugs", "Drug Use"), ("Drugs", "Drug Paraphernalia")],
        ("Drugs & Tobacco", "Drugs & Tobacco Paraphernalia & Use"),
    ),
    # AWS's v7-to-v6 helper ("Amazon Rekognition Moderation V7 migration - a helper
    # function", aws-samples), v7_name_mapping: "Corpses": [{"Name": "Corpses", ...},
    # {"Name": "Hanging", "ParentName": "Visually Disturbing"}].
    (
        [("Visually Disturbing", "Corpses"), ("Visually Disturbing", "Hanging")],
        ("Visually Disturbing", "Death and Emaciation", "Corpses"),
    ),
]
# 7 paths of AWS_L2_ROWS that also stand for another 6.1 label (AWS_SHARED_ROWS).
SHARED_7 = {path for _, path in AWS_SHARED_ROWS}

# AWS's L1 table: a 7 top-level label alone stands for these 6.1 top-level labels.
AWS_L1_ROWS = [
    ("Explicit Nudity", "Explicit"),
    ("Suggestive", "Non-Explicit Nudity of Intimate parts and Kissing"),
    ("Suggestive", "Swimwear or Underwear"),
    ("Violence", "Violence"),
    ("Visually Disturbing", "Visually Disturbing"),
    ("Rude Gestures", "Rude Gestures"),
    ("Alcohol", "Alcohol"),
    ("Gambling", "Gambling"),
    ("Hate Symbols", "Hate Symbols"),
]

CONFIDENCE = 80.0
# A 7.x-only name at the default threshold: the policy is read as a 7.x one, and nothing
# but its ignores approves.
SEVEN = {"explicit": 0.5}


def counterparts_7(top: str, child: str) -> list[str]:
    """The 7.x labels AWS maps a 6.1 label onto, by its rows."""
    return list(dict.fromkeys(path[-1] for t, c, path, _ in AWS_L2_ROWS if (t, c) == (top, child)))


# 6.1 labels AWS maps onto one 7 label, and those it splits over several (Nudity; and
# Illustrated Explicit Nudity, over two labels and two ContentTypes).
ONE_TO_ONE_ROWS = [row for row in AWS_L2_ROWS if len(counterparts_7(row[0], row[1])) == 1]
SHARED_6X_ROWS = [row for row in AWS_L2_ROWS if len(counterparts_7(row[0], row[1])) > 1]


def answer_6(top: str, child: str) -> tuple[Label, ...]:
    """A model 6.1 answer as Rekognition sends it: no TaxonomyLevel."""
    items: list[dict[str, Any]] = [{"Name": top, "ParentName": "", "Confidence": CONFIDENCE}]
    if child:
        items.append({"Name": child, "ParentName": top, "Confidence": CONFIDENCE})
    return labels_from_rekognition(items)


def answer_7(path: tuple[str, ...]) -> tuple[Label, ...]:
    """A model 7 answer: every level of the path, each with its TaxonomyLevel."""
    return labels_from_rekognition(
        [
            {
                "Name": name,
                "ParentName": path[index - 1] if index else "",
                "Confidence": CONFIDENCE,
                "TaxonomyLevel": index + 1,
            }
            for index, name in enumerate(path)
        ]
    )


def kinds(names: tuple[str, ...]) -> tuple[ContentType, ...]:
    return content_types_from_rekognition([{"Name": name, "Confidence": 90.0} for name in names])


def policies_6(top: str, child: str) -> list[tuple[dict[str, float | None], Status]]:
    """6.x policies around one 6.1 label, with what they decide on it at 80% (by hand)."""
    return [
        ({}, Status.REJECTED),
        ({child: None}, Status.APPROVED),
        ({top: None}, Status.APPROVED),
        ({top: 0.9}, Status.APPROVED),
        ({top: 0.9, child: 0.7}, Status.REJECTED),
        ({top: None, child: 0.7}, Status.REJECTED),
        ({child: 0.9}, Status.APPROVED),
        # A threshold on a 6.x-only name makes the policy a 6.x one, whatever the row.
        (
            {"revealing_clothes" if child != "Revealing Clothes" else "nudity": 0.95},
            Status.REJECTED,
        ),
    ]


def row_id(row: tuple[Any, ...]) -> str:
    return " > ".join(row[2]) + ("+" + "+".join(row[3]) if row[3] else "")


@pytest.mark.parametrize(
    ("top", "child", "path", "types"), AWS_L2_ROWS, ids=map(row_id, AWS_L2_ROWS)
)
def test_6x_policy_judges_each_aws_row_on_7x_as_on_6x(
    top: str, child: str, path: tuple[str, ...], types: tuple[str, ...]
) -> None:
    for rules, expected in policies_6(top, child):
        if path in SHARED_7 and child in rules and top not in rules:
            continue  # a rule on one of the two 6.1 labels only: the shared rows' test
        policy = Policy(rules=rules)

        on_6 = policy.judge(answer_6(top, child))
        on_7 = policy.judge(answer_7(path), kinds(types))

        assert (on_6.status, on_7.status) == (expected, expected), rules


@pytest.mark.parametrize(("top", "path"), AWS_L1_ROWS)
def test_6x_policy_judges_a_7x_top_level_label_alone_as_its_6x_top_level(
    top: str, path: str
) -> None:
    for rules, expected in [
        ({top: None}, Status.APPROVED),
        ({top: 0.9}, Status.APPROVED),
        ({top: 0.7}, Status.REJECTED),
        ({"nudity": 0.95}, Status.REJECTED),
    ]:
        policy = Policy(rules=rules)

        on_6 = policy.judge(answer_6(top, ""))
        on_7 = policy.judge(answer_7((path,)))

        assert (on_6.status, on_7.status) == (expected, expected), rules


@pytest.mark.parametrize(("labels_6", "path"), AWS_SHARED_ROWS)
def test_7x_label_aws_maps_two_6x_labels_onto_needs_both_ignored(
    labels_6: list[tuple[str, str]], path: tuple[str, ...]
) -> None:
    both = Policy(rules={child: None for _, child in labels_6})
    one = Policy(rules={labels_6[0][1]: None})

    assert both.judge(answer_7(path)).status is Status.APPROVED
    assert one.judge(answer_7(path)).status is Status.REJECTED
    assert one.judge(answer_6(*labels_6[0])).status is Status.APPROVED


@pytest.mark.parametrize(
    ("top", "child", "path", "types"), ONE_TO_ONE_ROWS, ids=map(row_id, ONE_TO_ONE_ROWS)
)
def test_7x_policy_judges_each_aws_row_on_6x_as_on_7x(
    top: str, child: str, path: tuple[str, ...], types: tuple[str, ...]
) -> None:
    policy = Policy(rules={path[-1]: None, **SEVEN})
    strict = Policy(rules={path[0]: 0.7, "bare_back": None})

    on_6 = policy.judge(answer_6(top, child))
    on_7 = policy.judge(answer_7(path), kinds(types))

    assert (on_6.status, on_7.status) == (Status.APPROVED, Status.APPROVED)
    assert strict.judge(answer_6(top, child)).status is Status.REJECTED


@pytest.mark.parametrize(
    ("top", "child", "path", "types"), SHARED_6X_ROWS, ids=map(row_id, SHARED_6X_ROWS)
)
def test_7x_policy_ignoring_one_7x_label_of_a_6x_label_aws_splits_still_rejects_the_6x_label(
    top: str, child: str, path: tuple[str, ...], types: tuple[str, ...]
) -> None:
    one = Policy(rules={path[-1]: None, **SEVEN})
    every = Policy(rules={**dict.fromkeys(counterparts_7(top, child)), **SEVEN})

    assert one.judge(answer_7(path), kinds(types)).status is Status.APPROVED
    assert one.judge(answer_6(top, child)).status is Status.REJECTED
    assert every.judge(answer_6(top, child)).status is Status.APPROVED


def test_7x_policy_ignores_6x_nudity_only_with_both_of_its_7x_labels() -> None:
    both = Policy(rules={"exposed_female_nipple": None, "exposed_buttocks_or_anus": None})
    one = Policy(rules={"exposed_female_nipple": None})

    assert both.judge(answer_6("Explicit Nudity", "Nudity")).status is Status.APPROVED
    assert one.judge(answer_6("Explicit Nudity", "Nudity")).status is Status.REJECTED


def test_issue_examples_of_a_6x_policy_on_7x_answers() -> None:
    seed = Policy(
        rules={
            "explicit_nudity": 0.6,
            "revealing_clothes": None,
            "tobacco": None,
            "visually_disturbing": 0.9,
        }
    )
    revealing = answer_7(
        ("Non-Explicit Nudity of Intimate parts and Kissing", "Non-Explicit Nudity")
    )
    smoking = answer_7(("Drugs & Tobacco", "Drugs & Tobacco Paraphernalia & Use", "Smoking"))
    corpses = answer_7(("Visually Disturbing", "Death and Emaciation", "Corpses"))
    sex = labels_from_rekognition(
        [
            {"Name": "Explicit", "ParentName": "", "Confidence": 55.0, "TaxonomyLevel": 1},
            {
                "Name": "Explicit Sexual Activity",
                "ParentName": "Explicit",
                "Confidence": 55.0,
                "TaxonomyLevel": 2,
            },
        ]
    )

    assert seed.judge(revealing).status is Status.APPROVED
    assert seed.judge(smoking).status is Status.APPROVED
    assert seed.judge(corpses).status is Status.APPROVED
    assert seed.judge(sex).status is Status.APPROVED


def test_policy_mixing_generations_is_refused_naming_the_names() -> None:
    with pytest.raises(ValueError, match=r"revealing_clothes.*bare_back"):
        Policy(rules={"revealing_clothes": None, "bare_back": None})


def test_lossy_7x_labels_are_listed_with_what_a_6x_policy_judges_them_as() -> None:
    lossy = generations.approximations("6")

    assert lossy[
        "Non-Explicit Nudity of Intimate parts and Kissing > Non-Explicit Nudity > Bare Back"
    ] == ["Suggestive > Revealing Clothes"]
    assert lossy["Drugs & Tobacco > Products"] == [
        "Drugs > Drug Products",
        "Tobacco > Tobacco Products",
    ]
    assert "Swimwear or Underwear > Female Swimwear or Underwear" not in lossy


def test_every_6x_name_is_reached_by_some_7x_answer() -> None:
    # Hanging only through AWS's helper (7.x Corpses); every other 6.x name has a row.
    assert generations.unreachable("6") == set()


def test_7x_policy_rule_on_illustrated_applies_to_6x_illustrated_explicit_nudity() -> None:
    policy = Policy(rules={"illustrated": None, "explicit": 0.5})

    drawn = policy.judge(answer_6("Explicit Nudity", "Illustrated Explicit Nudity"))
    photo = policy.judge(answer_6("Explicit Nudity", "Nudity"))

    assert (drawn.status, photo.status) == (Status.APPROVED, Status.REJECTED)


# AWS's v7-to-v6 helper ("Amazon Rekognition Moderation V7 migration - a helper
# function", aws-samples), its v7_name_mapping typed in for the 7.x labels that have no
# row of their own in AWS's table: the helper maps each label Rekognition reports, the
# parents beside their children, so such a label lands where its nearest mapped
# ancestor does. "Non-Explicit Nudity" and "Obstructed intimate parts" -> [{"Name":
# "Revealing Clothes", "ParentName": "Suggestive"}].
NEN = "Non-Explicit Nudity of Intimate parts and Kissing"
HELPER_PLACES = [
    ((NEN, "Non-Explicit Nudity", "Bare Back"), ("Suggestive", "Revealing Clothes")),
    (
        (NEN, "Non-Explicit Nudity", "Partially Exposed Buttocks"),
        ("Suggestive", "Revealing Clothes"),
    ),
    (
        (NEN, "Non-Explicit Nudity", "Partially Exposed Female Breast"),
        ("Suggestive", "Revealing Clothes"),
    ),
    ((NEN, "Obstructed Intimate Parts"), ("Suggestive", "Revealing Clothes")),
    (
        (NEN, "Obstructed Intimate Parts", "Obstructed Female Nipple"),
        ("Suggestive", "Revealing Clothes"),
    ),
    (
        (NEN, "Obstructed Intimate Parts", "Obstructed Male Genitalia"),
        ("Suggestive", "Revealing Clothes"),
    ),
]
# Reported without a level-3 label, these have no mapped ancestor in the helper (it
# drops them); judged as their 6.x top-level category, the stricter reading.
HELPER_DROPS = [
    (("Violence", "Graphic Violence"), "Violence"),
    (("Visually Disturbing", "Death and Emaciation"), "Visually Disturbing"),
    (("Visually Disturbing", "Crashes"), "Visually Disturbing"),
    (("Alcohol", "Alcohol Use"), "Alcohol"),
]


@pytest.mark.parametrize(("path", "place"), HELPER_PLACES, ids=lambda item: " > ".join(item))
def test_7x_label_without_a_row_lands_where_aws_helper_puts_it(
    path: tuple[str, ...], place: tuple[str, str]
) -> None:
    top, child = place
    # The README's own seed ignores Revealing Clothes: a beach photo is approved.
    assert Policy(rules={child: None}).judge(answer_7(path)).status is Status.APPROVED
    assert Policy(rules={child: 0.9}).judge(answer_7(path)).status is Status.APPROVED
    assert Policy(rules={child: 0.7, top: None}).judge(answer_7(path)).status is Status.REJECTED
    # Judged as that label, not as its top-level category.
    assert Policy(rules={top: None, child: 0.7}).judge(answer_7(path)).reasons[0].judged_as == (
        f"{top} > {child}"
    )


@pytest.mark.parametrize(("path", "top"), HELPER_DROPS, ids=lambda item: str(item))
def test_7x_label_aws_helper_drops_is_judged_as_its_6x_top_level(
    path: tuple[str, ...], top: str
) -> None:
    assert Policy(rules={top: None}).judge(answer_7(path)).status is Status.APPROVED
    assert Policy(rules={top: 0.7, "nudity": 0.1}).judge(answer_7(path)).status is Status.REJECTED


def test_7x_corpses_is_6x_corpses_and_hanging_as_in_aws_helper() -> None:
    corpses = answer_7(("Visually Disturbing", "Death and Emaciation", "Corpses"))

    assert Policy(rules={"corpses": None}).judge(corpses).status is Status.REJECTED
    assert Policy(rules={"hanging": None}).judge(corpses).status is Status.REJECTED
    assert Policy(rules={"corpses": None, "hanging": None}).judge(corpses).status is (
        Status.APPROVED
    )
    hanging = Policy(rules={"corpses": None, "hanging": 0.7}).judge(corpses)
    assert [reason.judged_as for reason in hanging.reasons] == ["Visually Disturbing > Hanging"]


def test_photographic_7x_explicit_nudity_is_never_illustrated_for_a_6x_policy() -> None:
    """The helper maps any 7.x 'Explicit Nudity' to 'Illustrated Explicit Nudity'; AWS's
    table does so only with ContentTypes Animated or Illustrated, and so does the plugin."""
    bare = answer_7(("Explicit", "Explicit Nudity"))
    policy = Policy(rules={"illustrated_explicit_nudity": None})

    assert policy.judge(bare).status is Status.REJECTED
    assert policy.judge(bare, kinds(("Illustrated",))).status is Status.APPROVED


def drawn(confidence: float) -> tuple[ContentType, ...]:
    return content_types_from_rekognition([{"Name": "Illustrated", "Confidence": confidence}])


def test_content_type_counts_only_at_or_above_its_threshold_else_the_default() -> None:
    hate = answer_7(("Hate Symbols", "Nazi Party"))
    ignored = Policy(rules={"illustrated": None, "explicit": 0.5})
    lenient = Policy(rules={"illustrated": 0.95, "explicit": 0.5})

    # ignored: counts at or above MODERATION_MIN_CONFIDENCE (0.5 here).
    assert ignored.judge(hate, drawn(30.0)).status is Status.REJECTED
    assert ignored.judge(hate, drawn(49.9)).status is Status.REJECTED
    assert ignored.judge(hate, drawn(50.0)).status is Status.APPROVED
    # its own threshold: a drawing only when the model is that sure.
    assert lenient.judge(hate, drawn(90.0)).status is Status.REJECTED
    assert lenient.judge(hate, drawn(96.0)).status is Status.APPROVED
    # The 6.x reading of drawn explicit nudity needs a counted ContentType too.
    six = Policy(rules={"illustrated_explicit_nudity": None})
    bare = answer_7(("Explicit", "Explicit Nudity", "Exposed Female Nipple"))
    assert six.judge(bare, drawn(30.0)).status is Status.REJECTED
    assert six.judge(bare, drawn(80.0)).status is Status.APPROVED
