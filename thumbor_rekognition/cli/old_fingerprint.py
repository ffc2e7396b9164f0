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
other. Computed on 32x32 values with numpy, whose running sums (cumsum) add in the same
order as a plain loop: the same bits in every process of every machine, and the same as
the pure-Python loop that computed them before (about 2 ms a picture; now about a fifth
of that).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
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
_COSINES = np.array(
    [[math.cos(math.pi * (2 * x + 1) * u / (2 * SIDE)) for x in range(SIDE)] for u in range(SIDE)]
)
_ROWS_OF = np.array([u for u, _ in _FREQUENCIES])
_COLUMNS_OF = np.array([v for _, v in _FREQUENCIES])

_Floats = NDArray[np.float64]


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
    pixels = np.frombuffer(small.tobytes(), dtype=np.uint8).astype(np.float64)
    mean = _sum(pixels) / pixels.size
    if math.sqrt(_sum((pixels - mean) ** 2) / pixels.size) < FLAT:
        return None
    rows = pixels.reshape(SIDE, SIDE)
    # Separable DCT: each row transformed for the few columns needed, then those columns.
    # transformed[y, v] = sum over x of rows[y, x] * cos(v, x)
    transformed = _sum(rows[:, None, :] * _COSINES[None, :_COLUMNS, :])
    # coefficient (u, v) = sum over y of transformed[y, v] * cos(u, y)
    coefficients = _sum(transformed[:, _COLUMNS_OF].T * _COSINES[_ROWS_OF]).tolist()
    return Print(
        _bits(coefficients[:COARSE_BITS]),
        _bits(coefficients[COARSE_BITS:]),
    )


def _sum(values: NDArray[Any]) -> _Floats:
    """Sums along the last axis, added one after the other from the first: the order of
    a plain loop, and so the same bits on every machine with IEEE doubles (numpy's sum
    adds pairwise, and Python's own sum compensates since 3.12)."""
    return np.cumsum(values, axis=-1, dtype=np.float64)[..., -1]


def _bits(coefficients: list[float]) -> int:
    median = statistics.median(coefficients)
    value = 0
    for coefficient in coefficients:
        value = value << 1 | (coefficient > median)
    return value


def within(minimum_similarity: float) -> int:
    """The most coarse bits that may differ in a fingerprint at least this similar."""
    return math.floor((1.0 - minimum_similarity) * COARSE_BITS + 1e-9)
