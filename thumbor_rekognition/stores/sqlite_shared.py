"""The ground floor of the SQLite store: its connection (one a process, opened after fork),
transactions, and what the plugin's processes share besides decisions: counters, leases,
compare-and-set values and the outbox."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from thumbor_rekognition import stores
from thumbor_rekognition.stores import sqlite_schema

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings


class SharedState(stores.Store):
    """A connection to the file, and the state the processes share through it."""

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

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        connection: sqlite3.Connection | None = None
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            connection = sqlite3.connect(
                self.path,
                timeout=sqlite_schema.BUSY_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
            )
            sqlite_schema.initialise(connection)
        except (sqlite3.Error, OSError, sqlite_schema.PreviousFormat) as error:
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
        with self._cursor(write=True) as cursor:
            self._enqueue(cursor, key, [(topic, payload)])

    @staticmethod
    def _enqueue(cursor: sqlite3.Cursor, key: str, entries: list[tuple[str, str]]) -> None:
        """Add outbox items inside the caller's transaction."""
        now = time.time()
        cursor.executemany(
            "INSERT INTO outbox (topic, key, payload, created_at, next_at) VALUES (?, ?, ?, ?, ?)",
            [(topic, key, payload, now, now) for topic, payload in entries],
        )

    def claim(
        self, now: float, lease: float, limit: int, topic: str | None = None
    ) -> list[stores.OutboxItem]:
        with self._cursor(write=True) as cursor:
            rows = cursor.execute(
                "SELECT id, topic, key, payload, attempts, created_at FROM outbox AS item "
                "WHERE state = 'pending' AND next_at <= ? AND (? IS NULL OR topic = ?) AND id = ("
                "  SELECT MIN(id) FROM outbox AS head WHERE head.state = 'pending' "
                "  AND head.topic = item.topic AND head.key = item.key) "
                "ORDER BY next_at, id LIMIT ?",
                (now, topic, topic, limit),
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

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None
