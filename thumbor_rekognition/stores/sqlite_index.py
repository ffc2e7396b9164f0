"""The SQLite store's fingerprint index and links to duplicates: each frame's PDQ hash
under its 16 slots, and each rotation and mirror of a rejecting frame under its own, each
slot indexed with the hash beside it (a partial index for either)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from thumbor_rekognition import stores
from thumbor_rekognition.fingerprint import BANDS, Print
from thumbor_rekognition.stores import sqlite_schema
from thumbor_rekognition.stores.sqlite_shared import SharedState

_COLUMNS = ", ".join(f"s{slot}" for slot in range(BANDS))

# Band values per statement of an index lookup, well under SQLite's limit on parameters.
PROBES_PER_QUERY = 500


class FingerprintIndex(SharedState):
    """Fingerprints by band, and which pictures are duplicates of which."""

    def put_fingerprints(
        self, sha256: str, prints: Mapping[int, Print], rejecting: Collection[int]
    ) -> None:
        rows = [
            (
                sha256,
                frame,
                0,
                print_.to_bytes(),
                print_.entry(),
                int(frame in rejecting),
                *print_.bands(),
            )
            for frame, print_ in sorted(prints.items())
        ]
        rows += [
            (sha256, frame, variant, b"", print_.entry(), 1, *print_.bands())
            for frame, values in stores.rejecting_variants(prints, rejecting).items()
            for variant, print_ in enumerate(map(Print, values))
            if variant
        ]
        with self._cursor(write=True) as cursor:
            cursor.execute("DELETE FROM prints WHERE sha256 = ?", (sha256,))
            cursor.executemany(
                f"INSERT INTO prints (sha256, frame, variant, print, hash, rejecting, {_COLUMNS}) "  # noqa: S608 - column names only
                f"VALUES ({', '.join('?' * (6 + BANDS))})",
                rows,
            )

    def fingerprints(self, sha256: str) -> dict[int, Print]:
        with self._cursor() as cursor:
            rows = cursor.execute(
                "SELECT frame, print FROM prints WHERE sha256 = ? AND variant = 0 ORDER BY frame",
                (sha256,),
            ).fetchall()
        return {frame: Print.from_bytes(data) for frame, data in rows}

    def indexed_near(
        self,
        probes: Sequence[Collection[int]],
        close: Callable[[int], bool],
        rejecting_only: bool = False,
    ) -> list[stores.Indexed]:
        # Each slot has a partial index for either: frames' own hashes, rejecting frames'.
        index, rows_held = sqlite_schema.SLOT_INDEXES[rejecting_only]
        kept: set[int] = set()
        with self._cursor() as cursor:
            for band, values in enumerate(probes):
                ordered = sorted(values)
                for start in range(0, len(ordered), PROBES_PER_QUERY):
                    chunk = ordered[start : start + PROBES_PER_QUERY]
                    # Read from the slot's index alone (the hash is in it): the table is
                    # read only for the rows kept.
                    rows = cursor.execute(
                        f"SELECT rowid, hash FROM prints "  # noqa: S608 - band is 0..15
                        f"INDEXED BY {index}{band:d} "
                        f"WHERE {rows_held} AND s{band:d} IN ({', '.join('?' * len(chunk))})",
                        chunk,
                    ).fetchall()
                    kept.update(
                        rowid for rowid, value in rows if close(int.from_bytes(value, "big"))
                    )
            ordered_rows = sorted(kept)
            found = []
            for start in range(0, len(ordered_rows), PROBES_PER_QUERY):
                chunk = ordered_rows[start : start + PROBES_PER_QUERY]
                found += cursor.execute(
                    f"SELECT sha256, hash, rejecting FROM prints WHERE rowid IN "  # noqa: S608 - placeholders only
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
        return [
            stores.Indexed(sha256, Print.from_bytes(data), bool(rejecting))
            for sha256, data, rejecting in found
        ]

    def link_duplicate(self, original: str, key: str, linked: bool = True) -> None:
        with self._cursor(write=True) as cursor:
            if linked:
                cursor.execute(
                    "INSERT OR IGNORE INTO duplicates (original, key) VALUES (?, ?)",
                    (original, key),
                )
            else:
                cursor.execute(
                    "DELETE FROM duplicates WHERE original = ? AND key = ?", (original, key)
                )

    def duplicates_of(self, original: str) -> list[str]:
        with self._cursor() as cursor:
            rows = cursor.execute(
                "SELECT key FROM duplicates WHERE original = ? ORDER BY key", (original,)
            ).fetchall()
        return [key for (key,) in rows]
