"""The plugin's former fingerprint, kept only for `eval-matching` to measure against PDQ:
bits that re-encoding, resizing and light edits keep. Nothing is matched by it any more.

A DCT hash (pHash's construction, made longer): the picture in grey, reduced to 32x32
pixels, goes through a two-dimensional DCT; each of its 192 lowest frequencies after the
mean gives one bit, set when the coefficient is above the median of its group. The first
64 (the coarse layout) are the part the index looks up; the next 128 (finer detail)
tell apart simple pictures whose layout alone is alike, such as one shape on a plain
background. JPEG quality, scaling, brightness and contrast move the coefficients a little
and their order relative to the median hardly at all, so copies land within a few bits
of each other while unrelated pictures differ in about half of them. Mirroring, heavy
crops and overlays move them a lot: those are not caught.

A picture with almost no detail (a flat colour, a faint gradient) gets no fingerprint:
its coefficients are noise around the median, and every such picture would match every
other. Pure Python on 32x32 values, about a millisecond a picture, and the same bits in
every process of every machine.
"""

from __future__ import annotations

import math
import operator
import statistics
from dataclasses import dataclass

from PIL import Image

COARSE_BITS = 64
FINE_BITS = 128
# The coarse part is looked up in the index a band at a time (multi-index hashing).
BANDS = 4
BAND_BITS = COARSE_BITS // BANDS
SIDE = 32
# Standard deviation of the 32x32 grey values below which a picture has too little detail.
FLAT = 2.0
# The lowest frequencies after the mean (0, 0), in zigzag order.
_FREQUENCIES = [
    pair
    for pair in sorted(
        ((u, v) for u in range(SIDE) for v in range(SIDE) if u + v <= 20),
        key=lambda pair: (pair[0] + pair[1], pair[0] if (pair[0] + pair[1]) % 2 else pair[1]),
    )
    if pair != (0, 0)
][: COARSE_BITS + FINE_BITS]
_COLUMNS = max(v for _, v in _FREQUENCIES) + 1
_COSINES = [
    [math.cos(math.pi * (2 * x + 1) * u / (2 * SIDE)) for x in range(SIDE)] for u in range(SIDE)
]


@dataclass(frozen=True)
class Print:
    """One picture's (or one frame's) fingerprint: coarse layout and finer detail."""

    coarse: int
    fine: int

    def similarity(self, other: Print) -> float:
        """1.0 for the same fingerprint, about 0.5 for unrelated pictures: the lesser of
        how alike the layouts and how alike the details are."""
        return min(
            1.0 - (self.coarse ^ other.coarse).bit_count() / COARSE_BITS,
            1.0 - (self.fine ^ other.fine).bit_count() / FINE_BITS,
        )

    def bands(self) -> tuple[int, ...]:
        """The coarse part cut into BANDS values of BAND_BITS bits, most significant first."""
        mask = (1 << BAND_BITS) - 1
        return tuple(
            self.coarse >> (BAND_BITS * (BANDS - 1 - band)) & mask for band in range(BANDS)
        )

    def to_bytes(self) -> bytes:
        """24 bytes: the coarse part, then the fine part, big-endian."""
        return self.coarse.to_bytes(8, "big") + self.fine.to_bytes(16, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Print:
        if len(data) != 24:
            raise ValueError(f"a fingerprint is 24 bytes, got {len(data)}")
        return cls(int.from_bytes(data[:8], "big"), int.from_bytes(data[8:], "big"))

    def hex(self) -> str:
        return self.to_bytes().hex()

    @classmethod
    def from_hex(cls, text: str) -> Print:
        return cls.from_bytes(bytes.fromhex(text))


def of(image: Image.Image) -> Print | None:
    """The fingerprint of a picture as viewers see it, or None when it has too little detail."""
    grey = image.convert("L") if image.mode != "L" else image
    # Averaged over whole areas: the same 32x32 values whatever size the copy was saved at.
    small = grey.resize((SIDE, SIDE), Image.Resampling.BOX)
    pixels = list(small.tobytes())
    mean = sum(pixels) / len(pixels)
    if math.sqrt(sum((value - mean) ** 2 for value in pixels) / len(pixels)) < FLAT:
        return None
    rows = [pixels[start : start + SIDE] for start in range(0, SIDE * SIDE, SIDE)]
    # Separable DCT: each row transformed for the few columns needed, then those columns.
    transformed = [[_dot(row, _COSINES[v]) for v in range(_COLUMNS)] for row in rows]
    coefficients = [_dot([row[v] for row in transformed], _COSINES[u]) for u, v in _FREQUENCIES]
    return Print(
        _bits(coefficients[:COARSE_BITS]),
        _bits(coefficients[COARSE_BITS:]),
    )


def _dot(values: list[int] | list[float], weights: list[float]) -> float:
    # Summed in one fixed order: the same bits on every machine with IEEE doubles.
    return float(sum(map(operator.mul, values, weights)))


def _bits(coefficients: list[float]) -> int:
    median = statistics.median(coefficients)
    value = 0
    for coefficient in coefficients:
        value = value << 1 | (coefficient > median)
    return value


def within(minimum_similarity: float) -> int:
    """The most coarse bits that may differ in a fingerprint at least this similar."""
    return math.floor((1.0 - minimum_similarity) * COARSE_BITS + 1e-9)
