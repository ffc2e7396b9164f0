"""What a decision's record says: the event noted for a judgement, and the pending
verdict of an animation with scenes left unjudged."""

from __future__ import annotations

from thumbor_rekognition import confidence
from thumbor_rekognition.decision import UNJUDGED, Decision, Event, Reason, Source, Status
from thumbor_rekognition.policy import MANUAL

SYSTEM = "thumbor-moderation"


def unjudged_reason(count: int, limit: int) -> Reason:
    """Why an animation waits for a human: count distinct scenes past the frame limit."""
    return Reason(
        name="Unjudged scenes",
        parent="",
        confidence=float(count),
        threshold=float(limit),
        category=UNJUDGED,
    )


def waiting_for_scenes(
    status: Status, reasons: tuple[Reason, ...], unjudged: tuple[Reason, ...]
) -> tuple[Status, tuple[Reason, ...]]:
    """The verdict, or pending for a human when the model passed a picture (approved, or
    pending only for 'aws_rek|manual') while scenes of it went unjudged."""
    manual = tuple(reason for reason in reasons if reason.category == MANUAL)
    passed = status is Status.APPROVED or (status is Status.PENDING and manual == reasons)
    if unjudged and passed:
        return Status.PENDING, (*unjudged, *manual)
    return status, reasons


def event_for(decision: Decision) -> Event:
    if decision.status is Status.PENDING and decision.error:
        note = f"no decision: {decision.error}"
    elif decision.source is Source.DUPLICATE:
        note = (
            f"resembles {decision.duplicate_of} (similarity {decision.similarity:.3f}), "
            "rejected without a backend call"
        )
    elif decision.source is Source.BANK and decision.reasons:
        reason = decision.reasons[0]
        note = (
            f"PDQ hash in bank {reason.name}: {reason.parent} "
            f"(similarity {reason.confidence / 100:.3f}), {decision.status.value} "
            "without a backend call"
        )
    elif decision.reasons and decision.reasons[0].category == UNJUDGED:
        unjudged = decision.reasons[0]
        note = (
            f"{unjudged.confidence:g} distinct scenes not judged "
            f"(MODERATION_MAX_FRAMES={unjudged.threshold:g}): waiting for a human"
        )
    elif decision.reasons:
        reasons = ", ".join(
            f"{reason.name} {confidence.shown(reason.confidence)} > {reason.threshold:g}"
            if decision.status is Status.REJECTED
            else f"{reason.name} {confidence.shown(reason.confidence)} near {reason.threshold:g}"
            for reason in decision.reasons
        )
        note = f"{model_named(decision)}: {reasons}"
    else:
        note = f"{model_named(decision)}: nothing above thresholds"
    return Event(decision.status, decision.source, SYSTEM, note)


def model_named(decision: Decision) -> str:
    """The backend and model version that judged, with the adapter the answer named."""
    adapter = f" (adapter {decision.project_version})" if decision.project_version else ""
    return f"{decision.backend} {decision.model_version}{adapter}"
