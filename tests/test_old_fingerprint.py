"""Perceptual fingerprints: copies of a picture stay close, other pictures do not."""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Callable

import pytest
from PIL import Image, ImageDraw, ImageOps

from tests import pictures
from thumbor_rekognition.cli import old_fingerprint as fingerprint
from thumbor_rekognition.cli.old_fingerprint import Print


def print_of(image: Image.Image) -> Print:
    result = fingerprint.of(image)
    assert result is not None
    return result


def print_of_bytes(data: bytes) -> Print:
    return print_of(pictures.decoded(data))


@pytest.mark.parametrize("family", sorted(pictures.FAMILIES))
@pytest.mark.parametrize(
    "copy",
    [pictures.resized_jpeg, pictures.brighter, pictures.reencoded],
    ids=["resized-jpeg-q70", "6-percent-brighter", "jpeg-q45"],
)
def test_a_re_encoded_copy_is_at_least_0_9_similar(
    family: str, copy: Callable[[Image.Image], bytes]
) -> None:
    original = pictures.FAMILIES[family](7)

    similarity = print_of(original).similarity(print_of_bytes(copy(original)))

    assert similarity >= 0.9


def test_the_same_picture_at_another_size_has_nearly_the_same_fingerprint() -> None:
    original = pictures.busy(3)
    smaller = original.resize((320, 240), Image.Resampling.BILINEAR)

    assert print_of(original).similarity(print_of(smaller)) >= 0.95


def test_a_grey_copy_matches_as_the_fingerprint_reads_brightness_only() -> None:
    original = pictures.photo_like(5)

    assert print_of(original).similarity(print_of(original.convert("L"))) >= 0.95


@pytest.mark.parametrize("family", sorted(pictures.FAMILIES))
def test_unrelated_pictures_of_a_family_are_far_apart(family: str) -> None:
    one, other = pictures.FAMILIES[family](1), pictures.FAMILIES[family](2)

    assert print_of(one).similarity(print_of(other)) < 0.85


def test_a_mirrored_copy_is_not_caught() -> None:
    original = pictures.busy(11)

    mirrored = ImageOps.mirror(original)

    assert print_of(original).similarity(print_of(mirrored)) < 0.8


def test_an_overlay_over_a_third_of_the_picture_is_not_caught() -> None:
    original = pictures.busy(12)
    covered = original.copy()
    ImageDraw.Draw(covered).rectangle((0, 0, 640, 160), fill=(255, 255, 255))

    assert print_of(original).similarity(print_of(covered)) < 0.9


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (640, 480), (200, 30, 30)),
        Image.new("L", (50, 50), 0),
        Image.linear_gradient("L").resize((640, 480)).point(lambda value: 100 + value // 128),
    ],
    ids=["flat-colour", "flat-small", "faint-gradient"],
)
def test_a_picture_with_almost_no_detail_has_no_fingerprint(image: Image.Image) -> None:
    assert fingerprint.of(image) is None


def test_a_flat_picture_with_jpeg_noise_still_has_no_fingerprint() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 140, 200)).save(buffer, "JPEG", quality=20)

    assert fingerprint.of(pictures.decoded(buffer.getvalue())) is None


def test_every_fingerprint_sets_half_of_each_part_so_distances_are_even() -> None:
    result = print_of(pictures.text_like(4))

    assert result.coarse.bit_count() == fingerprint.COARSE_BITS // 2
    assert result.fine.bit_count() == fingerprint.FINE_BITS // 2


def test_similarity_is_the_lesser_of_coarse_and_fine_agreement() -> None:
    base = Print(0, 0)

    coarse_apart = Print(0b1111, 0)
    fine_apart = Print(0, 0b1111_1111)

    assert base.similarity(base) == 1.0
    assert base.similarity(coarse_apart) == 1 - 4 / 64
    assert base.similarity(fine_apart) == 1 - 8 / 128


def test_print_survives_bytes_and_hex_and_cuts_into_four_bands() -> None:
    value = Print(0x0123_4567_89AB_CDEF, (1 << 127) | 5)

    assert Print.from_bytes(value.to_bytes()) == value
    assert Print.from_hex(value.hex()) == value
    assert value.bands() == (0x0123, 0x4567, 0x89AB, 0xCDEF)


def test_bytes_of_the_wrong_length_are_refused() -> None:
    with pytest.raises(ValueError, match="24 bytes"):
        Print.from_bytes(b"\x00" * 8)


@pytest.mark.parametrize(("similarity", "bits"), [(1.0, 0), (0.9, 6), (0.875, 8), (0.85, 9)])
def test_within_is_the_most_coarse_bits_apart_at_a_similarity(similarity: float, bits: int) -> None:
    assert fingerprint.within(similarity) == bits


def _plain_loop_print(image: Image.Image) -> tuple[int, int]:
    """The fingerprint as a plain Python loop computes it: each sum added in order."""
    small = image.convert("L").resize((fingerprint.SIDE, fingerprint.SIDE), Image.Resampling.BOX)
    pixels = list(small.tobytes())
    side = fingerprint.SIDE
    cosines = [
        [math.cos(math.pi * (2 * x + 1) * u / (2 * side)) for x in range(side)] for u in range(side)
    ]

    def dot(values: list[float], weights: list[float]) -> float:
        total = 0.0
        for value, weight in zip(values, weights, strict=True):
            total += value * weight
        return total

    rows = [
        [float(value) for value in pixels[start : start + side]]
        for start in range(0, side * side, side)
    ]
    transformed = [[dot(row, cosines[v]) for v in range(side)] for row in rows]
    coefficients = [
        dot([row[v] for row in transformed], cosines[u]) for u, v in fingerprint._FREQUENCIES
    ]

    def bits(values: list[float]) -> int:
        median = statistics.median(values)
        return int("".join("1" if value > median else "0" for value in values), 2)

    coarse = coefficients[: fingerprint.COARSE_BITS]
    return bits(coarse), bits(coefficients[fingerprint.COARSE_BITS :])


@pytest.mark.parametrize("family", sorted(pictures.FAMILIES))
@pytest.mark.parametrize("seed", range(5))
def test_the_bits_are_those_of_sums_added_in_order_as_stored_fingerprints_were(
    family: str, seed: int
) -> None:
    image = pictures.FAMILIES[family](seed)

    computed = print_of(image)

    assert (computed.coarse, computed.fine) == _plain_loop_print(image)
