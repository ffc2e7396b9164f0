"""The offline backend's mapping of detector outputs onto the taxonomy.

None of this needs the ``nudenet`` package (the 'local' extra), so it runs without it.
"""

from __future__ import annotations

import pytest
from thumbor.config import Config

from thumbor_rekognition.backends import startup_warnings
from thumbor_rekognition.backends.nudenet import (
    CLASSES,
    Backend,
    Detection,
    _best_per_class,
    labels_from_detections,
)
from thumbor_rekognition.config import Settings
from thumbor_rekognition.decision import Status
from thumbor_rekognition.policy import Policy

DEFAULT = Policy()


def judge(*detections: tuple[str, float]) -> Status:
    labels = labels_from_detections(Detection(name, score) for name, score in detections)
    return DEFAULT.judge(labels).status


@pytest.mark.parametrize(
    "name",
    [
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    ],
)
def test_exposed_classes_reject_under_default_thresholds(name: str) -> None:
    assert judge((name, 0.62)) is Status.REJECTED
    assert judge((name, 0.45)) is Status.APPROVED


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("FEMALE_BREAST_COVERED", "Female Swimwear Or Underwear"),
        ("FEMALE_GENITALIA_COVERED", "Female Swimwear Or Underwear"),
        ("BUTTOCKS_COVERED", "Revealing Clothes"),
        ("ANUS_COVERED", "Revealing Clothes"),
        ("MALE_BREAST_EXPOSED", "Barechested Male"),
    ],
)
def test_covered_classes_are_judged_as_suggestive(name: str, label: str) -> None:
    labels = labels_from_detections([Detection(name, 0.8)])

    assert [(item.parent, item.name) for item in labels] == [
        ("", "Suggestive"),
        ("Suggestive", label),
    ]
    assert Policy(rules={"suggestive": 0.9}).judge(labels).status is Status.APPROVED
    assert Policy(rules={"suggestive": None}).judge(labels).status is Status.APPROVED
    assert DEFAULT.judge(labels).status is Status.REJECTED


@pytest.mark.parametrize(
    "name",
    [
        "FACE_FEMALE",
        "FACE_MALE",
        "FEET_EXPOSED",
        "FEET_COVERED",
        "ARMPITS_EXPOSED",
        "BELLY_EXPOSED",
    ],
)
def test_faces_feet_and_body_parts_never_reject(name: str) -> None:
    assert labels_from_detections([Detection(name, 0.99)]) == ()
    assert judge((name, 0.99)) is Status.APPROVED


def test_highest_score_per_label_is_kept_and_repeated_on_the_parent() -> None:
    labels = labels_from_detections(
        [
            Detection("FEMALE_BREAST_EXPOSED", 0.55),
            Detection("BUTTOCKS_EXPOSED", 0.81),
            Detection("FACE_FEMALE", 0.9),
        ]
    )

    assert {(item.parent, item.name): item.confidence for item in labels} == {
        ("", "Explicit Nudity"): 81.0,
        ("Explicit Nudity", "Nudity"): 81.0,
    }


def test_seed_rules_drive_the_offline_labels() -> None:
    policy = Policy(
        rules={
            "female_swimwear_or_underwear": 0.75,
            "explicit_nudity": 0.6,
            "revealing_clothes": None,
        }
    )

    def status(name: str, score: float) -> Status:
        return policy.judge(labels_from_detections([Detection(name, score)])).status

    assert status("FEMALE_BREAST_COVERED", 0.76) is Status.REJECTED
    assert status("FEMALE_BREAST_COVERED", 0.74) is Status.APPROVED
    assert status("FEMALE_BREAST_EXPOSED", 0.61) is Status.REJECTED
    assert status("FEMALE_BREAST_EXPOSED", 0.59) is Status.APPROVED
    assert status("BUTTOCKS_COVERED", 0.99) is Status.APPROVED


def test_backend_names_what_it_cannot_see() -> None:
    unseen = Backend(Settings.from_config(Config())).unseen_categories()

    assert {"violence", "drugs", "hate_symbols", "gambling", "alcohol"} <= unseen
    assert not {"explicit_nudity", "nudity", "suggestive", "revealing_clothes"} & unseen


def test_best_score_per_class_keeps_each_class_strongest_box_from_025() -> None:
    numpy = pytest.importorskip("numpy")
    candidates = numpy.zeros((1, 4 + len(CLASSES), 5), numpy.float32)
    face, breast = CLASSES.index("FACE_FEMALE"), CLASSES.index("FEMALE_BREAST_EXPOSED")
    candidates[0, 4 + face, 0] = 0.9
    candidates[0, 4 + breast, 1] = 0.4
    candidates[0, 4 + breast, 2] = 0.7
    candidates[0, 4 + breast, 3] = 0.6
    candidates[0, 4 + face, 3] = 0.3
    candidates[0, 4 + CLASSES.index("ANUS_EXPOSED"), 4] = 0.24

    found = {item.name: item.score for item in _best_per_class(candidates)}

    assert found == pytest.approx({"FACE_FEMALE": 0.9, "FEMALE_BREAST_EXPOSED": 0.7})


def test_7x_policy_on_the_offline_backend_is_warned_of_7x_names_it_never_reaches() -> None:
    backend = Backend(Settings.from_config(Config()))
    policy = Policy(rules={"bare_back": None, "exposed_male_genitalia": 0.5, "weapons": 0.9})

    messages = startup_warnings(backend, policy)

    assert (
        messages[0]
        == "backend nudenet never reports these configured categories: bare_back, weapons"
    )
    assert "answers in model 6.x names" in messages[1]
