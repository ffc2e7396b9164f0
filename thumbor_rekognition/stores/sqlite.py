"""Decisions in one SQLite file, shared by every Thumbor process of a machine.

WAL mode lets readers run while one process writes; each process opens its own
connection after fork. Writes that must not race (an automatic decision landing on a
manual one) run inside ``BEGIN IMMEDIATE``. Every change is also written to a change log
that each process polls, so an override made in one process reaches the others within
a tenth of a second.

One row per picture holds its decision as a compact record (``records``), its history
and its recorded paths, in a table without rowids keyed by the picture's key; the
content-hash index keeps 8 bytes of the hash, and only pictures that are not approved
are indexed by status, in key order and by time (approved ones are listed by reading
the table in key order).
Fingerprints, links to duplicates and shared values have tables of their own.

The layers below the decisions: ``sqlite_schema`` (the file's schema and formats),
``sqlite_shared`` (the connection, counters, leases, the outbox), ``sqlite_index`` (the
fingerprint index and duplicates).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from thumbor_rekognition import rules, stores
from thumbor_rekognition.decision import Decision, Event, Status
from thumbor_rekognition.stores import records, sqlite_schema
from thumbor_rekognition.stores.sqlite_index import FingerprintIndex
from thumbor_rekognition.stores.sqlite_schema import HASH_PREFIX

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

POLL_SECONDS = 0.1
_STATUS_NUMBERS = {Status.APPROVED: 0, Status.REJECTED: 1, Status.PENDING: 2}
_PAGE = "SELECT key, record FROM pictures WHERE key > ? AND record IS NOT NULL ORDER BY key LIMIT ?"
# Most decisions are approved: read in key order, skipping the others.
_PAGE_APPROVED = (
    "SELECT key, record FROM pictures WHERE key > ? AND status = 0 ORDER BY key LIMIT ?"
)
# Through the partial index of the statuses other than approved ('status > 0').
_PAGE_WAITING = (
    "SELECT key, record FROM pictures WHERE status = ? AND status > 0 AND key > ? "
    "ORDER BY key LIMIT ?"
)

# Through the partial index by time of the same statuses.
_PAGE_BY_TIME = (
    "SELECT key, record FROM pictures WHERE status = ? AND status > 0 AND (changed, key) > (?, ?) "
    "ORDER BY changed, key LIMIT ?"
)


class Store(FingerprintIndex):
    """The embedded default decision store."""

    # Each process polls the change log every POLL_SECONDS: two polls leave room for one
    # that was under way.
    propagation_seconds = 2 * POLL_SECONDS

    def __init__(self, settings: Settings | None = None, *, path: str | None = None) -> None:
        super().__init__(settings, path=path)
        self._changes = stores.ChangeFeed(self._poll)

    def get(self, key: str) -> Decision | None:
        with self._cursor() as cursor:
            row = cursor.execute(
                "SELECT record FROM pictures WHERE key = ? AND record IS NOT NULL", (key,)
            ).fetchone()
        return records.decode_decision(key, row[0]) if row else None

    def find_all_by_hash(self, sha256: str) -> list[Decision]:
        digest = records.raw_sha(sha256)
        if not digest:
            return []
        with self._cursor() as cursor:
            rows = cursor.execute(
                "SELECT key, record FROM pictures WHERE sha = ? ORDER BY key",
                (digest[:HASH_PREFIX],),
            ).fetchall()
        decisions = (records.decode_decision(key, record) for key, record in rows)
        return [decision for decision in decisions if decision.sha256 == sha256]

    def save(self, decision: Decision, event: Event) -> Decision:
        with self._cursor(write=True) as cursor:
            row = cursor.execute(
                "SELECT record, history, paths FROM pictures WHERE key = ?", (decision.key,)
            ).fetchone()
            old, history, paths = row if row else (None, b"", b"")
            current = records.decode_decision(decision.key, old) if old else None
            stands = rules.settle(current, decision)
            if stands is current:
                return current
            event = rules.noted(stands, decision, event)
            decision = stands
            record = records.encode_decision(decision)
            # The picture is judged: whoever held the right to judge it no longer needs it.
            cursor.execute("DELETE FROM leases WHERE name = ?", ("judge:" + decision.sha256,))
            cursor.execute(
                "INSERT OR REPLACE INTO pictures "
                "(key, sha, status, record, history, paths, changed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    decision.key,
                    records.sha_of(record)[:HASH_PREFIX] or None,
                    records.status_of(record),
                    record,
                    history + records.join([records.encode_event(event)]),
                    paths,
                    sqlite_schema.changed_of(decision),
                ),
            )
            self._tally(cursor, current, -1)
            self._tally(cursor, decision, 1)
            self._changed(cursor, decision.key)
            recorded = [records.decode_path(decision.key, p) for p in records.split(paths or b"")]
            self._enqueue(
                cursor, decision.key, self.announcements(current, decision, event, recorded)
            )
        return records.decode_decision(decision.key, record)

    def delete(self, key: str, event: Event) -> bool:
        with self._cursor(write=True) as cursor:
            row = cursor.execute(
                "SELECT record, history, paths FROM pictures WHERE key = ? AND record IS NOT NULL",
                (key,),
            ).fetchone()
            if row is None:
                return False
            cursor.execute(
                "UPDATE pictures SET sha = NULL, status = NULL, record = NULL, changed = NULL, "
                "history = ? "
                "WHERE key = ?",
                (row[1] + records.join([records.encode_event(event)]), key),
            )
            previous = records.decode_decision(key, row[0])
            self._tally(cursor, previous, -1)
            self._changed(cursor, key)
            recorded = [records.decode_path(key, p) for p in records.split(row[2] or b"")]
            self._enqueue(cursor, key, self.announcements(previous, None, event, recorded))
        return True

    @staticmethod
    def _tally(cursor: sqlite3.Cursor, decision: Decision | None, amount: int) -> None:
        if decision is None:
            return
        cursor.execute(
            "INSERT INTO tallies (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (f"{decision.status.value}.{decision.source.value}", amount),
        )

    def _changed(self, cursor: sqlite3.Cursor, key: str) -> None:
        cursor.execute(
            "INSERT INTO changes (key, sender, at) VALUES (?, ?, ?)",
            (key, self._changes.sender, time.time()),
        )

    def subscribe(self, changed: Callable[[str | None], None]) -> None:
        """Poll the change log of the file: other processes' changes arrive within 0.1 s."""
        self._changes.subscribe(changed)

    def _poll(self) -> None:
        last = None
        failing = False
        pruned = time.monotonic()
        for _ in self._changes.ticks(POLL_SECONDS):
            try:
                with self._cursor() as cursor:
                    if last is None:
                        row = cursor.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
                        last = int(row[0])
                        continue
                    rows = cursor.execute(
                        "SELECT seq, key, sender FROM changes WHERE seq > ? ORDER BY seq",
                        (last,),
                    ).fetchall()
            except stores.StoreUnavailable:
                failing = True
                continue
            if failing:
                failing = False
                self._changes.notify(None)
            for seq, key, sender in rows:
                last = seq
                if sender != self._changes.sender:
                    self._changes.notify(key)
            if time.monotonic() - pruned > 600:
                pruned = time.monotonic()
                self._prune()

    def _prune(self) -> None:
        with contextlib.suppress(stores.StoreUnavailable), self._cursor(write=True) as cursor:
            cursor.execute("DELETE FROM changes WHERE at < ?", (time.time() - 3600,))

    def history(self, key: str) -> list[Event]:
        with self._cursor() as cursor:
            row = cursor.execute("SELECT history FROM pictures WHERE key = ?", (key,)).fetchone()
        return [records.decode_event(item) for item in records.split(row[0] if row else b"")]

    def page(
        self, status: Status | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Decision], str | None]:
        if limit < 1:
            raise ValueError(f"page limit must be at least 1, got {limit}")
        arguments: list[object]
        if status is None:
            query, arguments = _PAGE, [cursor or ""]
        elif status is Status.APPROVED:
            query, arguments = _PAGE_APPROVED, [cursor or ""]
        else:
            query, arguments = _PAGE_WAITING, [_STATUS_NUMBERS[status], cursor or ""]
        with self._cursor() as db:
            rows = db.execute(query, [*arguments, limit + 1]).fetchall()
        page = [records.decode_decision(key, record) for key, record in rows[:limit]]
        next_cursor = rows[limit - 1][0] if len(rows) > limit else None
        return page, next_cursor

    def page_by_time(
        self, status: Status, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Decision], str | None]:
        stores.check_timed(status, limit)
        changed, key = stores.split_time_cursor(cursor) if cursor else ("-1", "")
        with self._cursor() as db:
            rows = db.execute(
                _PAGE_BY_TIME, (_STATUS_NUMBERS[status], int(changed), key, limit + 1)
            ).fetchall()
        page = [records.decode_decision(key, record) for key, record in rows[:limit]]
        next_cursor = stores.time_cursor(page[-1]) if len(rows) > limit else None
        return page, next_cursor

    def counts(self) -> dict[str, int]:
        with self._cursor() as cursor:
            rows = cursor.execute("SELECT name, value FROM tallies WHERE value != 0").fetchall()
        counts: dict[str, int] = {}
        for name, value in rows:
            status = name.split(".")[0]
            counts[status] = counts.get(status, 0) + value
            counts[name] = value
        return counts

    def add_results(self, key: str, paths: list[str]) -> None:
        if not paths:
            return
        with self._cursor(write=True) as cursor:
            row = cursor.execute("SELECT paths FROM pictures WHERE key = ?", (key,)).fetchone()
            recorded = list(records.split(row[0])) if row else []
            known = set(recorded)
            for path in paths:
                item = records.encode_path(key, path)
                if item not in known:
                    known.add(item)
                    recorded.append(item)
            cursor.execute(
                "INSERT INTO pictures (key, paths) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET paths = excluded.paths",
                (key, records.join(recorded)),
            )

    def results(self, key: str) -> list[str]:
        with self._cursor() as cursor:
            row = cursor.execute("SELECT paths FROM pictures WHERE key = ?", (key,)).fetchone()
        return [records.decode_path(key, item) for item in records.split(row[0] if row else b"")]

    def drop_results(self, key: str) -> None:
        with self._cursor(write=True) as cursor:
            cursor.execute("UPDATE pictures SET paths = x'' WHERE key = ?", (key,))

    def migrate(self) -> int:
        """Convert a file of the previous format (JSON documents in a 'decisions' table,
        history and results in tables of their own) in one transaction."""
        return sqlite_schema.migrate(self.path)

    def close(self) -> None:
        self._changes.closed.set()
        super().close()
