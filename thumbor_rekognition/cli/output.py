"""How commands print: JSON, labels, reasons, models and times."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from thumbor_rekognition import confidence
from thumbor_rekognition.decision import (
    UNJUDGED,
    ContentType,
    Decision,
    Label,
    Reason,
    Status,
)
from thumbor_rekognition.generations import Judged


def print_json(data: Any) -> None:
    print(json.dumps(data, sort_keys=True))


def label_name(name: str, parent: str) -> str:
    return f"{parent} > {name}" if parent else name


def print_labels(labels: Iterable[Label]) -> None:
    items = list(labels)
    print("labels:" if items else "labels: none")
    for label in items:
        print(
            f"  {label_name(label.name, label.parent)}  {confidence.shown(label.confidence)}"
            f"{_frame(label.frame)}"
        )


def _frame(frame: int) -> str:
    # Frames count from 1 for people; a still picture has only frame 0.
    return f"  (frame {frame + 1})" if frame else ""


def print_content_types(content_types: Iterable[ContentType]) -> None:
    items = list(content_types)
    if items:
        print("content types:")
    for kind in items:
        print(f"  {kind.name}  {confidence.shown(kind.confidence)}{_frame(kind.frame)}")


def print_judged(items: Iterable[Judged], generation: str) -> None:
    judged = list(items)
    if not judged:
        return
    print(f"labels as judged (thresholds in model {generation}.x names):")
    for item in judged:
        label = item.label
        line = f"  {label_name(label.name, label.parent)}  {confidence.shown(label.confidence)}"
        if item.translated:
            line += f"  (reported as {label_name(item.reported.name, item.reported.parent)})"
        print(line + _frame(label.frame))


def _reason(status: Status, reason: Reason) -> str:
    relation = "above" if status is Status.REJECTED else "near"
    judged = f" as {reason.judged_as}" if reason.judged_as else ""
    if reason.category == UNJUDGED:
        return (
            f"{reason.confidence:g} distinct scenes not judged "
            f"(MODERATION_MAX_FRAMES={reason.threshold:g}) ({reason.category})"
        )
    return (
        f"{label_name(reason.name, reason.parent)}{judged} {confidence.shown(reason.confidence)} "
        f"{relation} {reason.threshold:g} ({reason.category}){_frame(reason.frame)}"
    )


def print_reasons(status: Status, reasons: Iterable[Reason]) -> None:
    items = list(reasons)
    if items:
        print("reasons:")
    for reason in items:
        print(f"  {_reason(status, reason)}")


def model_name(backend: str, model_version: str, project_version: str) -> str:
    """A backend and its model version, with the adapter that answered, if any."""
    adapter = f" (adapter {project_version})" if project_version else ""
    return f"{backend} {model_version}".strip() + adapter


def why(decision: Decision) -> str:
    if decision.error:
        return f"error: {decision.error}"
    if decision.duplicate_of:
        return f"duplicate of {decision.duplicate_of} (similarity {decision.similarity:.3f})"
    return "; ".join(_reason(decision.status, reason) for reason in decision.reasons)


def when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")
