"""Decisions in one SQLite file, shared by every Thumbor process of a machine.

WAL mode lets readers run while one process writes; each process opens its own
connection after fork. Writes that must not race (an automatic decision landing on a
manual one) run inside ``BEGIN IMMEDIATE``. Every change is also written to a change log
that each process polls, so an override made in one process reaches the others within
a tenth of a second.

One row per picture holds its decision as a compact record (``records``), its history
and its recorded paths, in a table without rowids keyed by the picture's key; the
content-hash index keeps 8 bytes of the hash, and only pictures that are not approved
are indexed by status (approved ones are listed by reading the table in key order).
Fingerprints, links to duplicates and shared values have tables of their own.
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

from thumbor_rekognition import rules, stores
from thumbor_rekognition.decision import Decision, Event, Source, Status
from thumbor_rekognition.fingerprint import Print
from thumbor_rekognition.stores import records

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS pictures (
    key TEXT PRIMARY KEY,
    -- The first bytes of the SHA-256 (NULL without a decision): readers check the rest.
    sha BLOB,
    -- 0 approved, 1 rejected, 2 pending: NULL once the decision is forgotten.
    status INTEGER,
    record BLOB,
    history BLOB NOT NULL DEFAULT x'',
    paths BLOB NOT NULL DEFAULT x''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pictures_by_sha ON pictures (sha) WHERE sha IS NOT NULL;
CREATE INDEX IF NOT EXISTS pictures_waiting ON pictures (status, key) WHERE status > 0;
CREATE TABLE IF NOT EXISTS tallies (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
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
    -- 1 when this frame rejects its picture (see duplicates.rejecting_frames).
    rejecting INTEGER NOT NULL,
    b0 INTEGER NOT NULL,
    b1 INTEGER NOT NULL,
    b2 INTEGER NOT NULL,
    b3 INTEGER NOT NULL,
    PRIMARY KEY (sha256, frame)
);
CREATE INDEX IF NOT EXISTS fingerprints_band0 ON fingerprints (b0, coarse);
CREATE INDEX IF NOT EXISTS fingerprints_band1 ON fingerprints (b1, coarse);
CREATE INDEX IF NOT EXISTS fingerprints_band2 ON fingerprints (b2, coarse);
CREATE INDEX IF NOT EXISTS fingerprints_band3 ON fingerprints (b3, coarse);
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
# PRAGMA user_version of a file in this format. Format 2 indexed only the fingerprints
# of rejected pictures ('indexed' where 'rejecting' is now); the one before it (JSON
# documents in a 'decisions' table) left the version at 0.
FORMAT = 3
_INDEX_ONLY_REJECTED = 2
# Bytes of a content hash the index keeps.
HASH_PREFIX = 8
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


class PreviousFormat(stores.StoreUnavailable):
    """The file holds decisions in the previous format: `migrate-store` converts them."""


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
            _check_format(connection)
            connection.executescript(SCHEMA)
            connection.execute(f"PRAGMA user_version = {FORMAT}")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _check_format(connection: sqlite3.Connection) -> None:
    """Refuse a file of another format rather than misread it."""
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version == FORMAT:
        return
    if version > FORMAT:
        raise sqlite3.DatabaseError(f"format {version}, which this version cannot read")
    if version == _INDEX_ONLY_REJECTED:
        raise PreviousFormat(
            "the index of fingerprints is in the previous format; run "
            "`thumbor-moderation migrate-store` once"
        )
    old = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'decisions'"
    ).fetchone()
    if old:
        raise PreviousFormat(
            "the decisions are in the previous format; run `thumbor-moderation migrate-store` once"
        )


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
        except (sqlite3.Error, OSError, PreviousFormat) as error:
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
                "INSERT OR REPLACE INTO pictures (key, sha, status, record, history, paths) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    decision.key,
                    records.sha_of(record)[:HASH_PREFIX] or None,
                    records.status_of(record),
                    record,
                    history + records.join([records.encode_event(event)]),
                    paths,
                ),
            )
            self._tally(cursor, current, -1)
            self._tally(cursor, decision, 1)
            self._changed(cursor, decision.key)
        return records.decode_decision(decision.key, record)

    def delete(self, key: str, event: Event) -> bool:
        with self._cursor(write=True) as cursor:
            row = cursor.execute(
                "SELECT record, history FROM pictures WHERE key = ? AND record IS NOT NULL", (key,)
            ).fetchone()
            if row is None:
                return False
            cursor.execute(
                "UPDATE pictures SET sha = NULL, status = NULL, record = NULL, history = ? "
                "WHERE key = ?",
                (row[1] + records.join([records.encode_event(event)]), key),
            )
            self._tally(cursor, records.decode_decision(key, row[0]), -1)
            self._changed(cursor, key)
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
        self, sha256: str, prints: Mapping[int, Print], rejecting: Collection[int]
    ) -> None:
        rows = [
            (
                sha256,
                frame,
                print_.to_bytes(),
                _signed(print_.coarse),
                int(frame in rejecting),
                *print_.bands(),
            )
            for frame, print_ in sorted(prints.items())
        ]
        with self._cursor(write=True) as cursor:
            cursor.execute("DELETE FROM fingerprints WHERE sha256 = ?", (sha256,))
            cursor.executemany(
                "INSERT INTO fingerprints "
                "(sha256, frame, print, coarse, rejecting, b0, b1, b2, b3) "
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
    ) -> list[stores.Indexed]:
        kept: set[int] = set()
        with self._cursor() as cursor:
            for band, values in enumerate(probes):
                ordered = sorted(values)
                for start in range(0, len(ordered), PROBES_PER_QUERY):
                    chunk = ordered[start : start + PROBES_PER_QUERY]
                    # Read from the band's index alone (coarse is in it): the table is
                    # read only for the rows kept.
                    rows = cursor.execute(
                        f"SELECT rowid, coarse FROM fingerprints "  # noqa: S608 - band is 0..3
                        f"INDEXED BY fingerprints_band{band:d} "
                        f"WHERE b{band:d} IN ({', '.join('?' * len(chunk))})",
                        chunk,
                    ).fetchall()
                    kept.update(rowid for rowid, coarse in rows if close(coarse & _UNSIGNED))
            ordered_rows = sorted(kept)
            found = []
            for start in range(0, len(ordered_rows), PROBES_PER_QUERY):
                chunk = ordered_rows[start : start + PROBES_PER_QUERY]
                found += cursor.execute(
                    f"SELECT sha256, print, rejecting FROM fingerprints WHERE rowid IN "  # noqa: S608 - placeholders only
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

    def migrate(self) -> int:
        """Convert a file of the previous format (JSON documents in a 'decisions' table,
        history and results in tables of their own) in one transaction."""
        try:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as error:
            raise stores.StoreUnavailable(f"SQLite store {self.path}: {error}") from error
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("BEGIN IMMEDIATE")
            try:
                _check_format(connection)
                converted = 0
            except PreviousFormat:
                (version,) = connection.execute("PRAGMA user_version").fetchone()
                converted = _convert(connection) if version < _INDEX_ONLY_REJECTED else 0
                converted = max(converted, _index_every_picture(connection))
            connection.execute("COMMIT")
            return converted
        except sqlite3.Error as error:
            if connection.in_transaction:
                connection.rollback()
            raise stores.StoreUnavailable(f"SQLite store {self.path}: {error}") from error
        finally:
            connection.close()

    def close(self) -> None:
        self._changes.closed.set()
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None


def _convert(connection: sqlite3.Connection) -> int:
    """Rows of the previous format's tables into pictures, inside the caller's transaction."""
    # executescript() would commit the caller's transaction: one statement at a time
    # (the schema has no ';' but between statements).
    for statement in SCHEMA.split(";"):
        if statement.strip():
            connection.execute(statement)
    keys = [
        key
        for (key,) in connection.execute(
            "SELECT key FROM decisions UNION SELECT key FROM history UNION "
            "SELECT key FROM results ORDER BY key"
        )
    ]
    tallies: dict[str, int] = {}
    for key in keys:
        body = connection.execute("SELECT body FROM decisions WHERE key = ?", (key,)).fetchone()
        decision = Decision.from_json(body[0]) if body else None
        record = records.encode_decision(decision) if decision else None
        events = [
            Event(
                at=at,
                status=Status(status) if status else None,
                source=Source(source) if source else None,
                actor=actor,
                note=note,
            )
            for at, status, source, actor, note in connection.execute(
                "SELECT at, status, source, actor, note FROM history WHERE key = ? ORDER BY id",
                (key,),
            )
        ]
        paths = [
            path
            for (path,) in connection.execute(
                "SELECT path FROM results WHERE key = ? ORDER BY rowid", (key,)
            )
        ]
        connection.execute(
            "INSERT OR REPLACE INTO pictures (key, sha, status, record, history, paths) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                key,
                records.sha_of(record)[:HASH_PREFIX] or None if record else None,
                records.status_of(record) if record else None,
                record,
                records.join([records.encode_event(event) for event in events]),
                records.join([records.encode_path(key, path) for path in paths]),
            ),
        )
        if decision is not None:
            name = f"{decision.status.value}.{decision.source.value}"
            tallies[name] = tallies.get(name, 0) + 1
    connection.execute("DELETE FROM tallies")
    connection.executemany("INSERT INTO tallies (name, value) VALUES (?, ?)", tallies.items())
    for table in ("decisions", "history", "results"):
        connection.execute(f"DROP TABLE {table}")
    connection.execute(f"PRAGMA user_version = {FORMAT}")
    return len(keys)


def _index_every_picture(connection: sqlite3.Connection) -> int:
    """Format 2's fingerprints into format 3's index, inside the caller's transaction: the
    frames it indexed are those that reject their picture, and every frame is indexed now.
    Returns how many pictures' fingerprints were converted."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(fingerprints)")}
    converted = 0
    if "indexed" in columns:
        (converted,) = connection.execute(
            "SELECT COUNT(DISTINCT sha256) FROM fingerprints"
        ).fetchone()
        connection.execute("ALTER TABLE fingerprints RENAME COLUMN indexed TO rejecting")
    for band in range(4):
        connection.execute(f"DROP INDEX IF EXISTS fingerprints_b{band:d}")
    for statement in SCHEMA.split(";"):
        if "fingerprints_band" in statement:
            connection.execute(statement)
    connection.execute(f"PRAGMA user_version = {FORMAT}")
    return int(converted)
