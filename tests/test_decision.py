"""Decisions read back from a store: those written before a field existed still load."""

from __future__ import annotations

import json

from thumbor_rekognition.decision import ContentType, Decision, Label, Reason, Source, Status
from thumbor_rekognition.policy import Policy

# A decision as stored before frames, ContentTypes and translated reasons were recorded.
BEFORE_FRAMES = {
    "key": "a.png",
    "url": "a.png",
    "sha256": "a" * 64,
    "status": "rejected",
    "source": "auto",
    "labels": [
        {"name": "Explicit", "parent": "", "level": 1, "confidence": 70.0},
        {"name": "Explicit Sexual Activity", "parent": "Explicit", "level": 2, "confidence": 70.0},
    ],
    "reasons": [
        {
            "name": "Explicit Sexual Activity",
            "parent": "Explicit",
            "confidence": 70.0,
            "threshold": 0.5,
            "category": "default",
        }
    ],
    "backend": "rekognition",
    "model_version": "7.0",
    "policy": "0123456789abcdef",
    "min_confidence": 50.0,
    "width": 160,
    "height": 100,
    "error": "",
    "created_at": 1.0,
    "updated_at": 2.0,
}


def test_decision_stored_before_frames_and_content_types_loads_with_defaults() -> None:
    decision = Decision.from_json(json.dumps(BEFORE_FRAMES))

    assert decision.content_types == ()
    assert decision.labels[1] == Label("Explicit Sexual Activity", "Explicit", 2, 70.0, frame=0)
    assert decision.reasons == (
        Reason("Explicit Sexual Activity", "Explicit", 70.0, 0.5, "default", 0, ""),
    )


def test_decision_stored_before_frames_is_judged_again_as_one_frame() -> None:
    decision = Decision.from_json(json.dumps(BEFORE_FRAMES))

    verdict = Policy(rules={"explicit_nudity": 0.75}).judge(decision.labels, decision.content_types)

    assert verdict.status is Status.APPROVED


def test_new_fields_survive_the_round_trip() -> None:
    decision = Decision.from_json(json.dumps(BEFORE_FRAMES)).replace(
        labels=(Label("Suggestive", "", 1, 90.0, frame=3),),
        content_types=(ContentType("Animated", 88.0, frame=3),),
        reasons=(Reason("Suggestive", "", 90.0, 0.5, "default", 3, "Suggestive"),),
    )

    assert Decision.from_json(decision.to_json()) == decision


def test_decision_stored_before_duplicates_and_adapters_loads_without_them() -> None:
    decision = Decision.from_json(json.dumps(BEFORE_FRAMES))

    assert (decision.duplicate_of, decision.similarity, decision.project_version) == ("", 0.0, "")


def test_a_duplicate_and_an_adapter_survive_the_round_trip() -> None:
    adapter = "arn:aws:rekognition:us-east-1:111122223333:project/a/version/a.1/1"
    judged = Decision.from_json(json.dumps(BEFORE_FRAMES)).replace(project_version=adapter)
    duplicate = Decision.from_json(json.dumps(BEFORE_FRAMES)).replace(
        source=Source.DUPLICATE, duplicate_of="photos/original.jpg", similarity=0.9688
    )

    assert Decision.from_json(judged.to_json()) == judged
    assert Decision.from_json(duplicate.to_json()) == duplicate
    assert json.loads(duplicate.to_json())["source"] == "duplicate"
