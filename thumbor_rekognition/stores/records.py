"""The compact binary form in which decision stores keep decisions, history events and paths.

A decision record is one flags byte (status, source, what follows), the raw SHA-256 of
the picture, then protobuf-style fields: a varint tag (field number and wire type) and
the value. A field at its default is left out and a reader skips numbers it does not
know, so fields can be added later without a new format: give a new field the next
free number and never reuse one. The fields are deflated, with a fixed dictionary of
the words decisions repeat (label names, backends, the plugin's notes), whenever that
makes them shorter. The key a record is stored under is not repeated inside it. The
fields, the dictionary and the byte-string lists are ``wire``'s.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from thumbor_rekognition.decision import (
    ContentType,
    Decision,
    Event,
    Label,
    Pdq,
    Reason,
    Source,
    Status,
)
from thumbor_rekognition.stores import wire
from thumbor_rekognition.stores.wire import DICTIONARY as DICTIONARY
from thumbor_rekognition.stores.wire import RecordError as RecordError
from thumbor_rekognition.stores.wire import join as join
from thumbor_rekognition.stores.wire import read_varint as read_varint
from thumbor_rekognition.stores.wire import split as split
from thumbor_rekognition.stores.wire import varint as varint

# The flags byte of a record: bits 0-1 status, 2-3 source, 4 a raw SHA-256 follows,
# 5 the fields are deflated; 6-7 are for later formats, which this one cannot read.
_STATUS = {Status.APPROVED: 0, Status.REJECTED: 1, Status.PENDING: 2}
_SOURCE = {Source.AUTO: 0, Source.MANUAL: 1, Source.DUPLICATE: 2}
# A status or source these tables do not number is spelt out in a field (code 3) and
# kept whole; give a new one a number here and in redis_scripts (STATUSES, SOURCES),
# which names the Redis store's counts. The source numbers are all taken: Source.BANK is
# spelt out, and redis_scripts counts code 3 as 'bank'; a further source needs a field
# of its own for the Redis counts to tell it apart.
_SPELT = 3
RAW_SHA = 0x10
DEFLATED = 0x20
_LATER = 0xC0


# Field numbers. Never renumber or reuse one; add new fields with new numbers.
class _D:
    URL_PREFIX, URL, LABEL, REASON, BACKEND, MODEL_VERSION = 1, 2, 3, 4, 5, 6
    POLICY_HEX, POLICY, MIN_CONFIDENCE, WIDTH, HEIGHT, ERROR = 7, 8, 9, 10, 11, 12
    CREATED_AT, SINCE_CREATION, CONTENT_TYPE, SHA256, STATUS, SOURCE = 13, 14, 15, 16, 17, 18
    UPDATED_AT, PROJECT_VERSION, DUPLICATE_OF, SIMILARITY, BLIND = 19, 20, 21, 22, 23
    PDQ = 24


_TEXTS = {
    _D.BACKEND: "backend",
    _D.MODEL_VERSION: "model_version",
    _D.POLICY: "policy",
    _D.ERROR: "error",
    _D.SHA256: "sha256",
    _D.PROJECT_VERSION: "project_version",
    _D.DUPLICATE_OF: "duplicate_of",
}
_NUMBERS = {
    _D.MIN_CONFIDENCE: "min_confidence",
    _D.CREATED_AT: "created_at",
    _D.SIMILARITY: "similarity",
}


class _L:
    NAME, PARENT, LEVEL, CONFIDENCE, FRAME = 1, 2, 3, 4, 5


class _R:
    NAME, PARENT, CONFIDENCE, THRESHOLD, CATEGORY, FRAME, JUDGED_AS = 1, 2, 3, 4, 5, 6, 7


class _C:
    NAME, CONFIDENCE, FRAME = 1, 2, 3


class _P:
    HASH, QUALITY, FRAME = 1, 2, 3


class _E:
    STATUS, SOURCE, ACTOR, NOTE, AT = 1, 2, 3, 4, 5


# The Decision fields this format keeps; a test fails when Decision grows one it does not.
DECISION_FIELDS = frozenset(
    {
        "key",
        "url",
        "sha256",
        "status",
        "source",
        "labels",
        "reasons",
        "backend",
        "model_version",
        "policy",
        "min_confidence",
        "width",
        "height",
        "error",
        "created_at",
        "updated_at",
        "content_types",
        "project_version",
        "duplicate_of",
        "similarity",
        "blind",
        "pdq",
    }
)


def _label(label: Label) -> bytes:
    out = wire.Writer()
    out.text(_L.NAME, label.name)
    out.text(_L.PARENT, label.parent)
    out.integer(_L.LEVEL, label.level)
    out.number(_L.CONFIDENCE, label.confidence)
    out.integer(_L.FRAME, label.frame)
    return bytes(out.out)


def _read_label(data: bytes) -> Label:
    values: dict[str, Any] = {"name": "", "parent": "", "level": 0, "confidence": 0.0}
    for number, wire_type, value in wire.fields(data):
        if number == _L.NAME:
            values["name"] = wire.text(value)
        elif number == _L.PARENT:
            values["parent"] = wire.text(value)
        elif number == _L.LEVEL:
            values["level"] = value
        elif number == _L.CONFIDENCE:
            values["confidence"] = wire.number(wire_type, value)
        elif number == _L.FRAME:
            values["frame"] = value
    return Label(**values)


def _reason(reason: Reason) -> bytes:
    out = wire.Writer()
    out.text(_R.NAME, reason.name)
    out.text(_R.PARENT, reason.parent)
    out.number(_R.CONFIDENCE, reason.confidence)
    out.number(_R.THRESHOLD, reason.threshold)
    out.text(_R.CATEGORY, reason.category)
    out.integer(_R.FRAME, reason.frame)
    out.text(_R.JUDGED_AS, reason.judged_as)
    return bytes(out.out)


def _read_reason(data: bytes) -> Reason:
    values: dict[str, Any] = {"name": "", "parent": "", "confidence": 0.0, "threshold": 0.0}
    values["category"] = ""
    for number, wire_type, value in wire.fields(data):
        if number == _R.NAME:
            values["name"] = wire.text(value)
        elif number == _R.PARENT:
            values["parent"] = wire.text(value)
        elif number == _R.CONFIDENCE:
            values["confidence"] = wire.number(wire_type, value)
        elif number == _R.THRESHOLD:
            values["threshold"] = wire.number(wire_type, value)
        elif number == _R.CATEGORY:
            values["category"] = wire.text(value)
        elif number == _R.FRAME:
            values["frame"] = value
        elif number == _R.JUDGED_AS:
            values["judged_as"] = wire.text(value)
    return Reason(**values)


def _content_type(item: ContentType) -> bytes:
    out = wire.Writer()
    out.text(_C.NAME, item.name)
    out.number(_C.CONFIDENCE, item.confidence)
    out.integer(_C.FRAME, item.frame)
    return bytes(out.out)


def _read_content_type(data: bytes) -> ContentType:
    values: dict[str, Any] = {"name": "", "confidence": 0.0}
    for number, wire_type, value in wire.fields(data):
        if number == _C.NAME:
            values["name"] = wire.text(value)
        elif number == _C.CONFIDENCE:
            values["confidence"] = wire.number(wire_type, value)
        elif number == _C.FRAME:
            values["frame"] = value
    return ContentType(**values)


def _pdq(item: Pdq) -> bytes:
    out = wire.Writer()
    if wire.is_hex(item.hash, 64):
        out.raw(_P.HASH, bytes.fromhex(item.hash))
    out.integer(_P.QUALITY, item.quality)
    out.integer(_P.FRAME, item.frame)
    return bytes(out.out)


def _read_pdq(data: bytes) -> Pdq:
    values: dict[str, Any] = {"hash": "", "quality": 0}
    for number, _, value in wire.fields(data):
        if number == _P.HASH:
            values["hash"] = bytes(value).hex()
        elif number == _P.QUALITY:
            values["quality"] = value
        elif number == _P.FRAME:
            values["frame"] = value
    return Pdq(**values)


def raw_sha(sha256: str) -> bytes:
    """The 32 bytes of a SHA-256 written as 64 hex digits; empty for anything else."""
    return bytes.fromhex(sha256) if wire.is_hex(sha256, 64) else b""


def _maybe_deflated(flags: int, body: bytes) -> bytes:
    packed = wire.deflate(body) if body else b""
    if body and len(packed) < len(body):
        return bytes([flags | DEFLATED]) + packed
    return bytes([flags]) + body


def encode_decision(decision: Decision) -> bytes:
    """The record of a decision; the key it is stored under is left out."""
    flags = _STATUS.get(decision.status, _SPELT) | _SOURCE.get(decision.source, _SPELT) << 2
    out = wire.Writer()
    sha = raw_sha(decision.sha256)
    if sha:
        flags |= RAW_SHA
    else:
        out.text(_D.SHA256, decision.sha256)
    if flags & 3 == _SPELT:
        out.text(_D.STATUS, decision.status.value)
    if flags >> 2 & 3 == _SPELT:
        out.text(_D.SOURCE, decision.source.value)
    if decision.url != decision.key:
        if decision.key and decision.url.endswith(decision.key):
            out.raw(_D.URL_PREFIX, decision.url[: -len(decision.key)].encode("utf-8"))
        else:
            out.raw(_D.URL, decision.url.encode("utf-8"))
    for label in decision.labels:
        out.raw(_D.LABEL, _label(label))
    for reason in decision.reasons:
        out.raw(_D.REASON, _reason(reason))
    for item in decision.content_types:
        out.raw(_D.CONTENT_TYPE, _content_type(item))
    for hashed in decision.pdq:
        out.raw(_D.PDQ, _pdq(hashed))
    out.text(_D.BACKEND, decision.backend)
    out.text(_D.MODEL_VERSION, decision.model_version)
    if wire.is_hex(decision.policy):
        out.raw(_D.POLICY_HEX, bytes.fromhex(decision.policy))
    else:
        out.text(_D.POLICY, decision.policy)
    out.number(_D.MIN_CONFIDENCE, decision.min_confidence)
    out.integer(_D.WIDTH, decision.width)
    out.integer(_D.HEIGHT, decision.height)
    out.text(_D.ERROR, decision.error)
    out.text(_D.PROJECT_VERSION, decision.project_version)
    out.text(_D.DUPLICATE_OF, decision.duplicate_of)
    out.number(_D.SIMILARITY, decision.similarity)
    out.integer(_D.BLIND, int(decision.blind))
    out.number(_D.CREATED_AT, decision.created_at)
    # Usually a few microseconds after the creation: the difference takes fewer bytes,
    # when adding it back gives the same float.
    since = decision.updated_at - decision.created_at
    if wire.same(decision.created_at + since, decision.updated_at):
        out.number(_D.SINCE_CREATION, since)
    else:
        out.number(_D.UPDATED_AT, decision.updated_at, always=True)
    head = _maybe_deflated(flags, bytes(out.out))
    return head[:1] + sha + head[1:]


def sha_of(record: bytes) -> bytes:
    """The raw SHA-256 a record starts with (empty when it has none)."""
    return record[1:33] if record and record[0] & RAW_SHA else b""


def status_of(record: bytes) -> int:
    """The status number of a record's flags (3: spelt out in a field)."""
    return record[0] & 3


def decode_decision(key: str, record: bytes) -> Decision:
    """The decision a record keeps under a key."""
    if not record:
        raise RecordError("empty record")
    flags = record[0]
    if flags & _LATER:
        raise RecordError("record written by a later format")
    position = 33 if flags & RAW_SHA else 1
    if len(record) < position:
        raise RecordError("truncated record")
    body = record[position:]
    if flags & DEFLATED:
        body = wire.inflate(body)
    statuses = {code: status for status, code in _STATUS.items()}
    sources = {code: source for source, code in _SOURCE.items()}
    values: dict[str, Any] = {
        "key": key,
        "url": key,
        "sha256": record[1:33].hex() if flags & RAW_SHA else "",
        "status": statuses.get(flags & 3),
        "source": sources.get(flags >> 2 & 3),
        "created_at": 0.0,
        "updated_at": 0.0,
    }
    labels: list[Label] = []
    reasons: list[Reason] = []
    content_types: list[ContentType] = []
    hashes: list[Pdq] = []
    since_creation, updated_at = 0.0, None
    for number, wire_type, value in wire.fields(body):
        if number == _D.URL_PREFIX:
            values["url"] = wire.text(value) + key
        elif number == _D.URL:
            values["url"] = wire.text(value)
        elif number == _D.LABEL:
            labels.append(_read_label(value))
        elif number == _D.REASON:
            reasons.append(_read_reason(value))
        elif number == _D.CONTENT_TYPE:
            content_types.append(_read_content_type(value))
        elif number == _D.PDQ:
            hashes.append(_read_pdq(value))
        elif number in _TEXTS:
            values[_TEXTS[number]] = wire.text(value)
        elif number == _D.POLICY_HEX:
            values["policy"] = bytes(value).hex()
        elif number in _NUMBERS:
            values[_NUMBERS[number]] = wire.number(wire_type, value)
        elif number == _D.WIDTH:
            values["width"] = value
        elif number == _D.HEIGHT:
            values["height"] = value
        elif number == _D.BLIND:
            values["blind"] = bool(value)
        elif number == _D.SINCE_CREATION:
            since_creation = wire.number(wire_type, value)
        elif number == _D.UPDATED_AT:
            updated_at = wire.number(wire_type, value)
        elif number == _D.STATUS:
            values["status"] = Status(wire.text(value))
        elif number == _D.SOURCE:
            values["source"] = Source(wire.text(value))
    if values["status"] is None or values["source"] is None:
        raise RecordError("record without a status or source")
    values["updated_at"] = (
        updated_at if updated_at is not None else values["created_at"] + since_creation
    )
    return Decision(
        **values,
        labels=tuple(labels),
        reasons=tuple(reasons),
        content_types=tuple(content_types),
        pdq=tuple(hashes),
    )


def encode_event(event: Event) -> bytes:
    """One history entry."""
    out = wire.Writer()
    out.integer(_E.STATUS, _event_code(event.status, _STATUS))
    out.integer(_E.SOURCE, _event_code(event.source, _SOURCE))
    out.text(_E.ACTOR, event.actor)
    out.text(_E.NOTE, event.note)
    out.number(_E.AT, event.at)
    body = bytes(out.out)
    if event.status is not None and event.status not in _STATUS:
        body += _spelt(6, event.status.value)
    if event.source is not None and event.source not in _SOURCE:
        body += _spelt(7, event.source.value)
    return _maybe_deflated(0, body)


def _event_code(value: Any, table: dict[Any, int]) -> int:
    # 0 means none, so that an event without a status leaves the field out.
    return 0 if value is None else table.get(value, _SPELT) + 1


def _spelt(number: int, text: str) -> bytes:
    out = wire.Writer()
    out.text(number, text)
    return bytes(out.out)


def decode_event(data: bytes) -> Event:
    """The event encode_event() wrote."""
    if not data or data[0] & ~DEFLATED:
        raise RecordError("not a history entry of this format")
    body = wire.inflate(data[1:]) if data[0] & DEFLATED else data[1:]
    statuses = {code + 1: status for status, code in _STATUS.items()}
    sources = {code + 1: source for source, code in _SOURCE.items()}
    values: dict[str, Any] = {"status": None, "source": None, "actor": "", "note": "", "at": 0.0}
    for number, wire_type, value in wire.fields(body):
        if number == _E.STATUS:
            values["status"] = statuses.get(value)
        elif number == _E.SOURCE:
            values["source"] = sources.get(value)
        elif number == _E.ACTOR:
            values["actor"] = wire.text(value)
        elif number == _E.NOTE:
            values["note"] = wire.text(value)
        elif number == _E.AT:
            values["at"] = wire.number(wire_type, value)
        elif number == 6:
            values["status"] = Status(wire.text(value))
        elif number == 7:
            values["source"] = Source(wire.text(value))
    return Event(**values)


def encode_path(key: str, path: str) -> bytes:
    """A recorded path, the key inside it (if any) written as its position only."""
    at = path.find(key) if key else -1
    if at < 0:
        body = b"\x00" + path.encode("utf-8")
    else:
        head, tail = path[:at].encode("utf-8"), path[at + len(key) :].encode("utf-8")
        body = varint(len(head) + 1) + head + tail
    return _maybe_deflated(0, body)


def decode_path(key: str, data: bytes) -> str:
    """The path encode_path() wrote for this key."""
    if not data or data[0] & ~DEFLATED:
        raise RecordError("not a recorded path of this format")
    body = wire.inflate(data[1:]) if data[0] & DEFLATED else data[1:]
    at, position = read_varint(body, 0)
    if at == 0:
        return body[position:].decode("utf-8")
    head = body[position : position + at - 1].decode("utf-8")
    return head + key + body[position + at - 1 :].decode("utf-8")


def known_fields() -> frozenset[str]:
    """The Decision fields the running code defines (compared with DECISION_FIELDS)."""
    return frozenset(field.name for field in dataclasses.fields(Decision))
