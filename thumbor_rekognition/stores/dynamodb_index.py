"""The DynamoDB store's index of fingerprints: a picture's record ('P#'), one item per band
value ('I#') holding the entries of every judged frame, the links to duplicates ('X#'),
and the conversion of records of the earlier layout (`migrate-store`)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from thumbor_rekognition import stores
from thumbor_rekognition.fingerprint import BAND_BITS, Print
from thumbor_rekognition.stores.dynamodb_items import (
    _index_item,
    _indexed_key,
    _key,
    _n,
    _name,
    _Refused,
    _s,
    _unchanged,
    _version,
)
from thumbor_rekognition.stores.dynamodb_shared import SharedState

if TYPE_CHECKING:
    pass

# An index entry: a fingerprint (24 bytes), its picture's content hash (32 bytes), and
# whether the frame rejects its picture (1 byte). Records written before every judged
# picture was indexed ('i': the rejecting frames, no 'x') have entries of their
# rejecting frames only, without the last byte; `migrate-store` converts them.
_ENTRY = 57
_REJECTING_ENTRY = 56
# 'x' of a fingerprint record whose entries are in the current layout.
_INDEX_LAYOUT = "3"


def _band_pk(band: int, value: int) -> str:
    return f"I#{band}#{value:0{BAND_BITS // 4}x}"


def _index_entries(
    sha256: str, prints: Mapping[int, Print], rejecting: Collection[int]
) -> set[tuple[str, bytes]]:
    """The index entries of a picture's frames: (band item, entry)."""
    digest = bytes.fromhex(sha256)
    return {
        (_band_pk(band, value), print_.to_bytes() + digest + bytes([frame in rejecting]))
        for frame, print_ in prints.items()
        for band, value in enumerate(print_.bands())
    }


def _held_entries(sha256: str, item: dict[str, Any] | None) -> set[tuple[str, bytes]]:
    """The index entries a fingerprint record says the index holds."""
    prints, rejecting = _fingerprint_record(item)
    if item is None or "x" in item:
        return _index_entries(sha256, prints, rejecting)
    digest = bytes.fromhex(sha256)
    return {
        (_band_pk(band, value), print_.to_bytes() + digest)
        for frame, print_ in prints.items()
        if frame in rejecting
        for band, value in enumerate(print_.bands())
    }


def _by_item(entries: set[tuple[str, bytes]]) -> dict[str, set[bytes]]:
    grouped: dict[str, set[bytes]] = {}
    for pk, entry in entries:
        grouped.setdefault(pk, set()).add(entry)
    return grouped


def _fingerprint_record(item: dict[str, Any] | None) -> tuple[dict[int, Print], list[int]]:
    """A picture's fingerprints and the frames that reject it, from its record (or none);
    records of the earlier layout named them 'i' (the frames in the index)."""
    if item is None:
        return {}, []
    prints = {
        int(frame): Print.from_bytes(bytes(value["B"]))
        for frame, value in item.get("f", {}).get("M", {}).items()
    }
    frames = item.get("r", item.get("i", {}))
    return prints, [int(frame) for frame in frames.get("NS", [])]


class FingerprintIndex(SharedState):
    """Fingerprints, the index of judged pictures by band, and links to duplicates."""

    def put_fingerprints(
        self, sha256: str, prints: Mapping[int, Print], rejecting: Collection[int]
    ) -> None:
        pk = "P#" + sha256
        wanted = _index_entries(sha256, prints, rejecting)
        record: dict[str, Any] = {
            **_key(pk, "p"),
            "f": {"M": {str(frame): {"B": p.to_bytes()} for frame, p in sorted(prints.items())}},
            "x": _n(_INDEX_LAYOUT),
        }
        frames = sorted({frame for frame in rejecting if frame in prints})
        if frames:
            record["r"] = {"NS": [str(frame) for frame in frames]}

        def attempt() -> bool:
            item = self._item(pk, "p")
            held = _held_entries(sha256, item)
            # The index first, the record last, on the condition that no other put
            # landed meanwhile: the one that did not land reads that put's record and
            # moves the index from there, so the last record names what the index holds.
            self._change_index("DELETE", _by_item(held - wanted))
            self._change_index("ADD", _by_item(wanted - held))
            try:
                self._do(
                    "put_item",
                    TableName=self.table,
                    Item={**record, "v": _n(_version(item) + 1)},
                    **_unchanged(item),
                )
            except _Refused:
                return False
            return True

        self._retrying(attempt, f"keeping the fingerprints of {sha256}")

    def migrate(self) -> int:
        """Index every judged picture's kept fingerprints: records written when only the
        frames of rejected pictures were indexed get this layout's entries. Lookups read
        both meanwhile, so this can run while Thumbor serves."""
        converted = 0
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :p) AND sk = :sk AND attribute_not_exists(x)",
            "ExpressionAttributeValues": {":p": _s("P#"), ":sk": _s("p")},
            "ProjectionExpression": "pk",
        }
        while True:
            response = self._do("scan", **arguments)
            for found in response.get("Items", []):
                sha256 = str(found["pk"]["S"])[2:]
                prints, rejecting = _fingerprint_record(self._item("P#" + sha256, "p"))
                self.put_fingerprints(sha256, prints, rejecting)
                converted += 1
            last = response.get("LastEvaluatedKey")
            if not last:
                return converted
            arguments["ExclusiveStartKey"] = last

    def _change_index(self, action: str, entries: dict[str, set[bytes]]) -> None:
        for pk, values in sorted(entries.items()):
            self._do(
                "update_item",
                TableName=self.table,
                Key=_key(pk, "i"),
                # DELETE of a set's last value removes the attribute; the item's keys stay.
                UpdateExpression=f"{action} e :entries",
                ExpressionAttributeValues={":entries": {"BS": sorted(values)}},
            )

    def fingerprints(self, sha256: str) -> dict[int, Print]:
        prints, _ = _fingerprint_record(self._item("P#" + sha256, "p"))
        return prints

    def indexed_near(
        self, probes: Sequence[Collection[int]], close: Callable[[int], bool]
    ) -> list[stores.Indexed]:
        keys = [
            _key(_band_pk(band, value), "i")
            for band, values in enumerate(probes)
            for value in sorted(values)
        ]
        kept: set[bytes] = set()
        for item in self._read_all(keys, consistent=False, ProjectionExpression="e"):
            for entry in item.get("e", {}).get("BS", []):
                entry = bytes(entry)
                if len(entry) not in (_ENTRY, _REJECTING_ENTRY):
                    raise ValueError(f"an index entry is {_ENTRY} bytes, got {len(entry)}")
                if entry not in kept and close(int.from_bytes(entry[:8], "big")):
                    kept.add(entry)
        return [
            stores.Indexed(
                entry[24:56].hex(),
                Print.from_bytes(entry[:24]),
                len(entry) == _REJECTING_ENTRY or entry[56:] == b"\x01",
            )
            for entry in sorted(kept)
        ]

    def link_duplicate(self, original: str, key: str, linked: bool = True) -> None:
        if linked:
            self._do("put_item", TableName=self.table, Item=_index_item("X#" + original, key))
        else:
            self._do("delete_item", TableName=self.table, Key=_key("X#" + original, _name(key)))

    def duplicates_of(self, original: str) -> list[str]:
        return sorted(_indexed_key(item) for item in self._query("X#" + original))
