"""Confidences as people read them: a share of 1 (0.97), the scale thumbor.conf's
MODERATION_MIN_CONFIDENCE and thresholds are written in.

Backends answer, and the decision store keeps, percentages (Rekognition's 0..100, its
MinConfidence). Everything a person or a program reads converts here: the admin API and
review page, the command line's text and JSON, webhooks and the notes of the history.
"""

from __future__ import annotations

from typing import Any

from thumbor_rekognition.decision import UNJUDGED, ContentType, Decision, Label, Reason

# Rekognition reports confidences to a few decimal places of a percentage.
PLACES = 6


def share(percent: float) -> float:
    """A confidence kept as a percentage, as a share of 1: 97.5 -> 0.975."""
    return round(percent / 100, PLACES)


def shown(percent: float) -> str:
    """A confidence kept as a percentage, for text: 97.14 -> '0.971', 50 -> '0.5'."""
    return f"{percent / 100:.3g}"


def label_view(label: Label) -> dict[str, Any]:
    """A label with its confidence as a share of 1."""
    return {**label.to_dict(), "confidence": share(label.confidence)}


def content_type_view(kind: ContentType) -> dict[str, Any]:
    """A content type with its confidence as a share of 1."""
    return {**kind.to_dict(), "confidence": share(kind.confidence)}


def reason_view(reason: Reason) -> dict[str, Any]:
    """A reason with its confidence, like its threshold, as a share of 1."""
    if reason.category == UNJUDGED:
        # Counts of scenes, not confidences.
        return reason.to_dict()
    return {**reason.to_dict(), "confidence": share(reason.confidence)}


def decision_view(decision: Decision) -> dict[str, Any]:
    """A decision's fields with every confidence as a share of 1."""
    view = decision.to_dict()
    view["labels"] = [label_view(label) for label in decision.labels]
    view["content_types"] = [content_type_view(kind) for kind in decision.content_types]
    view["reasons"] = [reason_view(reason) for reason in decision.reasons]
    view["min_confidence"] = share(decision.min_confidence)
    return view
