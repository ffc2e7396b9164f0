"""The in-memory PDQ index: multi-index hashing finds what measuring every hash finds."""

from __future__ import annotations

import random

from thumbor_rekognition.pdq_index import SMALL, PdqIndex, packed


def flipped(value: int, bits: int, rng: random.Random) -> int:
    for bit in rng.sample(range(256), bits):
        value ^= 1 << bit
    return value


def test_slots_find_the_same_nearest_hash_as_measuring_every_one() -> None:
    rng = random.Random(7)
    values = [rng.getrandbits(256) for _ in range(SMALL + 5000)]
    indexed = PdqIndex(packed(values))
    measured = PdqIndex(packed(values[: SMALL - 1]))
    queries = []
    for distance in (0, 1, 15, 16, 30, 31, 32, 40):
        position = rng.randrange(SMALL - 1)
        queries.append((position, distance, flipped(values[position], distance, rng)))

    for position, distance, query in queries:
        variants = packed([rng.getrandbits(256), query, rng.getrandbits(256)])

        found = indexed.nearest(variants, 31)
        expected = measured.nearest(variants, 31)

        assert found == expected
        if distance <= 31:
            assert found == (position, distance)
        else:
            assert found is None


def test_empty_index_finds_nothing() -> None:
    assert PdqIndex(packed([])).nearest(packed([0]), 31) is None


def test_distances_count_every_differing_bit_up_to_all_256() -> None:
    value = random.Random(11).getrandbits(256)
    indexed = PdqIndex(packed([value] * SMALL))

    found = indexed.nearest(packed([value ^ ((1 << 256) - 1)]), 256)

    assert found is not None
    assert found[1] == 256
    assert indexed.nearest(packed([value ^ 0b111]), 31) == (0, 3)
