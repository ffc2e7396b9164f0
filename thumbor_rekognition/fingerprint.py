"""A frame's fingerprint in the index of judged pictures: its PDQ hash (see ``pdq``), with
the hashes of its 8 rotations and mirrors.

The stores index each frame's own hash, and each rotation and mirror of a frame that
rejects its picture, cut into 16 slots of 16 bits (multi-index hashing, Meta's layout):
a new picture's own hash finds a mirrored or rotated copy of a rejected one, and the
backward search (a picture just rejected, its approved copies) asks with the 8 variants
kept in the rejected picture's record (see ``duplicates``).
Frames whose PDQ quality is below 50 get no fingerprint: too flat for their hash to
mean anything, and matched by nothing.

How alike two fingerprints are is 1 - distance/256, distance being the fewest bits the
indexed hash differs from any variant of the other: MODERATION_DUPLICATE_SIMILARITY
0.9 is 25 bits, Meta's threshold of 31 bits is 0.879.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from thumbor_rekognition import pdq

BITS = pdq.BITS
BYTES = BITS // 8
# The hash is looked up in the index a slot at a time (multi-index hashing).
BANDS = 16
BAND_BITS = BITS // BANDS


@dataclass(frozen=True)
class Print:
    """A frame's PDQ hash, and the hashes of its rotations and mirrors (its own first;
    empty when not known, as for a hash read from the index)."""

    value: int
    variants: tuple[int, ...] = ()

    @property
    def hashes(self) -> tuple[int, ...]:
        """Its variants' hashes when known, else its own alone."""
        return self.variants or (self.value,)

    def distance(self, other: Print) -> int:
        """Bits the other's hash is apart from the nearest of this one's variants."""
        return min((value ^ other.value).bit_count() for value in self.hashes)

    def similarity(self, other: Print) -> float:
        """1.0 for the same hash (or a variant of it), about 0.5 for unrelated pictures."""
        return 1.0 - self.distance(other) / BITS

    def bands(self) -> tuple[int, ...]:
        """The hash cut into BANDS values of BAND_BITS bits, most significant first."""
        mask = (1 << BAND_BITS) - 1
        return tuple(self.value >> (BAND_BITS * (BANDS - 1 - band)) & mask for band in range(BANDS))

    def entry(self) -> bytes:
        """The hash alone, 32 bytes big-endian: what an index entry holds."""
        return self.value.to_bytes(BYTES, "big")

    def to_bytes(self) -> bytes:
        """The hash, then its other variants when known: 32 or 256 bytes."""
        others = self.variants[1:] if self.variants else ()
        return b"".join(value.to_bytes(BYTES, "big") for value in (self.value, *others))

    @classmethod
    def from_bytes(cls, data: bytes) -> Print:
        if len(data) not in (BYTES, 8 * BYTES):
            raise ValueError(f"a fingerprint is {BYTES} or {8 * BYTES} bytes, got {len(data)}")
        values = tuple(
            int.from_bytes(data[start : start + BYTES], "big")
            for start in range(0, len(data), BYTES)
        )
        return cls(values[0], values if len(values) > 1 else ())

    def hex(self) -> str:
        return self.to_bytes().hex()

    @classmethod
    def from_hex(cls, text: str) -> Print:
        return cls.from_bytes(bytes.fromhex(text))


def of(hashed: pdq.Hash | None) -> Print | None:
    """The fingerprint of a frame's PDQ hash; None below the quality worth matching."""
    if hashed is None or not hashed.usable:
        return None
    return Print(hashed.value, hashed.variants)


def within(minimum_similarity: float) -> int:
    """The most bits that may differ in a fingerprint at least this similar."""
    return math.floor((1.0 - minimum_similarity) * BITS + 1e-9)
