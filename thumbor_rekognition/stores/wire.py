"""The wire format under the stores' records: protobuf-style fields (varint tags, zigzag
integers, floats in the fewest bytes that give them back), deflated with a fixed dictionary,
and length-prefixed lists of byte strings."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator
from typing import Any

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

# Wire types, as protobuf numbers them.
VARINT, DOUBLE, BYTES, FLOAT = 0, 1, 2, 5


class RecordError(ValueError):
    """Bytes that are not a record this version can read."""


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


class Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def _tag(self, number: int, wire: int) -> None:
        self.out += varint(number << 3 | wire)

    def integer(self, number: int, value: int) -> None:
        if value:
            self._tag(number, VARINT)
            self.out += varint(value << 1 if value >= 0 else (-value << 1) - 1)

    def text(self, number: int, value: str) -> None:
        if value:
            self.raw(number, value.encode("utf-8"))

    def raw(self, number: int, value: bytes) -> None:
        self._tag(number, BYTES)
        self.out += varint(len(value)) + value

    def number(self, number: int, value: float, always: bool = False) -> None:
        """A float in the fewest bytes that give it back exactly: thousandths as a varint,
        a float32, or a double; 0.0 is left out unless always."""
        if value == 0 and math.copysign(1.0, value) > 0 and not always:
            return
        if value and math.isfinite(value) and abs(value) < 2**50:
            thousandths = round(value * 1000)
            if thousandths / 1000 == value:
                self._tag(number, VARINT)
                self.out += varint(
                    thousandths << 1 if thousandths >= 0 else (-thousandths << 1) - 1
                )
                return
        single = struct.pack("<f", value) if abs(value) < 3e38 or not math.isfinite(value) else b""
        if single and struct.unpack("<f", single)[0] == value:
            self._tag(number, FLOAT)
            self.out += single
            return
        self._tag(number, DOUBLE)
        self.out += struct.pack("<d", value)


def fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field: ints, bytes or floats."""
    position = 0
    while position < len(data):
        tag, position = read_varint(data, position)
        number, wire = tag >> 3, tag & 7
        value: Any
        if wire == VARINT:
            value, position = read_varint(data, position)
            value = (value >> 1) ^ -(value & 1)
        elif wire == BYTES:
            size, position = read_varint(data, position)
            value = data[position : position + size]
            position += size
        elif wire in (FLOAT, DOUBLE):
            size = 4 if wire == FLOAT else 8
            if position + size > len(data):
                raise RecordError("truncated field")
            (value,) = struct.unpack_from("<f" if wire == FLOAT else "<d", data, position)
            position += size
        else:
            raise RecordError(f"unknown wire type {wire}")
        if position > len(data):
            raise RecordError("truncated field")
        yield number, wire, value


def number(wire: int, value: Any) -> float:
    return float(value) / 1000 if wire == VARINT else float(value)


def text(value: Any) -> str:
    if not isinstance(value, bytes):
        raise RecordError("a text field holds no bytes")
    return value.decode("utf-8")


def deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    return packer.compress(data) + packer.flush()


def inflate(data: bytes) -> bytes:
    unpacker = zlib.decompressobj(-15, zdict=DICTIONARY)
    try:
        body = unpacker.decompress(data) + unpacker.flush()
    except zlib.error as error:
        raise RecordError(f"damaged deflated fields: {error}") from error
    if not unpacker.eof:
        raise RecordError("truncated deflated fields")
    return body


def is_hex(text: str, length: int | None = None) -> bool:
    if length is not None and len(text) != length:
        return False
    if len(text) % 2 or not text:
        return False
    try:
        return bytes.fromhex(text).hex() == text
    except ValueError:
        return False


def same(first: float, second: float) -> bool:
    """The same float, bit for bit (0.0 and -0.0 differ; a NaN is itself)."""
    return struct.pack("<d", first) == struct.pack("<d", second)
