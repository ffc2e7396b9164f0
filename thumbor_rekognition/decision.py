"""What the plugin decided about a picture, and what it was decided from."""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from thumbor_rekognition import taxonomy


class Status(str, enum.Enum):
    APPROVED = "approved"
    REJECTED = "rejected"
    PENDING = "pending"


class Source(str, enum.Enum):
    AUTO = "auto"
    MANUAL = "manual"
    # Rejected without a backend call: it resembles a rejected picture (duplicate_of).
    DUPLICATE = "duplicate"
    # Decided without a backend call: its PDQ hash is in a hash bank (MODERATION_HASH_BANKS)
    # or HMA's; the reason names the bank and the entry.
    BANK = "bank"


@dataclass(frozen=True)
class Label:
    """One moderation label as a backend reported it; confidence on Rekognition's 0..100."""

    name: str
    parent: str
    level: int
    confidence: float
    # Which of the frames sent for the picture (0 for a still picture) carried it.
    frame: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Label:
        return cls(
            name=str(data["name"]),
            parent=str(data.get("parent", "")),
            level=int(data.get("level", 0)),
            confidence=float(data["confidence"]),
            frame=int(data.get("frame", 0)),
        )


@dataclass(frozen=True)
class ContentType:
    """What kind of picture a model 7.x answer says it saw: Animated or Illustrated."""

    name: str
    confidence: float
    frame: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContentType:
        return cls(
            name=str(data["name"]),
            confidence=float(data.get("confidence", 0.0)),
            frame=int(data.get("frame", 0)),
        )


@dataclass(frozen=True)
class Pdq:
    """The PDQ hash (64 hex digits; '' below quality 50, not worth matching) and quality
    of one judged frame."""

    hash: str
    quality: int
    frame: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pdq:
        return cls(
            hash=str(data.get("hash", "")),
            quality=int(data.get("quality", 0)),
            frame=int(data.get("frame", 0)),
        )


# The category of the reason of a pending animation with distinct scenes no backend call
# judged: its confidence is the number of those scenes, its threshold MODERATION_MAX_FRAMES.
UNJUDGED = "unjudged_scenes"


@dataclass(frozen=True)
class Reason:
    """A label that decided a rejection or sent a picture to review."""

    name: str
    parent: str
    confidence: float
    threshold: float
    category: str
    # The frame that carried the label, and the label it was judged as when the policy is
    # written for the other model generation ('' when judged as reported).
    frame: int = 0
    judged_as: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reason:
        return cls(
            name=str(data["name"]),
            parent=str(data.get("parent", "")),
            confidence=float(data["confidence"]),
            threshold=float(data["threshold"]),
            category=str(data.get("category", "")),
            frame=int(data.get("frame", 0)),
            judged_as=str(data.get("judged_as", "")),
        )


@dataclass(frozen=True)
class Analysis:
    """What a backend saw in one picture."""

    labels: tuple[Label, ...]
    backend: str
    model_version: str
    min_confidence: float
    frames: int = 1
    content_types: tuple[ContentType, ...] = ()
    # The Custom Moderation adapter the answer says it used ('' for the base model).
    project_version: str = ""


@dataclass(frozen=True)
class Decision:
    """A picture's moderation status, keyed by its normalised URL."""

    key: str
    url: str
    sha256: str
    status: Status
    source: Source
    labels: tuple[Label, ...] = ()
    reasons: tuple[Reason, ...] = ()
    backend: str = ""
    model_version: str = ""
    policy: str = ""
    min_confidence: float = 0.0
    width: int = 0
    height: int = 0
    error: str = ""
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    content_types: tuple[ContentType, ...] = ()
    project_version: str = ""
    # Source DUPLICATE: the key of the rejected picture this one resembles, and how closely.
    duplicate_of: str = ""
    similarity: float = 0.0
    # Source MANUAL: decided before any request fetched the picture (see rules.py); it
    # names a URL, and the URL's first fetch binds it to bytes.
    blind: bool = False
    # The PDQ hash and quality of each judged frame, when the picture was prepared.
    pdq: tuple[Pdq, ...] = ()

    @functools.cached_property
    def digest(self) -> bytes:
        """The content hash as raw bytes (as results keep it)."""
        return bytes.fromhex(self.sha256)

    @property
    def is_final(self) -> bool:
        """Whether the picture was approved or rejected."""
        return self.status is not Status.PENDING

    @property
    def needs_retry(self) -> bool:
        """Pending because the backend failed (retried), not because a score awaits review."""
        return self.status is Status.PENDING and bool(self.error)

    def replace(self, **changes: Any) -> Decision:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        data["source"] = self.source.value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        return cls(
            key=str(data["key"]),
            url=str(data.get("url", data["key"])),
            sha256=str(data.get("sha256", "")),
            status=Status(data["status"]),
            source=Source(data["source"]),
            labels=tuple(Label.from_dict(item) for item in data.get("labels", ())),
            reasons=tuple(Reason.from_dict(item) for item in data.get("reasons", ())),
            backend=str(data.get("backend", "")),
            model_version=str(data.get("model_version", "")),
            policy=str(data.get("policy", "")),
            min_confidence=float(data.get("min_confidence", 0.0)),
            width=int(data.get("width", 0)),
            height=int(data.get("height", 0)),
            error=str(data.get("error", "")),
            created_at=float(data.get("created_at", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
            content_types=tuple(
                ContentType.from_dict(item) for item in data.get("content_types", ())
            ),
            project_version=str(data.get("project_version", "")),
            duplicate_of=str(data.get("duplicate_of", "")),
            similarity=float(data.get("similarity", 0.0)),
            blind=bool(data.get("blind", False)),
            pdq=tuple(Pdq.from_dict(item) for item in data.get("pdq", ())),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Decision:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Event:
    """One entry of a decision's append-only history."""

    status: Status | None
    source: Source | None
    actor: str
    note: str
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value if self.status else None,
            "source": self.source.value if self.source else None,
            "actor": self.actor,
            "note": self.note,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        return cls(
            status=Status(data["status"]) if data.get("status") else None,
            source=Source(data["source"]) if data.get("source") else None,
            actor=str(data.get("actor", "")),
            note=str(data.get("note", "")),
            at=float(data.get("at", 0.0)),
        )


def labels_from_rekognition(
    items: Sequence[Mapping[str, Any]], frame: int = 0
) -> tuple[Label, ...]:
    """Labels from Rekognition's ModerationLabels list, levels filled in for model 6.x."""
    pairs = [(str(item.get("Name", "")), str(item.get("ParentName", ""))) for item in items]
    return tuple(
        Label(
            name=name,
            parent=parent,
            level=taxonomy.infer_level(parent, item.get("TaxonomyLevel"), pairs),
            confidence=float(item.get("Confidence", 0.0)),
            frame=frame,
        )
        for (name, parent), item in zip(pairs, items, strict=True)
    )


def content_types_from_rekognition(
    items: Sequence[Mapping[str, Any]], frame: int = 0
) -> tuple[ContentType, ...]:
    """ContentTypes from a model 7.x answer (none from model 6.x)."""
    return tuple(
        ContentType(
            name=str(item.get("Name", "")),
            confidence=float(item.get("Confidence", 0.0)),
            frame=frame,
        )
        for item in items
        if item.get("Name")
    )
