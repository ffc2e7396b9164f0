"""An in-memory index of PDQ hashes: the nearest within a distance, at millions of hashes.

Multi-index hashing (pdq/README-MIH.md in facebook/ThreatExchange): a hash is 16 slots of
16 bits. Two hashes at most d bits apart have a slot at most d // 16 bits apart (were
every slot d // 16 + 1 apart, they would be more than d apart), so a lookup probes, in
each slot, the values within d // 16 bits of the query's (17 values at Meta's 31 bits),
and measures only the hashes found there.

Each slot is a counting sort of the hashes by their value in it: the positions of the
hashes, grouped by slot value, and where each value's group starts (a table of 65,536
starts a slot). A lookup is then a handful of numpy operations whatever the number of
queries and probes: the starts of every probe of every slot of every variant in one
gather, every position found in another, and the candidates measured all at once
(XOR and popcount on four 64-bit words). No sorting, no search and no Python loop per
probe or candidate; what a lookup allocates is its own candidates (some 33,000 at a
million random hashes for 8 variants, a few MB of temporary arrays, freed at once; numpy
arrays are not followed by the garbage collector). The index holds 32 bytes a hash (the
hash) and 64 (its position in each of the 16 slots), plus 4 MiB of starts. Few hashes are
measured all at once instead: below SMALL, that is faster.
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
from numpy.typing import NDArray

SLOTS = 16
SLOT_BITS = 16
_VALUES = 1 << SLOT_BITS
# Below this many hashes, every one is measured.
SMALL = 20_000
# Hashes measured at once: bounds the temporary arrays (queries x this x 32 bytes).
_CHUNK = 65_536

Words = NDArray[np.uint64]


def packed(values: list[int]) -> Words:
    """Hashes as rows of four 64-bit words, for numpy to compare."""
    data = b"".join(value.to_bytes(32, "big") for value in values)
    return np.frombuffer(data, dtype=">u8").astype(np.uint64).reshape(len(values), 4)


@cache
def _masks(radius: int) -> NDArray[np.int64]:
    """Every 16-bit value with at most `radius` bits set: what a probe XORs a slot with."""
    return np.array(
        [
            sum(1 << bit for bit in bits)
            for flipped in range(radius + 1)
            for bits in itertools.combinations(range(SLOT_BITS), flipped)
        ],
        dtype=np.int64,
    )


# Where each slot's values begin among the groups of every slot.
_SLOT_BASE = np.arange(SLOTS, dtype=np.int64)[:, None] * _VALUES


class PdqIndex:
    """Hashes (rows of four words) and their slots, looked up by distance."""

    def __init__(self, words: Words) -> None:
        self.words = np.ascontiguousarray(words, dtype=np.uint64)
        count = len(self.words)
        kind = np.int32 if count * SLOTS < 2**31 else np.int64
        # starts[slot * 65536 + value] .. starts[... + 1]: the group of that slot value.
        self._starts: NDArray[np.signedinteger] = np.zeros(1, dtype=kind)
        self._positions: NDArray[np.signedinteger] = np.zeros(0, dtype=kind)
        if count >= SMALL:
            slots = self.words.view(np.uint16).reshape(count, SLOTS)
            sizes = np.empty(SLOTS * _VALUES, dtype=np.int64)
            positions = np.empty(SLOTS * count, dtype=kind)
            for slot in range(SLOTS):
                values = slots[:, slot]
                sizes[slot * _VALUES : (slot + 1) * _VALUES] = np.bincount(
                    values, minlength=_VALUES
                )
                # A stable sort of 16-bit values is a radix sort: linear in the hashes.
                positions[slot * count : (slot + 1) * count] = np.argsort(values, kind="stable")
            starts = np.zeros(SLOTS * _VALUES + 1, dtype=kind)
            np.cumsum(sizes, out=starts[1:])
            self._starts, self._positions = starts, positions

    def __len__(self) -> int:
        return len(self.words)

    @property
    def nbytes(self) -> int:
        """The memory the index holds, hashes included."""
        return int(self.words.nbytes + self._starts.nbytes + self._positions.nbytes)

    def nearest(self, queries: Words, within: int) -> tuple[int, int] | None:
        """The position of the hash nearest any of the queries (a picture's variants), and
        its distance, when one is at most `within` bits away."""
        if not len(self.words) or not len(queries):
            return None
        queries = np.ascontiguousarray(queries, dtype=np.uint64)
        if len(self._positions):
            asked, positions = self._candidates(queries, within)
            if not len(positions):
                return None
            # Each candidate measured against the query whose slot found it only. take()
            # rather than indexing: numpy gathers whole rows with it several times faster.
            differing = np.take(queries, asked, axis=0)
            differing ^= np.take(self.words, positions, axis=0)
            apart = _bits_set(differing)
            least = int(apart.argmin())
            if int(apart[least]) > within:
                return None
            return int(positions[least]), int(apart[least])
        best: tuple[int, int] | None = None
        for start in range(0, len(self.words), _CHUNK):
            found = _least(queries, self.words[start : start + _CHUNK], within)
            if found is not None and (best is None or found[1] < best[1]):
                best = (start + found[0], found[1])
        return best

    def _candidates(
        self, queries: Words, within: int
    ) -> tuple[NDArray[np.intp], NDArray[np.signedinteger]]:
        """The hashes sharing a slot within within // 16 bits of a query's: the query
        (its row) and the hash (its position) of each, repeats included."""
        masks = _masks(within // SLOTS)
        slots = queries.view(np.uint16).reshape(len(queries), SLOTS, 1).astype(np.int64)
        # Every probe of every slot of every query: (queries, slots, masks), flattened.
        groups = ((slots ^ masks) + _SLOT_BASE).ravel()
        first = self._starts[groups]
        lengths = self._starts[groups + 1] - first
        total = int(lengths.sum())
        if not total:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=self._positions.dtype)
        # Every position of every run [first, first + length), in one array.
        ends = np.cumsum(lengths)
        offsets = np.repeat(first - ends + lengths, lengths)
        offsets += np.arange(total, dtype=offsets.dtype)
        per_query = SLOTS * len(masks)
        asked = np.repeat(np.arange(len(groups)) // per_query, lengths)
        return asked, self._positions[offsets]


def _bits_set(rows: Words) -> NDArray[np.uint32]:
    """The bits set in each row of four words. The four popcounts (each at most 64) are
    the bytes of one 32-bit value, added in its two halves then across: summing them
    over an axis of four is several times slower in numpy."""
    counts = np.bitwise_count(rows).view(np.uint32).ravel()
    pairs = (counts & 0x00FF00FF) + (counts >> 8 & 0x00FF00FF)
    result: NDArray[np.uint32] = (pairs & 0xFFFF) + (pairs >> 16)
    return result


def _least(queries: Words, hashes: Words, within: int) -> tuple[int, int] | None:
    distances = np.bitwise_count(queries[:, None, :] ^ hashes[None, :, :]).sum(axis=2).min(axis=0)
    position = int(distances.argmin())
    distance = int(distances[position])
    if distance > within:
        return None
    return position, distance
