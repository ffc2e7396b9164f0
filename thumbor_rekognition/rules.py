"""Which decision stands: every rule of it, as pure functions of decisions (no I/O).

Two questions have an answer here and nowhere else. ``settle``: a decision is proposed
for a key that already has one; which is kept? Each store asks it inside its own
compare-and-set, so no writer overwrites a decision it did not read. ``standing``:
several keys show the same bytes; which of their decisions is the picture's? The
moderator asks it before paying the backend for bytes it has seen under another URL.

A manual decision made before any request fetched its picture is *blind*: it names a
URL, not bytes. The first fetch binds it to the bytes that fetch returns. A blind
rejection then rejects those bytes wherever they appear; a blind approval never
overrides a rejection of those bytes (by the model, a human, or as a duplicate): the
picture waits for a human instead. The table in docs/decisions.md states these rules
row by row, and tests/test_rules.py tests each row.
"""

from __future__ import annotations

from collections.abc import Iterable

from thumbor_rekognition.decision import Decision, Event, Reason, Source, Status

# The reason of a blind approval held back because its bytes are rejected elsewhere.
CONTESTED = "approved_unseen"


def contested_reason(rejection: Decision) -> Reason:
    """Why a blind approval waits for a human: these bytes are rejected (or pending) too."""
    return Reason(
        name=f"Approved before it was seen; {rejection.status.value} as {rejection.key}",
        parent="",
        confidence=0.0,
        threshold=0.0,
        category=CONTESTED,
    )


def is_contested(decision: Decision) -> bool:
    """Whether a decision is a blind approval held back by a rejection of its bytes."""
    return decision.status is Status.PENDING and any(
        reason.category == CONTESTED for reason in decision.reasons
    )


def unbound(decision: Decision) -> bool:
    """Whether a decision still names only a URL: made by hand before any fetch."""
    return decision.source is Source.MANUAL and not decision.sha256


def rejects_by_itself(decision: Decision) -> bool:
    """Whether a decision rejects its picture for what it shows (the model or a human),
    not for resembling another one."""
    return decision.status is Status.REJECTED and decision.source in (Source.AUTO, Source.MANUAL)


def _counts_against(other: Decision, sha256: str) -> bool:
    """Whether other is a judgement of these bytes that a blind approval must not undo."""
    return (
        bool(sha256)
        and other.sha256 == sha256
        and not other.needs_retry
        and other.status is not Status.APPROVED
    )


def _unless_contested(blind: Decision, other: Decision) -> Decision:
    """A blind approval, or pending for a human when other rejects the same bytes."""
    if blind.status is Status.APPROVED and blind.blind and _counts_against(other, blind.sha256):
        return blind.replace(status=Status.PENDING, reasons=(contested_reason(other),), error="")
    return blind


def bind(blind: Decision, judged: Decision) -> Decision:
    """A blind manual decision, bound to the bytes a judgement of its URL's first fetch saw."""
    bound = blind.replace(
        sha256=judged.sha256,
        width=blind.width or judged.width,
        height=blind.height or judged.height,
        updated_at=max(blind.updated_at, judged.updated_at),
    )
    return _unless_contested(bound, judged)


def settle(current: Decision | None, proposed: Decision) -> Decision:
    """The decision a store keeps at proposed.key when proposed arrives and current is there.

    - Nothing there: the proposal.
    - A human's proposal: it stands (their latest word on the URL). Made blind while the
      URL's bytes are known, it is bound to them, and as an approval it does not undo a
      rejection of them.
    - An automatic proposal (model, duplicate, bytes seen elsewhere) over a human's
      decision: the human's stands, whenever each was made. A blind one is bound to the
      proposal's bytes; a blind approval facing a rejection of them waits for a human. A
      proposal about other bytes (the URL now shows another picture) stands.
    - An automatic proposal over an automatic decision: the proposal (judged again).
    """
    if current is None:
        return proposed
    if proposed.source is Source.MANUAL:
        if not proposed.sha256 and current.sha256:
            return bind(proposed.replace(blind=True), current)
        return proposed
    if current.source is not Source.MANUAL:
        return proposed
    if not current.sha256:
        if not proposed.sha256 or (current.status is Status.APPROVED and proposed.needs_retry):
            # A blind approval is bound only by a judgement of its bytes.
            return current
        return bind(current, proposed)
    if current.sha256 != proposed.sha256:
        return proposed
    return _unless_contested(current, proposed)


def noted(stands: Decision, proposed: Decision, event: Event) -> Event:
    """The history entry of what settle kept: the proposal's own entry, or that entry
    saying why something else was kept."""
    if stands == proposed:
        return event
    if is_contested(stands):
        why = f"{stands.reasons[0].name}: waiting for a human"
    elif stands.blind and stands.sha256 == proposed.sha256:
        why = f"decided by hand before its first fetch: bound to sha256 {stands.sha256[:12]}"
    else:
        why = f"the {stands.source.value} decision stands"
    return Event(stands.status, stands.source, event.actor, f"{event.note}; {why}", event.at)


def _rank(decision: Decision) -> tuple[int, float]:
    if decision.source is Source.MANUAL and not decision.blind:
        return 3, decision.updated_at
    if decision.status is Status.REJECTED:
        return 2, decision.updated_at
    if decision.status is Status.PENDING:
        return 1, decision.updated_at
    return 0, decision.updated_at


def standing(decisions: Iterable[Decision]) -> Decision | None:
    """The decision that stands for a picture's bytes, among those of every URL showing them.

    A human's decision made with the bytes known, the latest of them, over anything else;
    then a rejection (a blind rejection, the model's or a duplicate's), then a picture
    waiting for a human, then an approval. Failed judgements count for nothing.
    """
    judged = [decision for decision in decisions if not decision.needs_retry]
    return max(judged, key=_rank, default=None)
