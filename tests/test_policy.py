"""Labels plus thresholds give a decision: thresholds, cascades, ignores and the review band."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from thumbor_rekognition.decision import (
    ContentType,
    Label,
    Reason,
    Status,
    labels_from_rekognition,
)
from thumbor_rekognition.policy import Policy, parse_cloudinary_chain, parse_cloudinary_rules

SEED_RULES: dict[str, float | None] = {
    "explicit_nudity": 0.6,
    "female_swimwear_or_underwear": 0.75,
    "revealing_clothes": None,
}
SEED = Policy(default=0.5, rules=SEED_RULES)


def response(path: tuple[str, ...], confidence: float, generation: int) -> tuple[Label, ...]:
    """Labels as Rekognition returns them for one finding, top-level category first.

    Every ancestor comes back next to the finding with the finding's confidence; model 6.x
    responses carry no TaxonomyLevel, model 7.x ones do.
    """
    items: list[dict[str, Any]] = []
    for level, name in enumerate(path, start=1):
        item: dict[str, Any] = {
            "Name": name,
            "ParentName": path[level - 2] if level > 1 else "",
            "Confidence": confidence,
        }
        if generation == 7:
            item["TaxonomyLevel"] = level
        items.append(item)
    return labels_from_rekognition(items)


# (path of the finding, threshold that should apply to it, category that sets it, the 6.x
# label a 7.x finding is judged as under this 6.x policy)
SEED_CASES_6X = [
    (("Suggestive", "Female Swimwear Or Underwear"), 75.0, "female_swimwear_or_underwear", ""),
    (("Explicit Nudity", "Nudity"), 60.0, "explicit_nudity", ""),
    (("Explicit Nudity", "Graphic Female Nudity"), 60.0, "explicit_nudity", ""),
    (("Explicit Nudity", "Adult Toys"), 60.0, "explicit_nudity", ""),
    (("Suggestive", "Partial Nudity"), 50.0, "default", ""),
    (("Violence", "Weapons"), 50.0, "default", ""),
]
SEED_CASES_7X = [
    (
        ("Swimwear or Underwear", "Female Swimwear or Underwear"),
        75.0,
        "female_swimwear_or_underwear",
        "Suggestive > Female Swimwear Or Underwear",
    ),
    (
        ("Explicit", "Explicit Nudity", "Exposed Female Nipple"),
        60.0,
        "explicit_nudity",
        "Explicit Nudity > Nudity",
    ),
    (
        ("Explicit", "Explicit Nudity", "Exposed Male Genitalia"),
        60.0,
        "explicit_nudity",
        "Explicit Nudity > Graphic Male Nudity",
    ),
    # No 6.x counterpart without ContentTypes: judged as its 6.x top-level category.
    (("Explicit", "Explicit Nudity"), 60.0, "explicit_nudity", "Explicit Nudity"),
    # In 6.x, Sexual Activity is a child of Explicit Nudity: the seed's 0.6 covers it
    # (before the 6.1 -> 7 translation it was judged at the 0.5 default).
    (
        ("Explicit", "Explicit Sexual Activity"),
        60.0,
        "explicit_nudity",
        "Explicit Nudity > Sexual Activity",
    ),
    (
        ("Violence", "Graphic Violence", "Weapon Violence"),
        50.0,
        "default",
        "Violence > Weapon Violence",
    ),
]
SEED_CASES = [(path, at, category, 6, shown) for path, at, category, shown in SEED_CASES_6X] + [
    (path, at, category, 7, shown) for path, at, category, shown in SEED_CASES_7X
]


@pytest.mark.parametrize(("path", "threshold", "category", "generation", "judged_as"), SEED_CASES)
def test_seed_policy_rejects_just_above_a_threshold(
    path: tuple[str, ...], threshold: float, category: str, generation: int, judged_as: str
) -> None:
    labels = response(path, threshold + 0.1, generation)

    verdict = SEED.judge(labels)

    assert verdict.status is Status.REJECTED
    assert verdict.reasons == (
        Reason(
            name=path[-1],
            parent=path[-2],
            confidence=threshold + 0.1,
            threshold=threshold / 100,
            category=category,
            judged_as=judged_as,
        ),
    )


@pytest.mark.parametrize(("path", "threshold", "category", "generation", "judged_as"), SEED_CASES)
@pytest.mark.parametrize("offset", [0.0, -0.1], ids=["exactly-at", "just-below"])
def test_seed_policy_approves_at_or_just_below_a_threshold(
    path: tuple[str, ...],
    threshold: float,
    category: str,
    generation: int,
    judged_as: str,
    offset: float,
) -> None:
    labels = response(path, threshold + offset, generation)

    verdict = SEED.judge(labels)

    assert verdict.status is Status.APPROVED
    assert verdict.reasons == ()


def test_response_with_no_labels_is_approved() -> None:
    verdict = SEED.judge(())

    assert verdict.status is Status.APPROVED


def test_ignoring_revealing_clothes_approves_suggestive_repeated_above_it() -> None:
    labels = response(("Suggestive", "Revealing Clothes"), 99.0, 6)

    verdict = SEED.judge(labels)

    assert verdict.status is Status.APPROVED


def test_parent_label_without_a_child_in_the_response_is_judged_itself() -> None:
    labels = response(("Suggestive",), 70.0, 6)

    verdict = SEED.judge(labels)

    assert verdict.status is Status.REJECTED
    assert [reason.name for reason in verdict.reasons] == ["Suggestive"]


def test_ignored_7x_leaf_approves_its_level_one_and_two_ancestors() -> None:
    policy = Policy(rules={"bare_back": None})
    labels = response(
        ("Non-Explicit Nudity of Intimate parts and Kissing", "Non-Explicit Nudity", "Bare Back"),
        95.0,
        7,
    )

    verdict = policy.judge(labels)

    assert verdict.status is Status.APPROVED


def test_rejection_names_only_the_child_not_the_parents_repeating_it() -> None:
    labels = response(("Explicit", "Explicit Nudity", "Exposed Female Nipple"), 90.0, 7)

    verdict = SEED.judge(labels)

    assert [reason.name for reason in verdict.reasons] == ["Exposed Female Nipple"]


def test_6x_gambling_response_is_judged_through_its_child_only() -> None:
    labels = response(("Gambling", "Gambling"), 90.0, 6)

    verdict = SEED.judge(labels)

    assert [(reason.name, reason.parent) for reason in verdict.reasons] == [
        ("Gambling", "Gambling")
    ]


def test_7x_gambling_response_is_judged_through_its_child_only() -> None:
    labels = response(("Gambling", "Gambling"), 90.0, 7)

    verdict = SEED.judge(labels)

    assert [(reason.name, reason.parent) for reason in verdict.reasons] == [
        ("Gambling", "Gambling")
    ]


def test_two_findings_in_one_response_are_each_judged() -> None:
    labels = (
        *response(("Suggestive", "Revealing Clothes"), 99.0, 6),
        *response(("Violence", "Weapons"), 80.0, 6),
    )

    verdict = SEED.judge(labels)

    assert verdict.status is Status.REJECTED
    assert [reason.name for reason in verdict.reasons] == ["Weapons"]


@pytest.mark.parametrize(
    ("rules", "label", "expected"),
    [
        # Higher child threshold over a lower parent one.
        (
            {"explicit_nudity": 0.6, "nudity": 0.9},
            Label("Nudity", "Explicit Nudity", 2, 80.0),
            Status.APPROVED,
        ),
        # Lower child threshold under a higher parent one.
        (
            {"suggestive": 0.9, "partial_nudity": 0.3},
            Label("Partial Nudity", "Suggestive", 2, 40.0),
            Status.REJECTED,
        ),
        # 7.x: level 3 over level 2 over level 1.
        (
            {"explicit": 0.2, "explicit_nudity": 0.4, "exposed_female_nipple": 0.95},
            Label("Exposed Female Nipple", "Explicit Nudity", 3, 90.0),
            Status.APPROVED,
        ),
        # 7.x: level 2 over level 1 for a level 3 label without its own.
        (
            {"explicit": 0.2, "explicit_nudity": 0.95},
            Label("Exposed Female Nipple", "Explicit Nudity", 3, 90.0),
            Status.APPROVED,
        ),
        # 7.x: level 1 covers a grandchild.
        (
            {"explicit": 0.95},
            Label("Exposed Female Nipple", "Explicit Nudity", 3, 90.0),
            Status.APPROVED,
        ),
    ],
)
def test_nearest_threshold_in_a_labels_lineage_wins(
    rules: dict[str, float | None], label: Label, expected: Status
) -> None:
    policy = Policy(default=0.5, rules=rules)

    verdict = policy.judge([label])

    assert verdict.status is expected


@pytest.mark.parametrize(
    "label",
    [
        Label("Partial Nudity", "Suggestive", 2, 99.0),
        Label("Revealing Clothes", "Suggestive", 2, 99.0),
        Label("Suggestive", "", 1, 99.0),
    ],
)
def test_ignored_parent_ignores_its_children(label: Label) -> None:
    policy = Policy(rules={"suggestive": None})

    verdict = policy.judge([label])

    assert verdict.status is Status.APPROVED


def test_ignored_7x_top_level_category_ignores_its_grandchildren() -> None:
    policy = Policy(rules={"explicit": None})
    labels = response(("Explicit", "Explicit Nudity", "Exposed Female Genitalia"), 99.0, 7)

    verdict = policy.judge(labels)

    assert verdict.status is Status.APPROVED


@pytest.mark.parametrize(
    ("confidence", "expected"), [(70.1, Status.REJECTED), (69.9, Status.APPROVED)]
)
def test_child_with_its_own_threshold_is_judged_under_an_ignored_parent(
    confidence: float, expected: Status
) -> None:
    policy = Policy(rules={"suggestive": None, "partial_nudity": 0.7})

    verdict = policy.judge([Label("Partial Nudity", "Suggestive", 2, confidence)])

    assert verdict.status is expected


def test_ignored_child_does_not_reject_through_its_parent() -> None:
    policy = Policy(rules={"suggestive": 0.1, "revealing_clothes": None})
    labels = response(("Suggestive", "Revealing Clothes"), 99.0, 6)

    verdict = policy.judge(labels)

    assert verdict.status is Status.APPROVED


@pytest.mark.parametrize(
    ("confidence", "expected"), [(70.1, Status.REJECTED), (70.0, Status.APPROVED)]
)
def test_default_threshold_applies_to_categories_not_named(
    confidence: float, expected: Status
) -> None:
    policy = Policy(default=0.7, rules={"explicit_nudity": 0.3})

    verdict = policy.judge([Label("Weapons", "Violence", 2, confidence)])

    assert verdict.status is expected


def test_label_unknown_to_the_taxonomy_is_judged_against_the_default() -> None:
    policy = Policy(default=0.5, rules={"explicit_nudity": 0.9})

    verdict = policy.judge([Label("Brand New Category", "", 1, 60.0)])

    assert verdict.status is Status.REJECTED
    assert verdict.reasons[0].category == "default"


def test_label_in_the_review_band_makes_the_decision_pending_with_its_reason() -> None:
    policy = Policy(default=0.5, rules=SEED_RULES, review_band=0.1)
    labels = response(("Suggestive", "Female Swimwear Or Underwear"), 70.0, 6)

    verdict = policy.judge(labels)

    assert verdict.status is Status.PENDING
    assert verdict.reasons == (
        Reason(
            name="Female Swimwear Or Underwear",
            parent="Suggestive",
            confidence=70.0,
            threshold=0.75,
            category="female_swimwear_or_underwear",
        ),
    )


@pytest.mark.parametrize(
    ("confidence", "expected"),
    [
        (50.1, Status.REJECTED),
        (50.0, Status.PENDING),
        (40.1, Status.PENDING),
        (40.0, Status.APPROVED),
        (39.9, Status.APPROVED),
    ],
)
def test_review_band_lies_just_below_the_threshold(confidence: float, expected: Status) -> None:
    policy = Policy(default=0.5, review_band=0.1)

    verdict = policy.judge([Label("Weapons", "Violence", 2, confidence)])

    assert verdict.status is expected


@pytest.mark.parametrize(("default", "band", "confidence"), [(0.7, 0.2, 50.0), (0.3, 0.1, 20.0)])
def test_score_exactly_at_the_bottom_of_the_review_band_is_approved(
    default: float, band: float, confidence: float
) -> None:
    policy = Policy(default=default, review_band=band)

    verdict = policy.judge([Label("Weapons", "Violence", 2, confidence)])

    assert verdict.status is Status.APPROVED


def test_rejection_outranks_review_and_lists_only_rejecting_labels() -> None:
    policy = Policy(default=0.5, review_band=0.2)
    labels = [
        Label("Weapons", "Violence", 2, 90.0),
        Label("Drinking", "Alcohol", 2, 45.0),
    ]

    verdict = policy.judge(labels)

    assert verdict.status is Status.REJECTED
    assert [reason.name for reason in verdict.reasons] == ["Weapons"]


def test_ignored_category_is_not_sent_to_review() -> None:
    policy = Policy(default=0.5, rules={"revealing_clothes": None}, review_band=0.5)

    verdict = policy.judge([Label("Revealing Clothes", "Suggestive", 2, 30.0)])

    assert verdict.status is Status.APPROVED


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Policy(), 50.0),
        (SEED, 50.0),
        (Policy(default=0.8, rules={"explicit_nudity": 0.6, "nudity": 0.3}), 30.0),
        (Policy(default=0.8, rules={"suggestive": None}), 80.0),
        (Policy(default=0.8, rules={"nudity": 0.3}, review_band=0.1), 20.0),
        (Policy(default=0.7, review_band=0.2), 50.0),
        (Policy(default=0.05, review_band=0.1), 0.0),
        (Policy(default=1.0), 100.0),
    ],
)
def test_min_confidence_is_the_lowest_threshold_less_the_band_in_percent(
    policy: Policy, expected: float
) -> None:
    result = policy.min_confidence

    assert result == expected


def test_equal_policies_share_a_fingerprint_whatever_the_rule_order() -> None:
    first = Policy(default=0.5, rules={"explicit_nudity": 0.6, "revealing_clothes": None})
    second = Policy(default=0.5, rules={"revealing_clothes": None, "explicit_nudity": 0.6})

    assert first.fingerprint == second.fingerprint
    assert first == second
    assert hash(first) == hash(second)


@pytest.mark.parametrize(
    "changed",
    [
        Policy(default=0.5, rules={**SEED_RULES, "explicit_nudity": 0.65}),
        Policy(default=0.5, rules={**SEED_RULES, "violence": None}),
        Policy(default=0.5, rules={**SEED_RULES, "revealing_clothes": 0.9}),
        Policy(default=0.5, rules={"explicit_nudity": 0.6, "female_swimwear_or_underwear": 0.75}),
        Policy(default=0.55, rules=SEED_RULES),
        Policy(default=0.5, rules=SEED_RULES, review_band=0.1),
    ],
)
def test_fingerprint_changes_when_the_policy_changes(changed: Policy) -> None:
    assert changed.fingerprint != SEED.fingerprint
    assert changed != SEED


def test_fingerprint_does_not_depend_on_int_or_float_thresholds() -> None:
    whole = Policy(default=1, rules={"explicit_nudity": 0})
    decimal = Policy(default=1.0, rules={"explicit_nudity": 0.0})

    assert whole.fingerprint == decimal.fingerprint


def test_parse_cloudinary_rules_reads_the_seed_string() -> None:
    text = "aws_rek:explicit_nudity:0.6:female_swimwear_or_underwear:0.75:revealing_clothes:ignore"

    rules = parse_cloudinary_rules(text)

    assert rules == SEED_RULES


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("aws_rek", {}),
        ("  AWS_REK  ", {}),
        ("aws_rek:suggestive:IGNORE", {"suggestive": None}),
        ("aws_rek:suggestive:0:violence:1", {"suggestive": 0.0, "violence": 1.0}),
        ("aws_rek: suggestive : 0.25 ", {"suggestive": 0.25}),
    ],
)
def test_parse_cloudinary_rules_accepts_valid_strings(
    text: str, expected: dict[str, float | None]
) -> None:
    rules = parse_cloudinary_rules(text)

    assert rules == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("explicit_nudity:0.6", "starting with 'aws_rek'"),
        ("google:explicit_nudity:0.6", "starting with 'aws_rek'"),
        ("", "starting with 'aws_rek'"),
        ("aws_rek:explicit_nudity", "category 'explicit_nudity' has no level"),
        ("aws_rek:explicit_nudity:0.6:suggestive", "category 'suggestive' has no level"),
        ("aws_rek:explicit_nudity:high", "'high' of category 'explicit_nudity' is neither"),
        ("aws_rek:explicit_nudity:1.5", "not between 0 and 1"),
        ("aws_rek:explicit_nudity:-0.1", "not between 0 and 1"),
        ("aws_rek:explicit_nudity:nan", "not between 0 and 1"),
        ("aws_rek::0.6", "empty category name"),
    ],
)
def test_parse_cloudinary_rules_rejects_malformed_strings_with_a_clear_message(
    text: str, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        parse_cloudinary_rules(text)

    assert message in str(info.value)


def test_each_frame_is_judged_on_its_own_labels_and_the_worst_decides() -> None:
    # Frame 0: Suggestive with no child; frame 1: Suggestive > Revealing Clothes (ignored).
    # Merged, frame 1's child would hide frame 0's bare Suggestive.
    policy = Policy(rules={"revealing_clothes": None})
    labels = (
        Label("Suggestive", "", 1, 90.0, frame=0),
        Label("Suggestive", "", 1, 60.0, frame=1),
        Label("Revealing Clothes", "Suggestive", 2, 60.0, frame=1),
    )

    verdict = policy.judge(labels)

    assert verdict.status is Status.REJECTED
    assert verdict.frame == 0
    assert [(reason.name, reason.frame) for reason in verdict.reasons] == [("Suggestive", 0)]


def test_the_frame_that_rejects_is_recorded_when_it_is_not_the_first() -> None:
    labels = (
        *response(("Suggestive", "Revealing Clothes"), 99.0, 6),
        Label("Weapons", "Violence", 2, 80.0, frame=2),
        Label("Violence", "", 1, 80.0, frame=2),
    )

    verdict = SEED.judge(labels)

    assert verdict.status is Status.REJECTED
    assert verdict.frame == 2
    assert [(reason.name, reason.frame) for reason in verdict.reasons] == [("Weapons", 2)]


def test_content_type_rule_sets_the_threshold_of_every_label_in_such_a_picture() -> None:
    drawn = (ContentType("Illustrated", 95.0),)
    labels = response(("Explicit", "Explicit Nudity", "Exposed Female Nipple"), 80.0, 7)
    ignoring = Policy(rules={"explicit_nudity": 0.6, "illustrated": None})
    lenient = Policy(rules={"explicit_nudity": 0.6, "illustrated": 0.9})

    assert ignoring.judge(labels, drawn).status is Status.APPROVED
    assert ignoring.judge(labels).status is Status.REJECTED
    assert lenient.judge(labels, drawn).status is Status.APPROVED
    assert (
        lenient.judge(response(("Explicit", "Explicit Nudity"), 95.0, 7), drawn).reasons[0].category
        == "illustrated"
    )


def test_6x_illustrated_explicit_nudity_rule_applies_to_drawn_7x_answers_only() -> None:
    policy = Policy(rules={"illustrated_explicit_nudity": None})
    labels = response(("Explicit", "Explicit Sexual Activity"), 90.0, 7)

    assert policy.judge(labels, (ContentType("Animated", 80.0),)).status is Status.APPROVED
    assert policy.judge(labels).status is Status.REJECTED


@pytest.mark.parametrize(
    ("text", "rules", "manual"),
    [
        ("aws_rek|manual", {}, True),
        ("aws_rek:explicit_nudity:0.6|manual", {"explicit_nudity": 0.6}, True),
        (" aws_rek:revealing_clothes:ignore | manual ", {"revealing_clothes": None}, True),
        ("aws_rek:explicit_nudity:0.6", {"explicit_nudity": 0.6}, False),
    ],
)
def test_parse_cloudinary_chain_reads_piped_steps(
    text: str, rules: dict[str, float | None], manual: bool
) -> None:
    chain = parse_cloudinary_chain(text)

    assert (chain.rules, chain.manual) == (rules, manual)


@pytest.mark.parametrize(
    ("text", "duplicate"),
    [
        # Valid Cloudinary chains (cloudinary_npm docs/moderate-upload.md: 'manual' alone,
        # and 'duplicate:<threshold>' piped before 'manual').
        ("manual", None),
        (" Manual ", None),
        ("duplicate:0.9|manual", 0.9),
    ],
)
def test_parse_cloudinary_chain_without_aws_rek_leaves_every_picture_to_a_human(
    text: str, duplicate: float | None
) -> None:
    chain = parse_cloudinary_chain(text)

    assert (chain.rules, chain.manual, chain.model, chain.duplicate) == ({}, True, False, duplicate)


def test_policy_without_a_model_step_makes_every_picture_pending_for_a_human() -> None:
    policy = Policy(model=False)

    assert policy.manual_review
    assert policy.judge(()).status is Status.PENDING
    assert policy.fingerprint != Policy(manual_review=True).fingerprint


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("aws_rek|duplicate:0.9", 0.9),
        ("aws_rek:explicit_nudity:0.6 | duplicate:0.95 | manual", 0.95),
        ("aws_rek|Duplicate:1", 1.0),
        ("aws_rek|manual", None),
    ],
)
def test_parse_cloudinary_chain_reads_the_duplicate_score(text: str, score: float | None) -> None:
    assert parse_cloudinary_chain(text).duplicate == score


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Cloudinary approves what a lone duplicate step passes: every picture unjudged.
        ("duplicate:0.9", "expected an 'aws_rek' or a 'manual' step"),
        ("aws_rek|duplicate", "one score between 0 and 1"),
        ("aws_rek|duplicate:0.9:0.8", "one score between 0 and 1"),
        ("aws_rek|duplicate:1.2", "not between 0 and 1"),
        ("aws_rek|duplicate:0.9|duplicate:0.95", "one 'duplicate' step"),
        ("manual|aws_rek", "must end the chain"),
        ("aws_rek|manual:fast", "takes no options"),
        ("aws_rek|aws_rek:suggestive:0.7", "one 'aws_rek' step"),
        ("aws_rek:explicit_nudity:high|manual", "'high' of category 'explicit_nudity'"),
        ("google|manual", "starting with 'aws_rek'"),
    ],
)
def test_parse_cloudinary_chain_refuses_what_it_cannot_do_with_a_clear_message(
    text: str, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        parse_cloudinary_chain(text)

    assert message in str(info.value)


def test_manual_step_makes_what_the_model_passes_pending_not_what_it_rejects() -> None:
    policy = Policy(rules={"explicit_nudity": 0.6}, manual_review=True)

    passed = policy.judge(response(("Explicit Nudity", "Nudity"), 55.0, 6))
    clean = policy.judge(())
    rejected = policy.judge(response(("Explicit Nudity", "Nudity"), 65.0, 6))

    assert (passed.status, clean.status) == (Status.PENDING, Status.PENDING)
    assert [reason.category for reason in clean.reasons] == ["manual"]
    assert rejected.status is Status.REJECTED


def test_manual_step_changes_the_fingerprint() -> None:
    assert Policy(manual_review=True).fingerprint != Policy().fingerprint
    assert Policy().fingerprint == Policy(rules={}).fingerprint


def test_fingerprint_differs_from_before_translation_so_stored_decisions_are_judged_again() -> None:
    # The fingerprint stored with decisions judged before answers were translated.
    before = json.dumps({"default": 0.5, "rules": SEED_RULES, "band": 0.0}, sort_keys=True).encode()

    assert SEED.fingerprint != hashlib.sha256(before).hexdigest()[:16]
