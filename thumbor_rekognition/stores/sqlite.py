"""Decisions in one SQLite file, shared by every Thumbor process of a machine.

WAL mode lets readers run while one process writes; each process opens its own
connection after fork. Writes that must not race (an automatic decision landing on a
manual one) run inside ``BEGIN IMMEDIATE``. Every change is also written to a change log
that each process polls, so an override made in one process reaches the others within
a tenth of a second.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from thumbor_rekognition import stores
from thumbor_rekognition.decision import Decision, Event, Source, Status
from thumbor_rekognition.fingerprint import Print

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    key TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    updated_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_sha256 ON decisions (sha256);
CREATE INDEX IF NOT EXISTS decisions_by_status ON decisions (status, key);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    at REAL NOT NULL,
    status TEXT,
    source TEXT,
    actor TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_key ON history (key, id);
CREATE TABLE IF NOT EXISTS results (
    key TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (key, path)
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outbox_by_key ON outbox (state, topic, key, id);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_at);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    sender TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shared (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fingerprints (
    sha256 TEXT NOT NULL,
    frame INTEGER NOT NULL,
    print BLOB NOT NULL,
    coarse INTEGER NOT NULL,
    indexed INTEGER NOT NULL,
    b0 INTEGER NOT NULL,
    b1 INTEGER NOT NULL,
    b2 INTEGER NOT NULL,
    b3 INTEGER NOT NULL,
    PRIMARY KEY (sha256, frame)
);
CREATE INDEX IF NOT EXISTS fingerprints_b0 ON fingerprints (b0, coarse) WHERE indexed = 1;
CREATE INDEX IF NOT EXISTS fingerprints_b1 ON fingerprints (b1, coarse) WHERE indexed = 1;
CREATE INDEX IF NOT EXISTS fingerprints_b2 ON fingerprints (b2, coarse) WHERE indexed = 1;
CREATE INDEX IF NOT EXISTS fingerprints_b3 ON fingerprints (b3, coarse) WHERE indexed = 1;
CREATE TABLE IF NOT EXISTS duplicates (
    original TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (original, key)
);
"""


_UNSIGNED = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit unsigned value as the signed integer SQLite stores."""
    return value - (1 << 64) if value >> 63 else value


BUSY_TIMEOUT = 10.0
POLL_SECONDS = 0.1
# Band values per statement of an index lookup, well under SQLite's limit on parameters.
PROBES_PER_QUERY = 500


def _initialise(connection: sqlite3.Connection) -> None:
    """WAL mode and the schema, waiting while other processes open the same new file.

    Switching a new file to WAL needs an exclusive lock and fails at once with 'database
    is locked' instead of honouring the busy timeout, which every process of
    `thumbor --processes=N` meets on its first start.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    delay = 0.01
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(SCHEMA)
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class Store(stores.Store):
    """The embedded default decision store."""

    # Each process polls the change log every POLL_SECONDS: two polls leave room for one
    # that was under way.
    propagation_seconds = 2 * POLL_SECONDS

    def __init__(self, settings: Settings | None = None, *, path: str | None = None) -> None:
        super().__init__(settings)
        if path is None:
            if settings is None:
                raise ValueError("an SQLite store needs settings or a path")
            path = settings.sqlite_path
        self.path = path
        self._lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self._changes = stores.ChangeFeed(self._poll)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        connection: sqlite3.Connection | None = None
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            _initialise(connection)
        except (sqlite3.Error, OSError) as error:
            if connection is not None:
                connection.close()
            raise stores.StoreUnavailable(f"SQLite store {self.path}: {error}") from error
        self._connection, self._pid = connection, os.getpid()
        return connection

    @contextmanager
    def _cursor(self, write: bool = False) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            connection = self._connect()
            cursor = connection.cursor()
            try:
                if write:
                    cursor.execute("BEGIN IMMEDIATE")
                yield cursor
                if write:
                    cursor.execute("COMMIT")
            except sqlite3.Error as error:
                if connection.in_transaction:
                    connection.rollback()
                raise stores.StoreUnavailable(f"SQLite store {self.path}: {error}") from error
            except BaseException:
                if connection.in_transaction:
                    connection.rollback()
                raise
            finally:
                cursor.close()

    def get(self, key: str) -> Decision | None:
        with self._cursor() as cursor:
            row = cursor.execute("SELECT body FROM decisions WHERE key = ?", (key,)).fetchone()
        return Decision.from_json(row[0]) if row else None

    def find_by_hash(self, sha256: str) -> Decision | None:
        with self._cursor() as cursor:
            row = cursor.execute(
                "SELECT body FROM decisions WHERE sha256 = ? "
                "AND (status != ? OR json_extract(body, '$.error') = '') "
                "ORDER BY source = 'manual' DESC, updated_at DESC LIMIT 1",
                (sha256, Status.PENDING.value),
            ).fetchone()
        return Decision.from_json(row[0]) if row else None

    def save(self, decision: Decision, event: Event) -> Decision:
        with self._cursor(write=True) as cursor:
            row = cursor.execute(
                "SELECT body FROM decisions WHERE key = ?", (decision.key,)
            ).fetchone()
            current = Decision.from_json(row[0]) if row else None
            if (
                current is not None
                and decision.source is not Source.MANUAL
                and current.source is Source.MANUAL
                and current.sha256 == decision.sha256
            ):
                return current
            # The picture is judged: whoever held the right to judge it no longer needs it.
            cursor.execute("DELETE FROM leases WHERE name = ?", ("judge:" + decision.sha256,))
            cursor.execute(
                "INSERT OR REPLACE INTO decisions (key, sha256, status, source, updated_at, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    decision.key,
                    decision.sha256,
                    decision.status.value,
                    decision.source.value,
                    decision.updated_at,
                    decision.to_json(),
                ),
            )
            self._log(cursor, decision.key, event)
            self._changed(cursor, decision.key)
        return decision

    def delete(self, key: str, event: Event) -> bool:
        with self._cursor(write=True) as cursor:
            deleted = cursor.execute("DELETE FROM decisions WHERE key = ?", (key,)).rowcount
            if deleted:
                self._log(cursor, key, event)
                self._changed(cursor, key)
        return bool(deleted)

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
        while not self._changes.closed.wait(POLL_SECONDS):
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

    @staticmethod
    def _log(cursor: sqlite3.Cursor, key: str, event: Event) -> None:
        cursor.execute(
            "INSERT INTO history (key, at, status, source, actor, note) VALUES (?, ?, ?, ?, ?, ?)",
            (
                key,
                event.at,
                event.status.value if event.status else None,
                event.source.value if event.source else None,
                event.actor,
                event.note,
            ),
        )

    def history(self, key: str) -> list[Event]:
        with self._cursor() as cursor:
            rows = cursor.execute(
                "SELECT at, status, source, actor, note FROM history WHERE key = ? ORDER BY id",
                (key,),
            ).fetchall()
        return [
            Event(
                at=at,
                status=Status(status) if status else None,
                source=Source(source) if source else None,
                actor=actor,
                note=note,
            )
            for at, status, source, actor, note in rows
        ]

    def page(
        self, status: Status | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Decision], str | None]:
        if limit < 1:
            raise ValueError(f"page limit must be at least 1, got {limit}")
        query = "SELECT key, body FROM decisions WHERE key > ?"
        arguments: list[object] = [cursor or ""]
        if status is not None:
            query += " AND status = ?"
            arguments.append(status.value)
        query += " ORDER BY key LIMIT ?"
        arguments.append(limit + 1)
        with self._cursor() as db:
            rows = db.execute(query, arguments).fetchall()
        page = [Decision.from_json(body) for _, body in rows[:limit]]
        next_cursor = rows[limit - 1][0] if len(rows) > limit else None
        return page, next_cursor

    def counts(self) -> dict[str, int]:
        with self._cursor() as cursor:
            rows = cursor.execute(
                "SELECT status, source, COUNT(*) FROM decisions GROUP BY status, source"
            ).fetchall()
        counts: dict[str, int] = {}
        for status, source, count in rows:
            counts[status] = counts.get(status, 0) + count
            counts[f"{status}.{source}"] = count
        return counts

    def find_all_by_hash(self, sha256: str) -> list[Decision]:
        if not sha256:
            return []
        with self._cursor() as cursor:
            rows = cursor.execute(
                "SELECT body FROM decisions WHERE sha256 = ? ORDER BY key", (sha256,)
            ).fetchall()
        return [Decision.from_json(body) for (body,) in rows]

    def add_results(self, key: str, paths: list[str]) -> None:
        with self._cursor(write=True) as cursor:
            cursor.executemany(
                "INSERT OR IGNORE INTO results (key, path) VALUES (?, ?)",
                [(key, path) for path in paths],
            )

    def results(self, key: str) -> list[str]:
        with self._cursor() as cursor:
            rows = cursor.execute(
                "SELECT path FROM results WHERE key = ? ORDER BY rowid", (key,)
            ).fetchall()
        return [path for (path,) in rows]

    def drop_results(self, key: str) -> None:
        with self._cursor(write=True) as cursor:
            cursor.execute("DELETE FROM results WHERE key = ?", (key,))

    def incr(self, name: str, amount: int = 1) -> None:
        with self._cursor(write=True) as cursor:
            cursor.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, amount),
            )

    def counters(self) -> dict[str, int]:
        with self._cursor() as cursor:
            rows = cursor.execute("SELECT name, value FROM counters ORDER BY name").fetchall()
        return {name: value for name, value in rows}

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        now = time.time()
        with self._cursor(write=True) as cursor:
            row = cursor.execute(
                "SELECT holder, expires FROM leases WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            cursor.execute(
                "INSERT OR REPLACE INTO leases (name, holder, expires) VALUES (?, ?, ?)",
                (name, holder, now + seconds),
            )
            cursor.execute("DELETE FROM leases WHERE expires < ?", (now - 3600,))
        return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._cursor(write=True) as cursor:
            cursor.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def compare_and_set(self, name: str, expected: str | None, value: str) -> str | None:
        with self._cursor(write=True) as cursor:
            row = cursor.execute("SELECT value FROM shared WHERE name = ?", (name,)).fetchone()
            found: str | None = row[0] if row else None
            if found == expected:
                cursor.execute(
                    "INSERT OR REPLACE INTO shared (name, value) VALUES (?, ?)", (name, value)
                )
        return found

    def enqueue(self, topic: str, key: str, payload: str) -> None:
        now = time.time()
        with self._cursor(write=True) as cursor:
            cursor.execute(
                "INSERT INTO outbox (topic, key, payload, created_at, next_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (topic, key, payload, now, now),
            )

    def claim(self, now: float, lease: float, limit: int) -> list[stores.OutboxItem]:
        with self._cursor(write=True) as cursor:
            rows = cursor.execute(
                "SELECT id, topic, key, payload, attempts, created_at FROM outbox AS item "
                "WHERE state = 'pending' AND next_at <= ? AND id = ("
                "  SELECT MIN(id) FROM outbox AS head WHERE head.state = 'pending' "
                "  AND head.topic = item.topic AND head.key = item.key) "
                "ORDER BY next_at, id LIMIT ?",
                (now, limit),
            ).fetchall()
            cursor.executemany(
                "UPDATE outbox SET next_at = ?, attempts = attempts + 1 WHERE id = ?",
                [(now + lease, row[0]) for row in rows],
            )
        return [
            stores.OutboxItem(str(id_), topic, key, payload, attempts + 1, created_at)
            for id_, topic, key, payload, attempts, created_at in rows
        ]

    def complete(self, item: stores.OutboxItem) -> None:
        with self._cursor(write=True) as cursor:
            cursor.execute("DELETE FROM outbox WHERE id = ?", (int(item.id),))

    def reschedule(self, item: stores.OutboxItem, next_at: float, error: str) -> None:
        with self._cursor(write=True) as cursor:
            cursor.execute(
                "UPDATE outbox SET next_at = ?, last_error = ? WHERE id = ?",
                (next_at, error[:2000], int(item.id)),
            )

    def abandon(self, item: stores.OutboxItem, error: str) -> None:
        with self._cursor(write=True) as cursor:
            cursor.execute(
                "UPDATE outbox SET state = 'abandoned', last_error = ? WHERE id = ?",
                (error[:2000], int(item.id)),
            )

    def outbox_counts(self) -> dict[str, int]:
        with self._cursor() as cursor:
            rows = cursor.execute(
                "SELECT topic, state, COUNT(*) FROM outbox GROUP BY topic, state"
            ).fetchall()
        return {f"{topic}.{state}": count for topic, state, count in rows}

    def put_fingerprints(
        self, sha256: str, prints: Mapping[int, Print], indexed: Collection[int]
    ) -> None:
        rows = [
            (
                sha256,
                frame,
                print_.to_bytes(),
                _signed(print_.coarse),
                int(frame in indexed),
                *print_.bands(),
            )
            for frame, print_ in sorted(prints.items())
        ]
        with self._cursor(write=True) as cursor:
            cursor.execute("DELETE FROM fingerprints WHERE sha256 = ?", (sha256,))
            cursor.executemany(
                "INSERT INTO fingerprints "
                "(sha256, frame, print, coarse, indexed, b0, b1, b2, b3) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def fingerprints(self, sha256: str) -> dict[int, Print]:
        with self._cursor() as cursor:
            rows = cursor.execute(
                "SELECT frame, print FROM fingerprints WHERE sha256 = ? ORDER BY frame", (sha256,)
            ).fetchall()
        return {frame: Print.from_bytes(data) for frame, data in rows}

    def indexed_near(
        self, probes: Sequence[Collection[int]], close: Callable[[int], bool]
    ) -> list[tuple[str, Print]]:
        kept: set[int] = set()
        with self._cursor() as cursor:
            for band, values in enumerate(probes):
                ordered = sorted(values)
                for start in range(0, len(ordered), PROBES_PER_QUERY):
                    chunk = ordered[start : start + PROBES_PER_QUERY]
                    # Read from the band's index alone ('indexed = 1' as the partial index
                    # says, coarse in it): the table is read only for the rows kept.
                    rows = cursor.execute(
                        f"SELECT rowid, coarse FROM fingerprints WHERE indexed = 1 "  # noqa: S608 - band is 0..3
                        f"AND b{band:d} IN ({', '.join('?' * len(chunk))})",
                        chunk,
                    ).fetchall()
                    kept.update(rowid for rowid, coarse in rows if close(coarse & _UNSIGNED))
            ordered_rows = sorted(kept)
            found = []
            for start in range(0, len(ordered_rows), PROBES_PER_QUERY):
                chunk = ordered_rows[start : start + PROBES_PER_QUERY]
                found += cursor.execute(
                    f"SELECT sha256, print FROM fingerprints WHERE rowid IN "  # noqa: S608 - placeholders only
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
        return [(sha256, Print.from_bytes(data)) for sha256, data in found]

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

    def close(self) -> None:
        self._changes.closed.set()
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None
