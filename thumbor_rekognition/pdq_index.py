"""An in-memory index of PDQ hashes: the nearest within a distance, at millions of hashes.

Multi-index hashing (pdq/README-MIH.md in facebook/ThreatExchange): a hash is 16 slots of
16 bits. Two hashes at most d bits apart have a slot at most d // 16 bits apart (were
every slot d // 16 + 1 apart, they would be more than d apart), so a lookup probes, in
each slot, the values within d // 16 bits of the query's (17 values at Meta's 31 bits),
and measures only the hashes found there. Each slot is kept as its values sorted, with
the positions they came from: 6 bytes a slot, 96 bytes a hash, plus the hash's own 32.
Few hashes are measured all at once instead: below SMALL, that is faster.
"""

from __future__ import annotations

import itertools

import numpy as np
from numpy.typing import NDArray

SLOTS = 16
SLOT_BITS = 16
# Below this many hashes, every one is measured.
SMALL = 20_000
# Hashes measured at once: bounds the temporary arrays (queries x this x 32 bytes).
_CHUNK = 65_536

Words = NDArray[np.uint64]


def packed(values: list[int]) -> Words:
    """Hashes as rows of four 64-bit words, for numpy to compare."""
    data = b"".join(value.to_bytes(32, "big") for value in values)
    return np.frombuffer(data, dtype=">u8").astype(np.uint64).reshape(len(values), 4)


class PdqIndex:
    """Hashes (rows of four words) and their slots, looked up by distance."""

    def __init__(self, words: Words) -> None:
        self.words = words
        self._sorted: list[NDArray[np.uint16]] = []
        self._order: list[NDArray[np.int32]] = []
        if len(words) >= SMALL:
            slots = np.ascontiguousarray(words).view(np.uint16).reshape(len(words), SLOTS)
            for slot in range(SLOTS):
                order = np.argsort(slots[:, slot], kind="stable").astype(np.int32)
                self._order.append(order)
                self._sorted.append(slots[order, slot])

    def __len__(self) -> int:
        return len(self.words)

    @property
    def nbytes(self) -> int:
        """The memory the index holds, hashes included."""
        slots = sum(values.nbytes for values in self._sorted)
        return int(self.words.nbytes + slots + sum(order.nbytes for order in self._order))

    def nearest(self, queries: Words, within: int) -> tuple[int, int] | None:
        """The position of the hash nearest any of the queries (a picture's variants), and
        its distance, when one is at most `within` bits away."""
        if not len(self.words) or not len(queries):
            return None
        if self._sorted:
            asked, positions = self._candidates(queries, within)
            if not len(positions):
                return None
            # Each candidate measured against the query whose slot found it only.
            apart = np.bitwise_count(queries[asked] ^ self.words[positions]).sum(axis=1)
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
    ) -> tuple[NDArray[np.intp], NDArray[np.int32]]:
        """The hashes sharing a slot within within // 16 bits of a query's: the query
        (its row) and the hash (its position) of each, repeats included."""
        radius = within // SLOTS
        masks = np.array(
            [
                sum(1 << bit for bit in bits)
                for flipped in range(radius + 1)
                for bits in itertools.combinations(range(SLOT_BITS), flipped)
            ],
            dtype=np.uint16,
        )
        slots = np.ascontiguousarray(queries).view(np.uint16).reshape(len(queries), SLOTS)
        rows = np.repeat(np.arange(len(queries)), len(masks))
        asked: list[NDArray[np.intp]] = []
        found: list[NDArray[np.int32]] = []
        for slot in range(SLOTS):
            probes = (slots[:, slot, None] ^ masks[None, :]).ravel()
            values = self._sorted[slot]
            first = np.searchsorted(values, probes, side="left")
            lengths = np.searchsorted(values, probes, side="right") - first
            total = int(lengths.sum())
            if not total:
                continue
            # Every position of every run [first, first + length), in one array.
            starts = np.repeat(first - np.cumsum(lengths) + lengths, lengths)
            found.append(self._order[slot][np.arange(total) + starts])
            asked.append(np.repeat(rows, lengths))
        if not found:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.int32)
        return np.concatenate(asked), np.concatenate(found)


def _least(queries: Words, hashes: Words, within: int) -> tuple[int, int] | None:
    distances = np.bitwise_count(queries[:, None, :] ^ hashes[None, :, :]).sum(axis=2).min(axis=0)
    position = int(distances.argmin())
    distance = int(distances[position])
    if distance > within:
        return None
    return position, distance
