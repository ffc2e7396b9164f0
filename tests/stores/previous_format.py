"""Decision store data as the previous version wrote it (JSON documents), for the tests of
``migrate-store``. Each writer lays out what that version's store wrote for a save, a
forget, a recorded path, a queued notification, a picture's fingerprints, a link to a
duplicate and a shared value.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field

import redis

from thumbor_rekognition.cli.old_fingerprint import BAND_BITS, Print
from thumbor_rekognition.decision import Decision, Event

SQLITE_SCHEMA = """
CREATE TABLE decisions (
    key TEXT PRIMARY KEY, sha256 TEXT NOT NULL, status TEXT NOT NULL, source TEXT NOT NULL,
    updated_at REAL NOT NULL, body TEXT NOT NULL
);
CREATE INDEX decisions_by_sha256 ON decisions (sha256);
CREATE INDEX decisions_by_status ON decisions (status, key);
CREATE TABLE history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, at REAL NOT NULL, status TEXT,
    source TEXT, actor TEXT NOT NULL, note TEXT NOT NULL
);
CREATE INDEX history_by_key ON history (key, id);
CREATE TABLE results (key TEXT NOT NULL, path TEXT NOT NULL, PRIMARY KEY (key, path));
CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, key TEXT NOT NULL,
    payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    next_at REAL NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, sender TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE shared (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE fingerprints (
    sha256 TEXT NOT NULL, frame INTEGER NOT NULL, print BLOB NOT NULL,
    coarse INTEGER NOT NULL, indexed INTEGER NOT NULL, b0 INTEGER NOT NULL,
    b1 INTEGER NOT NULL, b2 INTEGER NOT NULL, b3 INTEGER NOT NULL,
    PRIMARY KEY (sha256, frame)
);
CREATE INDEX fingerprints_b0 ON fingerprints (b0, coarse) WHERE indexed = 1;
CREATE INDEX fingerprints_b1 ON fingerprints (b1, coarse) WHERE indexed = 1;
CREATE INDEX fingerprints_b2 ON fingerprints (b2, coarse) WHERE indexed = 1;
CREATE INDEX fingerprints_b3 ON fingerprints (b3, coarse) WHERE indexed = 1;
CREATE TABLE duplicates (original TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (original, key));
"""


@dataclass
class Contents:
    """What a test wrote, to compare with what the converted store gives back."""

    decisions: dict[str, Decision] = field(default_factory=dict)
    history: dict[str, list[Event]] = field(default_factory=dict)
    results: dict[str, list[str]] = field(default_factory=dict)


class SQLiteWriter:
    """Writes as the previous SQLite store did."""

    def __init__(self, path: str) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.executescript(SQLITE_SCHEMA)
        self.contents = Contents()

    def save(self, decision: Decision, event: Event) -> None:
        self.connection.execute(
            "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?)",
            (
                decision.key,
                decision.sha256,
                decision.status.value,
                decision.source.value,
                decision.updated_at,
                decision.to_json(),
            ),
        )
        self._log(decision.key, event)
        self.contents.decisions[decision.key] = decision

    def delete(self, key: str, event: Event) -> None:
        self.connection.execute("DELETE FROM decisions WHERE key = ?", (key,))
        self._log(key, event)
        self.contents.decisions.pop(key, None)

    def add_result(self, key: str, path: str) -> None:
        self.connection.execute("INSERT OR IGNORE INTO results VALUES (?, ?)", (key, path))
        self.contents.results.setdefault(key, []).append(path)

    def enqueue(self, topic: str, key: str, payload: str) -> None:
        now = time.time()
        self.connection.execute(
            "INSERT INTO outbox (topic, key, payload, created_at, next_at) VALUES (?, ?, ?, ?, ?)",
            (topic, key, payload, now, now),
        )

    def put_fingerprints(self, sha256: str, frame: int, print_: Print) -> None:
        """One indexed frame."""
        coarse = print_.coarse - (1 << 64) if print_.coarse >> 63 else print_.coarse
        self.connection.execute(
            "INSERT INTO fingerprints VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?)",
            (sha256, frame, print_.to_bytes(), coarse, *print_.bands()),
        )

    def link_duplicate(self, original: str, key: str) -> None:
        self.connection.execute("INSERT INTO duplicates VALUES (?, ?)", (original, key))

    def share(self, name: str, value: str) -> None:
        self.connection.execute("INSERT INTO shared VALUES (?, ?)", (name, value))

    def _log(self, key: str, event: Event) -> None:
        self.connection.execute(
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
        self.contents.history.setdefault(key, []).append(event)

    def close(self) -> None:
        self.connection.close()


class RedisWriter:
    """Writes as the previous Redis store did: one key per decision, history list,
    results sorted set, hash, status and source indexes, an outbox without hash tags."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.prefix = prefix
        self.contents = Contents()

    def save(self, decision: Decision, event: Event) -> None:
        p, key = self.prefix, decision.key
        old = self.client.get(p + "d:" + key)
        if old:
            self._unindex(key, json.loads(old))
        self.client.set(p + "d:" + key, decision.to_json())
        self.client.sadd(p + "sha:" + decision.sha256, key)
        self.client.zadd(p + "all", {key: 0})
        self.client.zadd(p + "st:" + decision.status.value, {key: 0})
        self.client.zadd(p + f"ss:{decision.status.value}.{decision.source.value}", {key: 0})
        self._log(key, event)
        self.contents.decisions[key] = decision

    def delete(self, key: str, event: Event) -> None:
        old = self.client.get(self.prefix + "d:" + key)
        if old:
            self._unindex(key, json.loads(old))
            self.client.delete(self.prefix + "d:" + key)
            self.client.zrem(self.prefix + "all", key)
        self._log(key, event)
        self.contents.decisions.pop(key, None)

    def add_result(self, key: str, path: str) -> None:
        recorded = self.client.zcard(self.prefix + "r:" + key)
        self.client.zadd(self.prefix + "r:" + key, {path: recorded + 1}, nx=True)
        self.contents.results.setdefault(key, []).append(path)

    def enqueue(self, topic: str, key: str, payload: str) -> str:
        p, now = self.prefix, time.time()
        item = str(self.client.incr(p + "ob:seq"))
        self.client.hset(
            p + "ob:i:" + item,
            mapping={"topic": topic, "key": key, "payload": payload, "attempts": 0,
                     "created_at": repr(now)},
        )  # fmt: skip
        self.client.rpush(p + f"ob:q:{topic}:{key}", item)
        self.client.zadd(p + "ob:due", {item: now})
        self.client.hincrby(p + "ob:counts", f"{topic}.pending", 1)
        return item

    def put_fingerprints(self, sha256: str, frame: int, print_: Print) -> None:
        """One indexed frame: its picture's record and an entry in each band's hash."""
        p = self.prefix
        record = {"prints": {str(frame): print_.hex()}, "indexed": [frame]}
        self.client.set(p + "fp:{" + sha256 + "}", json.dumps(record, separators=(",", ":")))
        for band, value in enumerate(print_.bands()):
            field_ = f"{value:0{BAND_BITS // 4}x}"
            self.client.hset(f"{p}fpi:{band}", field_, print_.to_bytes() + bytes.fromhex(sha256))

    def link_duplicate(self, original: str, key: str) -> None:
        self.client.sadd(self.prefix + "dup:{" + original + "}", key)

    def share(self, name: str, value: str) -> None:
        self.client.set(self.prefix + "{shared:" + name + "}", value)

    def _unindex(self, key: str, old: dict[str, str]) -> None:
        p = self.prefix
        self.client.srem(p + "sha:" + old["sha256"], key)
        self.client.zrem(p + "st:" + old["status"], key)
        self.client.zrem(p + f"ss:{old['status']}.{old['source']}", key)

    def _log(self, key: str, event: Event) -> None:
        item = json.dumps(event.to_dict(), separators=(",", ":"))
        self.client.rpush(self.prefix + "h:" + key, item)
        self.contents.history.setdefault(key, []).append(event)

    def close(self) -> None:
        self.client.close()
