"""The Redis store's index of fingerprints: a picture's record, one hash per slot whose
fields are slot values holding the entries of every judged frame (and one per slot for the
rotations and mirrors of rejecting frames), the links to duplicates, and the removal of
the former fingerprint's index (`migrate-store`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from thumbor_rekognition import stores
from thumbor_rekognition.fingerprint import BAND_BITS, BYTES, Print
from thumbor_rekognition.stores.redis_client import (
    Client,
    _glob_escape,
    _text,
)
from thumbor_rekognition.stores.redis_shared import SharedState

if TYPE_CHECKING:
    pass


def _field(value: int) -> str:
    """A slot value as the field of its slot's hash."""
    return f"{value:0{BAND_BITS // 4}x}"


def _fingerprint_record(body: Any) -> tuple[dict[int, Print], list[int]]:
    """A picture's fingerprints and the frames that reject it, from its record (or none)."""
    if not body:
        return {}, []
    data = json.loads(body)
    prints = {int(frame): Print.from_hex(text) for frame, text in data.get("prints", {}).items()}
    return prints, [int(frame) for frame in data.get("rejecting", [])]


def _entries(
    sha256: str, prints: Mapping[int, Print], rejecting: Collection[int]
) -> set[tuple[str, int, str, bytes]]:
    """A picture's entries in the indexes: (which index, slot, slot value's field, entry),
    'pdqx' of every frame's own hash, 'pdqr' of every rotation and mirror of a rejecting
    frame's."""
    return {
        ("pdqr" if among_rejecting else "pdqx", slot, _field(value), entry)
        for among_rejecting, slot, value, entry in stores.index_entries(sha256, prints, rejecting)
    }


# One entry of a slot's hash added ('1') or removed ('0'): entries are compared whole,
# 65 bytes at a time, so that no entry is mistaken for the bytes across two others.
_INDEX_ENTRY = """
local entries = redis.call('HGET', KEYS[1], ARGV[1]) or ''
local size = string.len(ARGV[2])
for start = 1, string.len(entries), size do
  if string.sub(entries, start, start + size - 1) == ARGV[2] then
    if ARGV[3] == '1' then return 0 end
    local rest = string.sub(entries, 1, start - 1) .. string.sub(entries, start + size)
    if rest == '' then
      redis.call('HDEL', KEYS[1], ARGV[1])
    else
      redis.call('HSET', KEYS[1], ARGV[1], rest)
    end
    return 1
  end
end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], entries .. ARGV[2])
  return 1
end
return 0
"""


class FingerprintIndex(SharedState):
    """Fingerprints, the index of judged pictures by band, and links to duplicates."""

    # Every command reads or writes one key: a picture's record
    # 'pdq:{<sha256>}' (JSON: its fingerprints by frame, each its PDQ hash and its
    # variants', and the frames that reject it), one hash per slot of the index,
    # 'pdqx:<slot>' (field: the slot's value in hex; value: its entries end to end, each
    # the 32-byte PDQ hash, the 32-byte content hash, and a byte, 1 when the frame rejects
    # its picture), one hash per slot of the index of rejecting frames, 'pdqr:<slot>'
    # (the same entries, of each rotation and mirror of a frame that rejects its picture),
    # and 'dup:{<sha256>}' (a set: keys of its duplicates' decisions).
    # Sixteen hashes rather than a set per slot value: a lookup is sixteen HMGETs, not
    # some two thousand commands, and an entry costs its 65 bytes and no key of its own.
    # On a cluster the sixteen hashes spread over the nodes, and each picture's record
    # and set sit on the slot of its hash. The former fingerprint's keys ('fp:{...}',
    # 'fpx:<band>', 'fpi:<band>') are read by nothing; `migrate-store` deletes them.

    def _band_key(self, band: int, among: str = "pdqx") -> str:
        return f"{self.prefix}{among}:{band}"

    def _record_key(self, sha256: str) -> str:
        return self.prefix + "pdq:{" + sha256 + "}"

    def put_fingerprints(
        self, sha256: str, prints: Mapping[int, Print], rejecting: Collection[int]
    ) -> None:
        with self._call() as client:
            self._put_fingerprints(client, sha256, prints, rejecting)

    def _put_fingerprints(
        self,
        client: Client,
        sha256: str,
        prints: Mapping[int, Print],
        rejecting: Collection[int],
        old: set[tuple[str, int, str, bytes]] | None = None,
    ) -> None:
        record = self._record_key(sha256)
        if old is None:
            old = _entries(sha256, *_fingerprint_record(client.get(record)))
        new = _entries(sha256, prints, rejecting)
        # The index first, the record last: a call cut short leaves the record naming
        # what the index held before, and the next call mends both. An entry left over
        # names a picture whose decision lookups read anyway, and so is never believed.
        changes = [
            (self._band_key(band, among), field_, entry, "0")
            for among, band, field_, entry in old - new
        ]
        changes += [
            (self._band_key(band, among), field_, entry, "1")
            for among, band, field_, entry in new - old
        ]
        self._on_nodes(
            client,
            [(key, "eval", (_INDEX_ENTRY, 1, key, *rest)) for key, *rest in changes],
        )
        client.set(
            record,
            json.dumps(
                {
                    "prints": {str(frame): p.hex() for frame, p in sorted(prints.items())},
                    "rejecting": sorted(frame for frame in rejecting if frame in prints),
                },
                separators=(",", ":"),
            ),
        )

    def fingerprints(self, sha256: str) -> dict[int, Print]:
        with self._call() as client:
            prints, _ = _fingerprint_record(client.get(self._record_key(sha256)))
        return prints

    def indexed_near(
        self,
        probes: Sequence[Collection[int]],
        close: Callable[[int], bool],
        rejecting_only: bool = False,
    ) -> list[stores.Indexed]:
        among = "pdqr" if rejecting_only else "pdqx"
        asked = [
            (self._band_key(band, among), sorted(values))
            for band, values in enumerate(probes)
            if values
        ]
        if not asked:
            return []
        with self._call() as client:
            answers = self._on_nodes(
                client,
                [
                    (key, "hmget", (key, [_field(value) for value in values]))
                    for key, values in asked
                ],
            )
        kept = {
            entries[start : start + stores.ENTRY_BYTES]
            for answer in answers
            for entries in answer
            if entries
            for start in range(0, len(entries), stores.ENTRY_BYTES)
            if close(int.from_bytes(entries[start : start + BYTES], "big"))
        }
        return [stores.indexed(entry) for entry in kept]

    def link_duplicate(self, original: str, key: str, linked: bool = True) -> None:
        with self._call() as client:
            if linked:
                client.sadd(self.prefix + "dup:{" + original + "}", key)
            else:
                client.srem(self.prefix + "dup:{" + original + "}", key)

    def duplicates_of(self, original: str) -> list[str]:
        with self._call() as client:
            keys = client.smembers(self.prefix + "dup:{" + original + "}")
        return sorted(_text(key) for key in keys)

    def _drop_former_fingerprints(self, client: Client) -> int:
        """Delete the former fingerprint's records and index (formats 2 and 3 of the
        index: 'fp:{<sha256>}', 'fpx:<band>', 'fpi:<band>'); how many records were deleted.
        Nothing reads them any more; each picture's PDQ fingerprints come from `backfill
        --fingerprints` or its next judgement."""
        deleted = 0
        for name in client.scan_iter(_glob_escape(self.prefix + "fp:{") + "*", 1000):
            deleted += int(client.delete(name))
        for band in range(4):
            client.delete(f"{self.prefix}fpx:{band}")
            client.delete(f"{self.prefix}fpi:{band}")
        return deleted
