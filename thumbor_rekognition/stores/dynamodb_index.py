"""The DynamoDB store's index of fingerprints: a picture's record ('K#'), one item per slot
value ('J#') holding the entries of every judged frame, the links to duplicates ('X#'),
and the removal of the former fingerprint's items (`migrate-store`)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from thumbor_rekognition import stores
from thumbor_rekognition.fingerprint import BAND_BITS, BYTES, Print
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

# Prefixes of the former fingerprint's items: its records ('P#') and its index ('I#').
# Nothing reads them; `migrate-store` deletes them.
_FORMER = ("P#", "I#")


def _band_pk(band: int, value: int) -> str:
    return f"J#{band}#{value:0{BAND_BITS // 4}x}"


def _index_entries(
    sha256: str, prints: Mapping[int, Print], rejecting: Collection[int]
) -> set[tuple[tuple[str, str], bytes]]:
    """The index entries of a picture's frames: (slot item's key, entry). Every frame's own
    hash is in its slot values' items 'i'; each rotation and mirror of a rejecting frame
    in items 'r' of the same slot values (the index of rejecting frames)."""
    return {
        ((_band_pk(slot, value), "r" if among_rejecting else "i"), entry)
        for among_rejecting, slot, value, entry in stores.index_entries(sha256, prints, rejecting)
    }


def _by_item(entries: set[tuple[tuple[str, str], bytes]]) -> dict[tuple[str, str], set[bytes]]:
    grouped: dict[tuple[str, str], set[bytes]] = {}
    for key, entry in entries:
        grouped.setdefault(key, set()).add(entry)
    return grouped


def _fingerprint_record(item: dict[str, Any] | None) -> tuple[dict[int, Print], list[int]]:
    """A picture's fingerprints and the frames that reject it, from its record (or none)."""
    if item is None:
        return {}, []
    prints = {
        int(frame): Print.from_bytes(bytes(value["B"]))
        for frame, value in item.get("f", {}).get("M", {}).items()
    }
    return prints, [int(frame) for frame in item.get("r", {}).get("NS", [])]


class FingerprintIndex(SharedState):
    """Fingerprints, the index of judged pictures by slot, and links to duplicates."""

    def put_fingerprints(
        self, sha256: str, prints: Mapping[int, Print], rejecting: Collection[int]
    ) -> None:
        pk = "K#" + sha256
        wanted = _index_entries(sha256, prints, rejecting)
        record: dict[str, Any] = {
            **_key(pk, "p"),
            "f": {"M": {str(frame): {"B": p.to_bytes()} for frame, p in sorted(prints.items())}},
        }
        frames = sorted({frame for frame in rejecting if frame in prints})
        if frames:
            record["r"] = {"NS": [str(frame) for frame in frames]}

        def attempt() -> bool:
            item = self._item(pk, "p")
            held = _index_entries(sha256, *_fingerprint_record(item))
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
        """Delete the former fingerprint's records and index items ('P#', 'I#'): nothing
        reads them, and each picture's PDQ fingerprints come from `backfill --fingerprints`
        or its next judgement. Returns how many records were deleted; can run while Thumbor
        serves, and again after an interruption."""
        deleted = 0
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :p) OR begins_with(pk, :i)",
            "ExpressionAttributeValues": {":p": _s(_FORMER[0]), ":i": _s(_FORMER[1])},
            "ProjectionExpression": "pk, sk",
        }
        while True:
            response = self._do("scan", **arguments)
            for found in response.get("Items", []):
                self._do(
                    "delete_item",
                    TableName=self.table,
                    Key=_key(found["pk"]["S"], found["sk"]["S"]),
                )
                deleted += str(found["pk"]["S"]).startswith(_FORMER[0])
            last = response.get("LastEvaluatedKey")
            if not last:
                return deleted
            arguments["ExclusiveStartKey"] = last

    def _change_index(self, action: str, entries: dict[tuple[str, str], set[bytes]]) -> None:
        for (pk, sk), values in sorted(entries.items()):
            self._do(
                "update_item",
                TableName=self.table,
                Key=_key(pk, sk),
                # DELETE of a set's last value removes the attribute; the item's keys stay.
                UpdateExpression=f"{action} e :entries",
                ExpressionAttributeValues={":entries": {"BS": sorted(values)}},
            )

    def fingerprints(self, sha256: str) -> dict[int, Print]:
        prints, _ = _fingerprint_record(self._item("K#" + sha256, "p"))
        return prints

    def indexed_near(
        self,
        probes: Sequence[Collection[int]],
        close: Callable[[int], bool],
        rejecting_only: bool = False,
    ) -> list[stores.Indexed]:
        sk = "r" if rejecting_only else "i"
        keys = [
            _key(_band_pk(band, value), sk)
            for band, values in enumerate(probes)
            for value in sorted(values)
        ]
        kept: set[bytes] = set()
        for item in self._read_all(keys, consistent=False, ProjectionExpression="e"):
            for entry in item.get("e", {}).get("BS", []):
                entry = bytes(entry)
                if len(entry) != stores.ENTRY_BYTES:
                    raise ValueError(
                        f"an index entry is {stores.ENTRY_BYTES} bytes, got {len(entry)}"
                    )
                if entry not in kept and close(int.from_bytes(entry[:BYTES], "big")):
                    kept.add(entry)
        return [stores.indexed(entry) for entry in sorted(kept)]

    def link_duplicate(self, original: str, key: str, linked: bool = True) -> None:
        if linked:
            self._do("put_item", TableName=self.table, Item=_index_item("X#" + original, key))
        else:
            self._do("delete_item", TableName=self.table, Key=_key("X#" + original, _name(key)))

    def duplicates_of(self, original: str) -> list[str]:
        return sorted(_indexed_key(item) for item in self._query("X#" + original))
