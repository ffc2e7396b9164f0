"""Labels plus thresholds give a decision.

A label is judged against the threshold of the nearest category in its lineage (itself,
its parent, its grandparent) that has one, or the default. Ignoring a category is a
threshold nobody can pass, so it cascades the same way. A label that has a child in the
same response is judged through its children only, because Rekognition repeats the
children's confidence on the parent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from thumbor_rekognition import taxonomy
from thumbor_rekognition.decision import Label, Reason, Status


@dataclass(frozen=True)
class Verdict:
    status: Status
    reasons: tuple[Reason, ...]


class Policy:
    """Per-category thresholds (0..1) with a default, ignored categories and a review band."""

    def __init__(
        self,
        default: float = 0.5,
        rules: Mapping[str, float | None] | None = None,
        review_band: float = 0.0,
    ) -> None:
        self.default = float(default)
        self.rules: dict[str, float | None] = {}
        for name, value in (rules or {}).items():
            category = taxonomy.canonical(name)
            if category is None:
                raise ValueError(f"unknown moderation category {name!r}")
            self.rules[category] = None if value is None else float(value)
        self.review_band = float(review_band)
        canonical = json.dumps(
            {"default": self.default, "rules": self.rules, "band": self.review_band},
            sort_keys=True,
        )
        self.fingerprint = hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Policy(default={self.default}, rules={self.rules}, review_band={self.review_band})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    @property
    def min_confidence(self) -> float:
        """The lowest confidence (0..100) any decision needs to see, for the backend request."""
        thresholds = [self.default, *(value for value in self.rules.values() if value is not None)]
        lowest = min(thresholds) - self.review_band
        return round(max(0.0, min(1.0, lowest)) * 100, 3)

    def threshold(self, lineage: Iterable[str]) -> tuple[float | None, str]:
        """The threshold (None when ignored) of a label's lineage, and the category setting it."""
        for category in lineage:
            if category in self.rules:
                return self.rules[category], category
        return self.default, ""

    def judge(self, labels: Iterable[Label]) -> Verdict:
        """Reject when a judged label is above its threshold; pending when one is in the band."""
        rejecting: list[Reason] = []
        reviewing: list[Reason] = []
        for label in judged(labels):
            lineage = taxonomy.lineage(label.name, label.parent, label.level)
            threshold, category = self.threshold(lineage)
            if threshold is None:
                continue
            confidence = label.confidence / 100.0
            reason = Reason(
                name=label.name,
                parent=label.parent,
                confidence=label.confidence,
                threshold=threshold,
                category=category or "default",
            )
            if confidence > threshold:
                rejecting.append(reason)
            elif self.review_band and confidence > round(threshold - self.review_band, 9):
                reviewing.append(reason)
        if rejecting:
            return Verdict(Status.REJECTED, tuple(rejecting))
        if reviewing:
            return Verdict(Status.PENDING, tuple(reviewing))
        return Verdict(Status.APPROVED, ())


def judged(labels: Iterable[Label]) -> list[Label]:
    """The labels that have no child in the same response."""
    items = list(labels)
    parents = {
        (taxonomy.canonical(label.parent) or taxonomy.slug(label.parent), label.level - 1)
        for label in items
        if label.parent
    }
    return [
        label
        for label in items
        if (taxonomy.canonical(label.name) or taxonomy.slug(label.name), label.level) not in parents
    ]


def parse_cloudinary_rules(text: str) -> dict[str, float | None]:
    """Parse 'aws_rek[:category:level]...' where level is 0..1 or 'ignore'."""
    parts = [part.strip() for part in text.strip().split(":")]
    if parts[0].lower() != "aws_rek":
        raise ValueError(
            f"expected a string starting with 'aws_rek', e.g. "
            f"'aws_rek:explicit_nudity:0.6:revealing_clothes:ignore', got {text!r}"
        )
    pairs = parts[1:]
    if len(pairs) % 2:
        raise ValueError(f"category '{pairs[-1]}' has no level after it")
    rules: dict[str, float | None] = {}
    for category, level in zip(pairs[::2], pairs[1::2], strict=True):
        if not category:
            raise ValueError(f"empty category name in {text!r}")
        value: float | None = None
        if level.lower() != "ignore":
            try:
                value = float(level)
            except ValueError:
                raise ValueError(
                    f"level '{level}' of category '{category}' is neither a number nor 'ignore'"
                ) from None
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"level {value} of category '{category}' is not between 0 and 1")
        if category in rules and rules[category] != value:
            raise ValueError(f"category '{category}' is given two different levels")
        rules[category] = value
    return rules
