"""The compact binary form in which decision stores keep decisions, history events and paths.

A decision record is one flags byte (status, source, what follows), the raw SHA-256 of
the picture, then protobuf-style fields: a varint tag (field number and wire type) and
the value. A field at its default is left out and a reader skips numbers it does not
know, so fields can be added later without a new format: give a new field the next
free number and never reuse one. The fields are deflated, with a fixed dictionary of
the words decisions repeat (label names, backends, the plugin's notes), whenever that
makes them shorter. The key a record is stored under is not repeated inside it.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from thumbor_rekognition.decision import ContentType, Decision, Event, Label, Reason, Source, Status

# Never edit: records deflated with it could not be read. Words that decisions and notes
# repeat, most frequent last (deflate reaches the end of a dictionary most cheaply).
_WORDS = (
    "Explicit Nudity|Nudity|Graphic Male Nudity|Graphic Female Nudity|Sexual Activity|"
    "Illustrated Explicit Nudity|Adult Toys|Suggestive|Female Swimwear Or Underwear|"
    "Male Swimwear Or Underwear|Partial Nudity|Barechested Male|Revealing Clothes|"
    "Sexual Situations|Violence|Graphic Violence Or Gore|Physical Violence|Weapon Violence|"
    "Weapons|Self Injury|Visually Disturbing|Emaciated Bodies|Corpses|Hanging|Air Crash|"
    "Explosions And Blasts|Rude Gestures|Middle Finger|Drugs|Drug Products|Drug Use|Pills|"
    "Drug Paraphernalia|Tobacco|Tobacco Products|Smoking|Alcohol|Drinking|"
    "Alcoholic Beverages|Gambling|Hate Symbols|Nazi Party|White Supremacy|Extremist|"
    "Explicit|Exposed Male Genitalia|Exposed Female Genitalia|Exposed Buttocks or Anus|"
    "Exposed Female Nipple|Explicit Sexual Activity|Sex Toys|"
    "Non-Explicit Nudity of Intimate parts and Kissing|Non-Explicit Nudity|Bare Back|"
    "Exposed Male Nipple|Partially Exposed Buttocks|Partially Exposed Female Breast|"
    "Implied Nudity|Obstructed Intimate Parts|Obstructed Female Nipple|"
    "Obstructed Male Genitalia|Kissing on the Lips|Swimwear or Underwear|"
    "Female Swimwear or Underwear|Male Swimwear or Underwear|Graphic Violence|Self-Harm|"
    "Blood & Gore|Explosions and Blasts|Death and Emaciation|Crashes|Drugs & Tobacco|"
    "Products|Drugs & Tobacco Paraphernalia & Use|Alcohol Use|Animated|Illustrated|"
    "explicit_nudity|graphic_male_nudity|graphic_female_nudity|sexual_activity|"
    "illustrated_explicit_nudity|adult_toys|female_swimwear_or_underwear|"
    "male_swimwear_or_underwear|partial_nudity|barechested_male|revealing_clothes|"
    "sexual_situations|graphic_violence_or_gore|physical_violence|weapon_violence|"
    "self_injury|visually_disturbing|emaciated_bodies|air_crash|explosions_and_blasts|"
    "rude_gestures|middle_finger|drug_products|drug_use|drug_paraphernalia|"
    "tobacco_products|alcoholic_beverages|hate_symbols|nazi_party|white_supremacy|"
    "exposed_male_genitalia|exposed_female_genitalia|exposed_buttocks_or_anus|"
    "exposed_female_nipple|explicit_sexual_activity|sex_toys|"
    "non_explicit_nudity_of_intimate_parts_and_kissing|non_explicit_nudity|bare_back|"
    "exposed_male_nipple|partially_exposed_buttocks|partially_exposed_female_breast|"
    "implied_nudity|obstructed_intimate_parts|obstructed_female_nipple|"
    "obstructed_male_genitalia|kissing_on_the_lips|swimwear_or_underwear|graphic_violence|"
    "self_harm|blood_and_gore|death_and_emaciation|drugs_and_tobacco|"
    "drugs_and_tobacco_paraphernalia_and_use|alcohol_use|animated|illustrated|default|"
    "unjudged_scenes|Unjudged scenes|awaiting manual review|manual|"
    " distinct scenes not judged (MODERATION_MAX_FRAMES=|): waiting for a human|"
    "thresholds changed; labels judged again|first fetch|same picture (sha256 |) as |"
    "no decision: store: |retryable: |bad_image: |configuration: |timeout|"
    "ThrottlingException|ProvisionedThroughputExceededException|InternalServerError|"
    "nudenet|3.4|6.1|7.0| near |.jpg|.png|.webp|.gif|storage:|/unsafe/|fit-in/|smart/|"
    "filters:|format(webp)|quality(|https://|http://|http%3A//|https%3A//|"
    "rekognition 6.1: |rekognition 7.0: nothing above thresholds|thumbor-rekognition"
)
DICTIONARY = _WORDS.encode("utf-8")

# The flags byte of a record: bits 0-1 status, 2-3 source, 4 a raw SHA-256 follows,
# 5 the fields are deflated; 6-7 are for later formats, which this one cannot read.
_STATUS = {Status.APPROVED: 0, Status.REJECTED: 1, Status.PENDING: 2}
_SOURCE = {Source.AUTO: 0, Source.MANUAL: 1, Source.DUPLICATE: 2}
# A status or source these tables do not number is spelt out in a field (code 3) and
# kept whole; give a new one a number here and in redis_scripts (STATUSES, SOURCES),
# which names the Redis store's counts.
_SPELT = 3
RAW_SHA = 0x10
DEFLATED = 0x20
_LATER = 0xC0

# Wire types, as protobuf numbers them.
_VARINT, _DOUBLE, _BYTES, _FLOAT = 0, 1, 2, 5


class RecordError(ValueError):
    """Bytes that are not a record this version can read."""


# Field numbers. Never renumber or reuse one; add new fields with new numbers.
class _D:
    URL_PREFIX, URL, LABEL, REASON, BACKEND, MODEL_VERSION = 1, 2, 3, 4, 5, 6
    POLICY_HEX, POLICY, MIN_CONFIDENCE, WIDTH, HEIGHT, ERROR = 7, 8, 9, 10, 11, 12
    CREATED_AT, SINCE_CREATION, CONTENT_TYPE, SHA256, STATUS, SOURCE = 13, 14, 15, 16, 17, 18
    UPDATED_AT, PROJECT_VERSION, DUPLICATE_OF, SIMILARITY, BLIND = 19, 20, 21, 22, 23


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
    }
)


def varint(value: int) -> bytes:
    """LEB128: seven bits a byte, lowest first."""
    if value < 0:
        raise ValueError(f"varint of a negative number: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at a position, and the position after it."""
    result = shift = 0
    while True:
        if position >= len(data):
            raise RecordError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def join(items: list[bytes]) -> bytes:
    """Byte strings, each behind its length."""
    return b"".join(varint(len(item)) + item for item in items)


def split(data: bytes) -> Iterator[bytes]:
    """The byte strings join() put together."""
    position = 0
    while position < len(data):
        size, position = read_varint(data, position)
        if position + size > len(data):
            raise RecordError("truncated item")
        yield data[position : position + size]
        position += size


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def _tag(self, number: int, wire: int) -> None:
        self.out += varint(number << 3 | wire)

    def integer(self, number: int, value: int) -> None:
        if value:
            self._tag(number, _VARINT)
            self.out += varint(value << 1 if value >= 0 else (-value << 1) - 1)

    def text(self, number: int, value: str) -> None:
        if value:
            self.raw(number, value.encode("utf-8"))

    def raw(self, number: int, value: bytes) -> None:
        self._tag(number, _BYTES)
        self.out += varint(len(value)) + value

    def number(self, number: int, value: float, always: bool = False) -> None:
        """A float in the fewest bytes that give it back exactly: thousandths as a varint,
        a float32, or a double; 0.0 is left out unless always."""
        if value == 0 and math.copysign(1.0, value) > 0 and not always:
            return
        if value and math.isfinite(value) and abs(value) < 2**50:
            thousandths = round(value * 1000)
            if thousandths / 1000 == value:
                self._tag(number, _VARINT)
                self.out += varint(
                    thousandths << 1 if thousandths >= 0 else (-thousandths << 1) - 1
                )
                return
        single = struct.pack("<f", value) if abs(value) < 3e38 or not math.isfinite(value) else b""
        if single and struct.unpack("<f", single)[0] == value:
            self._tag(number, _FLOAT)
            self.out += single
            return
        self._tag(number, _DOUBLE)
        self.out += struct.pack("<d", value)


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field: ints, bytes or floats."""
    position = 0
    while position < len(data):
        tag, position = read_varint(data, position)
        number, wire = tag >> 3, tag & 7
        value: Any
        if wire == _VARINT:
            value, position = read_varint(data, position)
            value = (value >> 1) ^ -(value & 1)
        elif wire == _BYTES:
            size, position = read_varint(data, position)
            value = data[position : position + size]
            position += size
        elif wire in (_FLOAT, _DOUBLE):
            size = 4 if wire == _FLOAT else 8
            if position + size > len(data):
                raise RecordError("truncated field")
            (value,) = struct.unpack_from("<f" if wire == _FLOAT else "<d", data, position)
            position += size
        else:
            raise RecordError(f"unknown wire type {wire}")
        if position > len(data):
            raise RecordError("truncated field")
        yield number, wire, value


def _number(wire: int, value: Any) -> float:
    return float(value) / 1000 if wire == _VARINT else float(value)


def _text(value: Any) -> str:
    if not isinstance(value, bytes):
        raise RecordError("a text field holds no bytes")
    return value.decode("utf-8")


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    return packer.compress(data) + packer.flush()


def _inflate(data: bytes) -> bytes:
    unpacker = zlib.decompressobj(-15, zdict=DICTIONARY)
    try:
        body = unpacker.decompress(data) + unpacker.flush()
    except zlib.error as error:
        raise RecordError(f"damaged deflated fields: {error}") from error
    if not unpacker.eof:
        raise RecordError("truncated deflated fields")
    return body


def _label(label: Label) -> bytes:
    out = _Writer()
    out.text(_L.NAME, label.name)
    out.text(_L.PARENT, label.parent)
    out.integer(_L.LEVEL, label.level)
    out.number(_L.CONFIDENCE, label.confidence)
    out.integer(_L.FRAME, label.frame)
    return bytes(out.out)


def _read_label(data: bytes) -> Label:
    values: dict[str, Any] = {"name": "", "parent": "", "level": 0, "confidence": 0.0}
    for number, wire, value in _fields(data):
        if number == _L.NAME:
            values["name"] = _text(value)
        elif number == _L.PARENT:
            values["parent"] = _text(value)
        elif number == _L.LEVEL:
            values["level"] = value
        elif number == _L.CONFIDENCE:
            values["confidence"] = _number(wire, value)
        elif number == _L.FRAME:
            values["frame"] = value
    return Label(**values)


def _reason(reason: Reason) -> bytes:
    out = _Writer()
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
    for number, wire, value in _fields(data):
        if number == _R.NAME:
            values["name"] = _text(value)
        elif number == _R.PARENT:
            values["parent"] = _text(value)
        elif number == _R.CONFIDENCE:
            values["confidence"] = _number(wire, value)
        elif number == _R.THRESHOLD:
            values["threshold"] = _number(wire, value)
        elif number == _R.CATEGORY:
            values["category"] = _text(value)
        elif number == _R.FRAME:
            values["frame"] = value
        elif number == _R.JUDGED_AS:
            values["judged_as"] = _text(value)
    return Reason(**values)


def _content_type(item: ContentType) -> bytes:
    out = _Writer()
    out.text(_C.NAME, item.name)
    out.number(_C.CONFIDENCE, item.confidence)
    out.integer(_C.FRAME, item.frame)
    return bytes(out.out)


def _read_content_type(data: bytes) -> ContentType:
    values: dict[str, Any] = {"name": "", "confidence": 0.0}
    for number, wire, value in _fields(data):
        if number == _C.NAME:
            values["name"] = _text(value)
        elif number == _C.CONFIDENCE:
            values["confidence"] = _number(wire, value)
        elif number == _C.FRAME:
            values["frame"] = value
    return ContentType(**values)


def _is_hex(text: str, length: int | None = None) -> bool:
    if length is not None and len(text) != length:
        return False
    if len(text) % 2 or not text:
        return False
    try:
        return bytes.fromhex(text).hex() == text
    except ValueError:
        return False


def _same(first: float, second: float) -> bool:
    """The same float, bit for bit (0.0 and -0.0 differ; a NaN is itself)."""
    return struct.pack("<d", first) == struct.pack("<d", second)


def raw_sha(sha256: str) -> bytes:
    """The 32 bytes of a SHA-256 written as 64 hex digits; empty for anything else."""
    return bytes.fromhex(sha256) if _is_hex(sha256, 64) else b""


def _maybe_deflated(flags: int, body: bytes) -> bytes:
    packed = _deflate(body) if body else b""
    if body and len(packed) < len(body):
        return bytes([flags | DEFLATED]) + packed
    return bytes([flags]) + body


def encode_decision(decision: Decision) -> bytes:
    """The record of a decision; the key it is stored under is left out."""
    flags = _STATUS.get(decision.status, _SPELT) | _SOURCE.get(decision.source, _SPELT) << 2
    out = _Writer()
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
    out.text(_D.BACKEND, decision.backend)
    out.text(_D.MODEL_VERSION, decision.model_version)
    if _is_hex(decision.policy):
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
    if _same(decision.created_at + since, decision.updated_at):
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
        body = _inflate(body)
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
    since_creation, updated_at = 0.0, None
    for number, wire, value in _fields(body):
        if number == _D.URL_PREFIX:
            values["url"] = _text(value) + key
        elif number == _D.URL:
            values["url"] = _text(value)
        elif number == _D.LABEL:
            labels.append(_read_label(value))
        elif number == _D.REASON:
            reasons.append(_read_reason(value))
        elif number == _D.CONTENT_TYPE:
            content_types.append(_read_content_type(value))
        elif number in _TEXTS:
            values[_TEXTS[number]] = _text(value)
        elif number == _D.POLICY_HEX:
            values["policy"] = bytes(value).hex()
        elif number in _NUMBERS:
            values[_NUMBERS[number]] = _number(wire, value)
        elif number == _D.WIDTH:
            values["width"] = value
        elif number == _D.HEIGHT:
            values["height"] = value
        elif number == _D.BLIND:
            values["blind"] = bool(value)
        elif number == _D.SINCE_CREATION:
            since_creation = _number(wire, value)
        elif number == _D.UPDATED_AT:
            updated_at = _number(wire, value)
        elif number == _D.STATUS:
            values["status"] = Status(_text(value))
        elif number == _D.SOURCE:
            values["source"] = Source(_text(value))
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
    )


def encode_event(event: Event) -> bytes:
    """One history entry."""
    out = _Writer()
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
    out = _Writer()
    out.text(number, text)
    return bytes(out.out)


def decode_event(data: bytes) -> Event:
    """The event encode_event() wrote."""
    if not data or data[0] & ~DEFLATED:
        raise RecordError("not a history entry of this format")
    body = _inflate(data[1:]) if data[0] & DEFLATED else data[1:]
    statuses = {code + 1: status for status, code in _STATUS.items()}
    sources = {code + 1: source for source, code in _SOURCE.items()}
    values: dict[str, Any] = {"status": None, "source": None, "actor": "", "note": "", "at": 0.0}
    for number, wire, value in _fields(body):
        if number == _E.STATUS:
            values["status"] = statuses.get(value)
        elif number == _E.SOURCE:
            values["source"] = sources.get(value)
        elif number == _E.ACTOR:
            values["actor"] = _text(value)
        elif number == _E.NOTE:
            values["note"] = _text(value)
        elif number == _E.AT:
            values["at"] = _number(wire, value)
        elif number == 6:
            values["status"] = Status(_text(value))
        elif number == 7:
            values["source"] = Source(_text(value))
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
    body = _inflate(data[1:]) if data[0] & DEFLATED else data[1:]
    at, position = read_varint(body, 0)
    if at == 0:
        return body[position:].decode("utf-8")
    head = body[position : position + at - 1].decode("utf-8")
    return head + key + body[position + at - 1 :].decode("utf-8")


def known_fields() -> frozenset[str]:
    """The Decision fields the running code defines (compared with DECISION_FIELDS)."""
    return frozenset(field.name for field in dataclasses.fields(Decision))
