"""PDQ hashes against the reference's test vectors (facebook/ThreatExchange, pdq/python
pdq_test.py; the pictures under tests/pdq_vectors are the reference's, BSD licence)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import pictures
from thumbor_rekognition import pdq, preparation

VECTORS = Path(__file__).parent / "pdq_vectors"
# Hashes of the reference's C++ and Python hashers for these pictures.
REFERENCE = {
    "q0122.jpg": "cfb2009ddd21c6dab0046a7745b5984757a8a4535b3377aea2591d32b33ff940",
    "q0291.jpg": "a0fe94f1e5cc1cc8dd855948498dc9243f7ca27336f036d7f212b74bc103c9a7",
    "q0746.jpg": "1049d96239e24d4dca2c55512b8bdb77425f4dbcf575a0a95555aaab5554aaaa",
    "q1050.jpg": "489db672e9190276d452aeab41eba20f02375fe4092d88defdf491a5c55c5f70",
    "q2821.jpg": "b150231ffae4710ffcf4f18bb574b109a576f14bb8543189f8743289f174b109",
    "wee.jpg": "6227401f601ff4ccafcc9fad4b0d95d371a2eb7265a3285234d228ca94deeb2d",
    "bridge-1-original.jpg": "d8f8f0cce0f4a84f0e370a22028f67f0b36e2ed596623e1d33e6b39c4e9c9b22",
}
# The reference's hashes of the bridge turned and mirrored (saved again as JPEG), in the
# order of pdq.Hash.variants.
BRIDGE_TURNED = (
    "d8f8f0cce0f4a84f0e370a22028f67f0b36e2ed596623e1d33e6b39c4e9c9b22",
    "38a50efd71c83f429013d68d0ffffc52e34e0e15ada952a9d29684214aa9e5af",
    "2dadda64b5a142e5d362209057da895ae63b8c7fc277b4b766b319361f893188",
    "a5f0a457248995e8c9065c275aaa54d8b61ba4bdf8fcfc0387c32f8b0bfc4f05",
    "d8f80f31e0f417b00e37f5dd028f980fb36ed12a9662c1e233e64c634e9c64dd",
    "0dad259bb1a1bd18d362576556da32a1e63b7380c2374b4866b3c6c91b89ce77",
    "f0a5e10271dcc0bd9c5309720fff018de34ef1e8ada9a956d2967ade1ea91a50",
    "69f05aa8a4996a17c146a2da5aaaab07b61b5b60f8fc07fc83c3d0740bfcb0fa",
)
# A port is correct when within 10 bits of the reference at quality 80 and up.
PORT_TOLERANCE = 10


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_hash_is_within_10_bits_of_the_reference(name: str) -> None:
    with Image.open(VECTORS / name) as image:
        hashed = pdq.of(image)

    assert hashed.quality >= 80
    assert (hashed.value ^ pdq.parse(REFERENCE[name])).bit_count() <= PORT_TOLERANCE
    assert hashed.hex() == pdq.hex_of(hashed.value)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_prepared_frame_carries_the_reference_hash(name: str) -> None:
    prepared = preparation.prepare((VECTORS / name).read_bytes())

    frame = prepared.frames[0].pdq
    assert frame is not None
    assert (frame.value ^ pdq.parse(REFERENCE[name])).bit_count() <= PORT_TOLERANCE
    assert prepared.pdq == {0: frame}


def test_variants_are_the_hashes_of_the_picture_turned_and_mirrored() -> None:
    with Image.open(VECTORS / "bridge-1-original.jpg") as image:
        hashed = pdq.of(image)

    assert len(hashed.variants) == 8
    for variant, reference in zip(hashed.variants, BRIDGE_TURNED, strict=True):
        assert (variant ^ pdq.parse(reference)).bit_count() <= pdq.MATCH_DISTANCE


def test_mirrored_copy_is_near_through_the_variants_only() -> None:
    original = pictures.photo_like(3)
    mirrored = original.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    hashed = pdq.of(original)
    copy = pdq.of(mirrored)

    assert (hashed.value ^ copy.value).bit_count() > pdq.MATCH_DISTANCE
    assert hashed.distance(copy.value) <= PORT_TOLERANCE


def test_flat_picture_gets_no_usable_hash() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), (120, 130, 140)).save(buffer, "PNG")

    prepared = preparation.prepare(buffer.getvalue())

    frame = prepared.frames[0].pdq
    assert frame is not None
    assert frame.quality < pdq.MIN_QUALITY
    assert prepared.pdq == {}


@pytest.mark.parametrize("text", ["", "abc", "z" * 64, "0" * 63])
def test_parse_refuses_what_is_not_64_hex_digits(text: str) -> None:
    with pytest.raises(ValueError):
        pdq.parse(text)


def test_agrees_with_meta_pdqhash_on_generated_pictures() -> None:
    # Meta's C++ behind Python bindings: built from source, so only where a compiler
    # installed it (CI does: .ci/run). On these pictures the two agree bit for bit.
    pdqhash = pytest.importorskip("pdqhash")
    for seed in range(20):
        image = pictures.photo_like(seed)
        bits, quality = pdqhash.compute(np.asarray(image))
        theirs = int("".join("1" if bit else "0" for bit in bits), 2)

        ours = pdq.of(image)

        assert abs(ours.quality - quality) <= 5
        assert (ours.value ^ theirs).bit_count() <= PORT_TOLERANCE
