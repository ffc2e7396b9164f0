"""PDQ: Meta's open 256-bit perceptual hash, the one hash lists are shared in.

A port to numpy of facebook/ThreatExchange's reference (pdq/cpp and pdq/python): luma,
two passes of Jarosz box filters sized to 1/128 of each side (a tent filter), sampled down
to 64x64, a DCT of which the 16x16 lowest frequencies after the first row and column
each give one bit, set when above their median. The quality (0..100) counts the 64x64
picture's significant gradients: below 50 a picture is too flat or too blurred for its
hash to mean much, and it gets none here. The eight rotations and mirrors of a picture
have hashes computed from the same 16x16 DCT by changing signs and transposing, so a
mirrored copy is found by its nearest variant (Meta's compute_dihedral).

Meta's threshold: two hashes at most 31 bits apart (of 256) are the same picture. The
``pdqhash`` package (Meta's C++ behind Python bindings) ships as a source archive that
needs a C++ compiler; this port keeps the plugin installable from wheels. It gives the
same bits as pdqhash, and agrees with the reference's test vectors within a few bits
(tests/test_pdq.py).

Hashes are ints whose 64-digit hex (most significant first) is the reference's own text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

BITS = 256
HEX_DIGITS = BITS // 4
# Meta's starting points (pdq/README.md).
MATCH_DISTANCE = 31
MIN_QUALITY = 50

_Floats = NDArray[np.floating[Any]]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_DCT: _Floats = math.sqrt(2.0 / 64.0) * np.cos(
    (math.pi / 2 / 64.0) * np.outer(np.arange(1, 17), 2 * np.arange(64) + 1)
)
# Signs that turn the DCT of a picture into that of its rotations and mirrors (the
# reference's dct16OriginalTo*): kept where the row (i) is odd, where the column (j) is,
# negated where their sum is odd.
_ODD_I = np.where(np.arange(16)[:, None] % 2 == 1, 1.0, -1.0) * np.ones((16, 16))
_ODD_J = _ODD_I.T.copy()
_EVEN_SUM = np.where(np.add.outer(np.arange(16), np.arange(16)) % 2 == 1, -1.0, 1.0)


@dataclass(frozen=True)
class Hash:
    """A PDQ hash, the quality of the picture it was computed from, and the hashes of
    the picture's rotations and mirrors (its own first; empty when not computed)."""

    value: int
    quality: int
    variants: tuple[int, ...] = ()

    def hex(self) -> str:
        return hex_of(self.value)

    def distance(self, other: int) -> int:
        """Bits apart from another hash: the least over this picture's variants, when known."""
        return min((value ^ other).bit_count() for value in self.variants or (self.value,))

    @property
    def usable(self) -> bool:
        """Whether the picture had detail enough for its hash to be matched."""
        return self.quality >= MIN_QUALITY


def parse(text: str) -> int:
    """A hash from its 64 hex digits; ValueError for anything else."""
    text = text.strip()
    if len(text) != HEX_DIGITS:
        raise ValueError(f"a PDQ hash is {HEX_DIGITS} hex digits, got {len(text)} characters")
    return int(text, 16)


def hex_of(value: int) -> str:
    return format(value, f"0{HEX_DIGITS}x")


def of(image: Image.Image) -> Hash:
    """The PDQ hash and quality of a picture (any mode; alpha is ignored), with its
    variants: the hashes of its 7 other rotations and mirrors, in the reference's order
    (original, rotate 90, 180, 270, flip x, flip y, flip +1, flip -1)."""
    dct, quality = _dct(image)
    variants = tuple(_bits(each) for each in _turned(dct))
    return Hash(variants[0], quality, variants)


def _dct(image: Image.Image) -> tuple[_Floats, int]:
    # Hashed at the size given, as Meta's pdqhash does (in float32, as its C++): the same
    # bits as it, where reducing the picture first moves up to a dozen. The plugin hands
    # over the picture it judges, at most MODERATION_ANALYSIS_MAX_SIDE a side (tens of ms at 1600).
    luma = _luma(image if image.mode == "RGB" else image.convert("RGB"))
    rows, columns = luma.shape
    across = _window(columns)
    down = _window(rows)
    for _ in range(2):
        luma = _box(luma.T, across).T
        luma = _box(luma, down)
    picked_rows = ((np.arange(64) + 0.5) * rows / 64).astype(int)
    picked_columns = ((np.arange(64) + 0.5) * columns / 64).astype(int)
    small = luma[np.ix_(picked_rows, picked_columns)]
    return _DCT @ small @ _DCT.T, _quality(small)


# Rows converted to floats at a time: the picture is never held as floats three times over.
_LUMA_ROWS = 128


def _luma(rgb: Image.Image) -> _Floats:
    """The luminance of an RGB picture in float32, computed a band of rows at a time."""
    width, height = rgb.size
    luma = np.empty((height, width), dtype=np.float32)
    for top in range(0, height, _LUMA_ROWS):
        band = rgb.crop((0, top, width, min(height, top + _LUMA_ROWS)))
        luma[top : top + band.height] = np.asarray(band, dtype=np.float32) @ _LUMA
    return luma


def _window(side: int) -> int:
    return (side + 127) // 128


def _box(values: _Floats, window: int) -> _Floats:
    """The reference's box1DFloat down the first axis: each value the mean of a window
    of `window` values around it (one more after it than before when even), cut short
    at the edges."""
    length = values.shape[0]
    ahead = (window + 2) // 2 - 1
    behind = window - ahead - 1
    sums = np.empty((length + 1, *values.shape[1:]), dtype=values.dtype)
    sums[0] = 0
    np.cumsum(values, axis=0, out=sums[1:])
    result = np.empty_like(values)
    inner = slice(behind, max(behind, length - ahead))
    # Into the result itself: no temporary the size of the picture.
    middle = result[inner]
    np.subtract(sums[behind + ahead + 1 : length + 1], sums[: length - ahead - behind], out=middle)
    middle /= window
    edges = np.r_[0 : min(behind, length), max(behind, length - ahead) : length]
    last = np.minimum(edges + ahead, length - 1) + 1
    first = np.maximum(edges - behind, 0)
    counts = (last - first).reshape(-1, *([1] * (values.ndim - 1)))
    result[edges] = (sums[last] - sums[first]) / counts
    return result


def _quality(small: _Floats) -> int:
    # Integer truncation as the reference: only significant gradients count.
    down = np.trunc((small[:-1, :] - small[1:, :]) * 100 / 255)
    across = np.trunc((small[:, :-1] - small[:, 1:]) * 100 / 255)
    total = int(np.abs(down).sum() + np.abs(across).sum())
    return min(100, total // 90)


def _turned(dct: _Floats) -> tuple[_Floats, ...]:
    return (
        dct,
        (dct * _ODD_J).T,  # rotate 90: B[j][i] = A[i][j], negated where j is even
        dct * _EVEN_SUM,  # rotate 180: negated where i + j is odd
        (dct * _ODD_I).T,  # rotate 270: transposed, negated where i is even
        dct * _ODD_I,  # flip x: negated where i is even
        dct * _ODD_J,  # flip y: negated where j is even
        dct.T,  # flip +1
        (dct * _EVEN_SUM).T,  # flip -1
    )


def _bits(dct: _Floats) -> int:
    flat = dct.ravel()
    # The reference's median (Torben's) is the lower of the two middle values.
    median = np.partition(flat, 127)[127]
    # Bit i of the hash is coefficient i: little-endian bytes of little-endian bits.
    return int.from_bytes(np.packbits(flat > median, bitorder="little").tobytes(), "little")
