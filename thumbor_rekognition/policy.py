"""Labels plus thresholds give a decision.

Each frame of a picture is judged on its own labels, and the worst frame decides. A
policy is written in one model generation; an answer in the other is translated first
(see ``generations``). A label is judged against the threshold of the nearest category
in its lineage (itself, its parent, its grandparent) that has one, or the default; a
rule on a frame's ContentType (Animated, Illustrated) comes before all of them, for a
ContentType reported at or above its own threshold (else the default): an Illustrated at
30% does not make a frame a drawing.
Ignoring a category is a threshold nobody can pass, so it cascades the same way. A label
that has a child in the same response is judged through its children only, because
Rekognition repeats the children's confidence on the parent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from thumbor_rekognition import generations, taxonomy
from thumbor_rekognition.decision import ContentType, Label, Reason, Status

_SEVERITY = {Status.APPROVED: 0, Status.PENDING: 1, Status.REJECTED: 2}
# Part of every fingerprint; raised when the same thresholds judge the same labels
# differently, so that stored automatic decisions are judged again (without a backend
# call). 2: answers translated to the policy's model generation, frames judged apart.
# 3: 7.x labels without a row of their own judged as their nearest ancestor's row (AWS's
# v7-to-v6 helper), 7.x Corpses also as 6.x Hanging, ContentTypes counted by confidence.
JUDGING = 3
# Why a picture the model passed awaits a human under 'aws_rek|manual'.
MANUAL = "manual"
MANUAL_REASON = Reason(
    name="awaiting manual review", parent="", confidence=0.0, threshold=0.0, category=MANUAL
)


@dataclass(frozen=True)
class Verdict:
    status: Status
    reasons: tuple[Reason, ...]
    # The frame whose labels decided (0 for a still picture or an approval).
    frame: int = 0


class Policy:
    """Per-category thresholds (0..1) with a default, ignored categories and a review band."""

    def __init__(
        self,
        default: float = 0.5,
        rules: Mapping[str, float | None] | None = None,
        review_band: float = 0.0,
        manual_review: bool = False,
        model: bool = True,
    ) -> None:
        self.default = float(default)
        # Whether the backend judges new pictures: a Cloudinary chain without an 'aws_rek'
        # step ('manual', 'duplicate:0.9|manual') leaves every new picture to a human.
        self.model = bool(model)
        # Cloudinary's 'aws_rek|manual': what the model does not reject awaits a human.
        self.manual_review = bool(manual_review) or not self.model
        self.rules: dict[str, float | None] = {}
        for name, value in (rules or {}).items():
            category = taxonomy.canonical(name)
            if category is None:
                raise ValueError(f"unknown moderation category {name!r}")
            self.rules[category] = None if value is None else float(value)
        self.generation = generations.policy_generation(self.rules)
        self.review_band = float(review_band)
        settings: dict[str, object] = {
            "default": self.default,
            "rules": self.rules,
            "band": self.review_band,
            "judging": JUDGING,
        }
        if self.manual_review:
            settings["manual"] = True
        if not self.model:
            settings["model"] = False
        canonical = json.dumps(settings, sort_keys=True)
        self.fingerprint = hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"Policy(default={self.default}, rules={self.rules}, "
            f"review_band={self.review_band}, manual_review={self.manual_review}, "
            f"model={self.model})"
        )

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

    def judge(self, labels: Iterable[Label], content_types: Iterable[ContentType] = ()) -> Verdict:
        """The worst frame's verdict; the picture's labels and ContentTypes of every frame."""
        by_frame: dict[int, list[Label]] = {}
        for label in labels:
            by_frame.setdefault(label.frame, []).append(label)
        kinds = list(content_types)
        worst = Verdict(Status.APPROVED, ())
        for frame in sorted(by_frame):
            verdict = self._judge_frame(
                by_frame[frame], [kind for kind in kinds if kind.frame == frame], frame
            )
            if _SEVERITY[verdict.status] > _SEVERITY[worst.status]:
                worst = verdict
        if self.manual_review and worst.status is Status.APPROVED:
            return Verdict(Status.PENDING, (MANUAL_REASON,))
        return worst

    def counted(self, content_types: Iterable[ContentType]) -> list[ContentType]:
        """The ContentTypes reported at or above their own threshold, else the default."""
        found: list[ContentType] = []
        for kind in content_types:
            own = self.rules.get(taxonomy.slug(kind.name))
            if kind.confidence / 100.0 >= (self.default if own is None else own):
                found.append(kind)
        return found

    def _content_type_rule(
        self, content_types: Iterable[ContentType]
    ) -> tuple[float | None, str] | None:
        """The rule for a frame's ContentTypes, the most lenient where two apply."""
        found = [
            (self.rules[name], name)
            for name in sorted({taxonomy.slug(kind.name) for kind in content_types})
            if name in self.rules
        ]
        if not found:
            return None
        ignored = [item for item in found if item[0] is None]
        return ignored[0] if ignored else max(found, key=lambda item: item[0] or 0.0)

    def as_judged(
        self, labels: Iterable[Label], content_types: Iterable[ContentType] = ()
    ) -> list[generations.Judged]:
        """The labels each frame is judged on, in this policy's model generation."""
        items = list(labels)
        kinds = self.counted(content_types)
        result: list[generations.Judged] = []
        for frame in sorted({label.frame for label in items}):
            leaves = judged(label for label in items if label.frame == frame)
            frame_kinds = [kind for kind in kinds if kind.frame == frame]
            result += generations.translate(leaves, frame_kinds, self.generation)
        return result

    def _judge_frame(
        self, labels: list[Label], content_types: list[ContentType], frame: int
    ) -> Verdict:
        """Reject when a judged label is above its threshold; pending when one is in the band."""
        rejecting: list[Reason] = []
        reviewing: list[Reason] = []
        implied = generations.implied_content_types(judged(labels), self.generation)
        kind = self._content_type_rule(self.counted([*content_types, *implied]))
        for item in self.as_judged(labels, content_types):
            label = item.label
            lineage = taxonomy.lineage(label.name, label.parent, label.level)
            threshold, category = kind or self.threshold(lineage)
            if threshold is None:
                continue
            confidence = label.confidence / 100.0
            reason = Reason(
                name=item.reported.name,
                parent=item.reported.parent,
                confidence=label.confidence,
                threshold=threshold,
                category=category or "default",
                frame=frame,
                judged_as=_shown(label) if item.translated else "",
            )
            if confidence > threshold:
                rejecting.append(reason)
            elif self.review_band and confidence > round(threshold - self.review_band, 9):
                reviewing.append(reason)
        if rejecting:
            return Verdict(Status.REJECTED, tuple(dict.fromkeys(rejecting)), frame)
        if reviewing:
            return Verdict(Status.PENDING, tuple(dict.fromkeys(reviewing)), frame)
        return Verdict(Status.APPROVED, ())


def _shown(label: Label) -> str:
    return f"{label.parent} > {label.name}" if label.parent else label.name


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


@dataclass(frozen=True)
class Chain:
    """A Cloudinary moderation chain: the aws_rek step's rules, whether a human decides,
    the similarity of its 'duplicate' step (None without one), and whether it has an
    'aws_rek' step at all (without one, the backend is never called)."""

    rules: dict[str, float | None]
    manual: bool
    duplicate: float | None = None
    model: bool = True


def parse_cloudinary_chain(text: str) -> Chain:
    """Parse Cloudinary's piped moderation chain: 'aws_rek[:category:level]...',
    'duplicate:<score>' and 'manual' steps, 'manual' last ('manual' alone, or
    'duplicate:0.9|manual', leave every new picture to a human without a backend call).

    Cloudinary runs the steps in order and stops at the first rejection, so 'manual'
    after 'aws_rek' means a human decides what the model did not reject. A 'duplicate'
    step only ever rejects, so where it stands changes nothing: it is the similarity
    (0..1) at which a picture counts as a copy of a rejected one. A chain must end with
    a step that judges every picture ('aws_rek' or 'manual'): a 'duplicate' step alone
    would approve every picture unjudged.
    """
    steps = [step.strip() for step in text.strip().split("|")]
    rules: dict[str, float | None] | None = None
    manual = False
    duplicate: float | None = None
    for position, step in enumerate(steps):
        kind = step.split(":", 1)[0].strip().lower()
        if kind == "duplicate":
            if duplicate is not None:
                raise ValueError(f"step '{step}': the chain has one 'duplicate' step at most")
            duplicate = _duplicate_score(step)
            continue
        if kind == "manual":
            if step.lower() != "manual" or position != len(steps) - 1:
                raise ValueError(
                    f"step '{step}': 'manual' takes no options and must end the chain, "
                    "e.g. 'aws_rek:explicit_nudity:0.6|manual'"
                )
            manual = True
            continue
        if rules is not None:
            raise ValueError(f"step '{step}': the chain has one 'aws_rek' step at most")
        rules = parse_cloudinary_rules(step)
    if rules is None:
        if not manual:
            raise ValueError(
                "expected an 'aws_rek' or a 'manual' step (without one every picture would "
                f"be approved unjudged), e.g. 'aws_rek:explicit_nudity:0.6|manual', got {text!r}"
            )
        return Chain({}, manual, duplicate, model=False)
    return Chain(rules, manual, duplicate)


def _duplicate_score(step: str) -> float:
    """The score of a 'duplicate:<score>' step, 0..1."""
    parts = [part.strip() for part in step.split(":")]
    usage = "e.g. 'aws_rek|duplicate:0.9'"
    if len(parts) != 2 or not parts[1]:
        raise ValueError(f"step '{step}': 'duplicate' takes one score between 0 and 1, {usage}")
    try:
        score = float(parts[1])
    except ValueError:
        raise ValueError(f"step '{step}': score '{parts[1]}' is not a number, {usage}") from None
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"step '{step}': score {score:g} is not between 0 and 1")
    return score


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
