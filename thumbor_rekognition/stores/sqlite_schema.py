"""The SQLite store's file: its schema and format, opening a file that other processes may
be creating, and converting files of earlier formats (`thumbor-moderation migrate-store`)."""

from __future__ import annotations

import sqlite3
import time

from thumbor_rekognition import stores
from thumbor_rekognition.decision import Decision, Event, Source, Status
from thumbor_rekognition.fingerprint import BANDS
from thumbor_rekognition.stores import records

# Each slot's own column in 'prints', and per slot a partial index over either index of
# fingerprints: (its name without the slot, the rows it holds). A lookup names the index
# and repeats its condition, without which SQLite would not use it.
SLOT_INDEXES = {
    False: ("prints_slot", "variant = 0"),
    True: ("rejecting_slot", "rejecting = 1"),
}
_SLOT_COLUMNS = "".join(f"    s{slot} INTEGER NOT NULL,\n" for slot in range(BANDS))
_SLOT_INDEXES = "".join(
    f"CREATE INDEX IF NOT EXISTS {name}{slot} ON prints (s{slot}, hash) WHERE {rows};\n"
    for name, rows in SLOT_INDEXES.values()
    for slot in range(BANDS)
)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS pictures (
    key TEXT PRIMARY KEY,
    -- The first bytes of the SHA-256 (NULL without a decision): readers check the rest.
    sha BLOB,
    -- 0 approved, 1 rejected, 2 pending: NULL once the decision is forgotten.
    status INTEGER,
    record BLOB,
    history BLOB NOT NULL DEFAULT x'',
    paths BLOB NOT NULL DEFAULT x'',
    changed INTEGER
    -- changed: the decision's updated_at in microseconds where its status is listed by
    -- time, pending or rejected, else NULL.
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
-- The index of judged pictures: each frame's PDQ hash under its 16 slots of 16 bits
-- (variant 0), and the index of rejecting frames: each rotation and mirror of a frame that
-- rejects its picture (variants 0 to 7, rejecting 1: stores.rejecting_variants).
-- (Format 3's 'fingerprints' table held the former fingerprint: `migrate-store` drops it.)
CREATE TABLE IF NOT EXISTS prints (
    sha256 TEXT NOT NULL,
    frame INTEGER NOT NULL,
    -- 0 for the frame's own hash, else the place of a rotation's or mirror's among its
    -- distinct variants.
    variant INTEGER NOT NULL,
    -- Variant 0: the hash and its rotations' and mirrors' (256 bytes), others: empty.
    print BLOB NOT NULL,
    -- This row's hash alone (32 bytes).
    hash BLOB NOT NULL,
    -- 1 when this frame rejects its picture (see duplicates.rejecting_frames).
    rejecting INTEGER NOT NULL,
{_SLOT_COLUMNS}    PRIMARY KEY (sha256, frame, variant)
);
{_SLOT_INDEXES}CREATE TABLE IF NOT EXISTS duplicates (
    original TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (original, key)
);
"""


# The order by time of pending and rejected pictures (stores.TIMED), added to files of
# this format made before it had one (see order_by_time); apart from SCHEMA, which
# creates tables that may exist without the column.
TIME_ORDER = (
    "CREATE INDEX IF NOT EXISTS pictures_by_time ON pictures (status, changed, key) "
    "WHERE status > 0"
)

BUSY_TIMEOUT = 10.0
# PRAGMA user_version of a file in this format. Format 2 indexed only the fingerprints
# of rejected pictures ('indexed' where 'rejecting' is now); the one before it (JSON
# documents in a 'decisions' table) left the version at 0.
FORMAT = 3
INDEX_ONLY_REJECTED = 2
# Bytes of a content hash the index keeps.
HASH_PREFIX = 8


class PreviousFormat(stores.StoreUnavailable):
    """The file holds decisions in the previous format: `migrate-store` converts them."""


def initialise(connection: sqlite3.Connection) -> None:
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
            check_format(connection)
            connection.executescript(SCHEMA)
            order_by_time(connection)
            connection.execute(f"PRAGMA user_version = {FORMAT}")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def order_by_time(connection: sqlite3.Connection) -> int:
    """Give a file the order by time of pending and rejected pictures, once: the column
    (when a file made before it lacks it), its index, and the time of every waiting
    picture written without one (by an earlier version), in one transaction; how many
    pictures were dated. Run at every opening: a file that needs nothing costs one look
    at the index."""
    if not _columns(connection):
        return 0  # No table yet (a file migrate-store found empty): nothing to order.
    if _has_changed(connection):
        connection.execute(TIME_ORDER)
        if not _untimed(connection):
            return 0
    connection.execute("BEGIN IMMEDIATE")
    try:
        if not _has_changed(connection):
            connection.execute("ALTER TABLE pictures ADD COLUMN changed INTEGER")
        connection.execute(TIME_ORDER)
        rows = connection.execute(
            "SELECT key, record FROM pictures WHERE status > 0 AND changed IS NULL"
        ).fetchall()
        connection.executemany(
            "UPDATE pictures SET changed = ? WHERE key = ?",
            [(changed_of(records.decode_decision(key, record)), key) for key, record in rows],
        )
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise
    return len(rows)


def changed_of(decision: Decision) -> int | None:
    """The changed column of a decision's row: its time when its status is listed by time."""
    return int(stores.time_code(decision.updated_at)) if decision.status in stores.TIMED else None


def _columns(connection: sqlite3.Connection) -> set[str]:
    return {row[1] for row in connection.execute("PRAGMA table_info(pictures)")}


def _has_changed(connection: sqlite3.Connection) -> bool:
    return "changed" in _columns(connection)


def _untimed(connection: sqlite3.Connection) -> bool:
    # NULL sorts first in the index by time: one step into it per status.
    return any(
        connection.execute(
            "SELECT 1 FROM pictures WHERE status = ? AND status > 0 AND changed IS NULL LIMIT 1",
            (status,),
        ).fetchone()
        for status in (1, 2)
    )


def check_format(connection: sqlite3.Connection) -> None:
    """Refuse a file of another format rather than misread it."""
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version == FORMAT:
        return
    if version > FORMAT:
        raise sqlite3.DatabaseError(f"format {version}, which this version cannot read")
    if version == INDEX_ONLY_REJECTED:
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


def migrate(path: str) -> int:
    """Convert a file of the previous format (JSON documents in a 'decisions' table,
    history and results in tables of their own) in one transaction."""
    try:
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.Error as error:
        raise stores.StoreUnavailable(f"SQLite store {path}: {error}") from error
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            check_format(connection)
            converted = 0
        except PreviousFormat:
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            converted = _convert(connection) if version < INDEX_ONLY_REJECTED else 0
            connection.execute(f"PRAGMA user_version = {FORMAT}")
        drop_former_fingerprints(connection)
        connection.execute("COMMIT")
        return max(converted, order_by_time(connection))
    except sqlite3.Error as error:
        if connection.in_transaction:
            connection.rollback()
        raise stores.StoreUnavailable(f"SQLite store {path}: {error}") from error
    finally:
        connection.close()


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


def drop_former_fingerprints(connection: sqlite3.Connection) -> None:
    """Drop the index of the former fingerprint (the 'fingerprints' table of formats 2 and
    3), inside the caller's transaction; nothing matches by it any more, and each picture's
    PDQ fingerprints come from `backfill --fingerprints` or its next judgement. Idempotent."""
    connection.execute("DROP TABLE IF EXISTS fingerprints")
