"""Decisions in Redis or Redis Cluster, shared by every Thumbor process of every node.

Each picture's decision, history and recorded paths are one entry of a sorted map kept
in chunks (``redis_scripts``), in one of PARTITIONS partitions chosen by its key; a
partition's keys share a hash tag, and the tags' slots are spread evenly over Redis
Cluster's 16,384. Every write of a decision is one Lua script on one partition:
atomic, and on one node of a cluster. The content-hash index is partitioned by hash,
so a save adds the new hash's entry before the decision and removes the old one after
(a reader checks what it finds against the decision). Listing merges the partitions in
key order; statuses other than approved have an index of their own. The index of
judged pictures' fingerprints, the links to their duplicates and the shared values
(the call rate) live beside the partitions, each command on one key.

Every change is published (classic pub/sub, which a cluster forwards to every node) so
that each process drops the decision from its memory at once; the cache TTL is the
backstop when a notification is missed. Durability is Redis's: AOF on a single server,
and ``MODERATION_REDIS_WAIT_REPLICAS`` through a cluster's failovers.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import random
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.retry import Retry

from thumbor_rekognition import rules, stores
from thumbor_rekognition.decision import Decision, Event, Status
from thumbor_rekognition.fingerprint import BAND_BITS, Print
from thumbor_rekognition.stores import records
from thumbor_rekognition.stores import redis_scripts as scripts

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

logger = logging.getLogger(__name__)

# Hash tags whose slots are spread evenly over the 16,384 of Redis Cluster (slot 128 +
# 256 i for tag i). Never change: data is found by them.
TAGS = (
    "53t", "j3j", "if5", "kec", "574", "74b", "akm", "6bk", "96a", "frw", "0ip", "oin",
    "d1i", "38o", "0m0", "xw", "he6", "box", "40w", "c9q", "hav", "7ah", "447", "67a",
    "1js", "fcu", "0xr", "m5", "1n3", "3me", "e2j", "iu", "712", "52d", "cmk", "4dm",
    "75r", "h5l", "7av", "ice", "3y7", "1za", "2k6", "8ax", "wu7", "931", "yg", "8e8",
    "7d8", "5gn", "621", "41g", "jc0", "qkn", "66q", "i6o", "3h5", "1kc", "2z4", "0yb",
    "3lu", "des", "he", "802",
)  # fmt: skip
PARTITIONS = len(TAGS)
# The format of the data under a prefix. Format 2 indexed only the fingerprints of
# rejected pictures (in 'fpi:<band>'); the one before it (JSON documents, one Redis key
# per decision) had no format key.
FORMAT = "3"
_INDEX_ONLY_REJECTED = "2"
# Bytes of a content hash that its index keeps: readers check the whole hash.
HASH_PREFIX = 8

_STATUS_NUMBERS = {Status.APPROVED: 0, Status.REJECTED: 1, Status.PENDING: 2}

Client = Any  # redis.Redis or redis.RedisCluster
# A cluster that cannot be reached at all raises the second.
_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)


class Store(stores.Store):
    """The decision store for clusters."""

    # Pub/sub delivers to every subscribed process within milliseconds on one network.
    propagation_seconds = 0.05

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        url: str | None = None,
        prefix: str | None = None,
        timeout: float | None = None,
        cluster: bool | None = None,
        wait_replicas: int | None = None,
    ) -> None:
        super().__init__(settings)
        self.url = url or (settings.redis_url.value if settings else "redis://127.0.0.1:6379/0")
        self.prefix = (
            prefix if prefix is not None else (settings.redis_prefix if settings else "moderation:")
        )
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"Redis key prefix {self.prefix!r} must not contain '{{' or '}}'")
        self.timeout = timeout or (settings.store_timeout if settings else 0.5)
        self.cluster = cluster if cluster is not None else bool(settings and settings.redis_cluster)
        self.wait_replicas = (
            wait_replicas
            if wait_replicas is not None
            else (settings.redis_wait_replicas if settings else 0)
        )
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._pid = 0
        self._checked = False
        self._shas = {name: _sha1(text) for name, text in _SCRIPTS.items()}
        self._changes = stores.ChangeFeed(self._listen)

    # Connections

    def _connect(self) -> Client:
        options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "health_check_interval": 30,
        }
        if self.cluster:
            # Several nodes may be named, so that one down when a process starts does not
            # keep it from finding the others; the first URL gives password and TLS.
            first, *others = [url.strip() for url in self.url.split(",") if url.strip()]
            nodes = [
                ClusterNode(url.hostname, url.port or 6379)  # type: ignore[no-untyped-call]
                for url in map(urlsplit, others)
            ]
            # One attempt per call: the caller's budget is the store timeout, not rounds
            # of retries over a cluster that is failing over. A failed call makes the
            # client learn the cluster's layout again before the next one.
            return redis.RedisCluster.from_url(
                first, startup_nodes=nodes, retry=Retry(NoBackoff(), 0), **options
            )
        return redis.Redis.from_url(self.url, **options)

    def _redis(self) -> Client:
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client = self._connect()
                self._pid = os.getpid()
                self._checked = False
            return self._client

    @contextmanager
    def _call(self) -> Iterator[Client]:
        try:
            client = self._redis()
            if not self._checked:
                self._check_format(client)
                self._checked = True
            yield client
        except _ERRORS as error:
            raise stores.StoreUnavailable(
                f"Redis store: {type(error).__name__}: {error}"
            ) from error

    def _check_format(self, client: Client) -> None:
        """Refuse data of another format under this prefix, rather than misread it."""
        found = client.get(self.prefix + "format")
        if _text(found) == _INDEX_ONLY_REJECTED:
            raise stores.StoreUnavailable(
                f"Redis store: the index of fingerprints under prefix {self.prefix!r} is in "
                "the previous format; run `thumbor-moderation migrate-store` once"
            )
        if found is None:
            if client.exists(self.prefix + "all"):
                raise stores.StoreUnavailable(
                    f"Redis store: the decisions under prefix {self.prefix!r} are in the "
                    "previous format; run `thumbor-moderation migrate-store` once"
                )
            client.set(self.prefix + "format", FORMAT, nx=True)
            found = client.get(self.prefix + "format")
        if _text(found) != FORMAT:
            raise stores.StoreUnavailable(
                f"Redis store: the data under prefix {self.prefix!r} has format "
                f"{_text(found)!r}, which this version cannot read"
            )

    def _partition(self, number: int) -> str:
        return f"{self.prefix}{{{TAGS[number]}}}"

    def _of_key(self, key: str) -> str:
        return self._partition(zlib.crc32(key.encode("utf-8")) % PARTITIONS)

    def _of_hash(self, digest: bytes) -> str:
        return self._partition(digest[0] % PARTITIONS)

    def _run(self, client: Client, name: str, partition: str, *args: Any) -> Any:
        """Run a script on a partition, loading it first where the node lacks it."""
        arguments = (partition + "rd", partition, *args)
        try:
            return client.evalsha(self._shas[name], 1, *arguments)
        except redis.exceptions.NoScriptError:
            # EVAL caches the script on the node that runs it (SCRIPT LOAD on a cluster
            # would need every master up).
            return client.eval(_SCRIPTS[name], 1, *arguments)

    def _run_many(self, client: Client, calls: list[tuple[str, str, tuple[Any, ...]]]) -> list[Any]:
        """Scripts that only read, sent together: one pipeline per node of a cluster."""
        groups: dict[Any, list[int]] = {}
        for index, (_, partition, _) in enumerate(calls):
            node = client.get_node_from_key(partition + "rd") if self.cluster else None
            groups.setdefault(node, []).append(index)
        answers: list[Any] = [None] * len(calls)
        for node, indexes in groups.items():
            target = client.get_redis_connection(node) if node is not None else client
            for index, answer in zip(indexes, self._pipeline(target, calls, indexes), strict=True):
                answers[index] = answer
        return answers

    def _pipeline(
        self, target: Client, calls: list[tuple[str, str, tuple[Any, ...]]], indexes: list[int]
    ) -> list[Any]:
        for attempt in range(2):
            pipeline = target.pipeline(transaction=False)
            for index in indexes:
                name, partition, args = calls[index]
                pipeline.evalsha(self._shas[name], 1, partition + "rd", partition, *args)
            answers = pipeline.execute(raise_on_error=False)
            missing = any(isinstance(a, redis.exceptions.NoScriptError) for a in answers)
            if missing and attempt == 0:
                for name in {calls[index][0] for index in indexes}:
                    target.script_load(_SCRIPTS[name])
                continue
            for answer in answers:
                if isinstance(answer, redis.exceptions.ResponseError) and self.cluster:
                    # MOVED after a failover or a resharding: learn the layout again.
                    self._relearn()
                if isinstance(answer, Exception):
                    raise answer
            return list(answers)
        raise AssertionError("unreachable")  # pragma: no cover

    def _relearn(self) -> None:
        """Make the cluster client read the cluster's layout again."""
        with self._lock:
            client = self._client
        if client is not None:
            client.nodes_manager.initialize()

    def _run_acknowledged(self, client: Client, name: str, partition: str, *args: Any) -> Any:
        """A write, answered once MODERATION_REDIS_WAIT_REPLICAS replicas hold it too."""
        if not self.wait_replicas:
            return self._run(client, name, partition, *args)
        # WAIT counts the writes of its own connection: both go down one connection.
        node_client = (
            client.get_redis_connection(client.get_node_from_key(partition + "rd"))
            if self.cluster
            else client
        )
        for attempt in range(2):
            pipeline = node_client.pipeline(transaction=False)
            pipeline.evalsha(self._shas[name], 1, partition + "rd", partition, *args)
            # Half the budget: the answer must arrive within the socket's timeout.
            pipeline.execute_command("WAIT", self.wait_replicas, max(1, int(self.timeout * 500)))
            answer, acknowledged = pipeline.execute(raise_on_error=False)
            if isinstance(answer, redis.exceptions.NoScriptError) and attempt == 0:
                node_client.script_load(_SCRIPTS[name])
                continue
            if isinstance(answer, redis.exceptions.ResponseError) and self.cluster:
                # MOVED after a failover: the cluster client learns the new layout.
                self._relearn()
                raise answer
            if isinstance(answer, Exception):
                raise answer
            if isinstance(acknowledged, Exception):
                raise acknowledged
            if int(acknowledged) < self.wait_replicas:
                raise stores.StoreUnavailable(
                    f"Redis store: {acknowledged} of {self.wait_replicas} replicas acknowledged "
                    "the write in time"
                )
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    # Decisions

    def get(self, key: str) -> Decision | None:
        with self._call() as client:
            record = self._run(client, "get", self._of_key(key), key)
        return records.decode_decision(key, record) if record else None

    def save(self, decision: Decision, event: Event) -> Decision:
        key = decision.key
        with self._call() as client:
            read = self._run(client, "get", self._of_key(key), key) or b""
            for _ in range(stores.RACES):
                current = records.decode_decision(key, read) if read else None
                stands = rules.settle(current, decision)
                if stands is current:
                    return current
                record = records.encode_decision(stands)
                digest = records.sha_of(record)
                if digest:
                    # Indexed before it is saved: the index never misses a stored decision.
                    self._index(client, "index_add", digest, key)
                saved, found = self._run_acknowledged(
                    client,
                    "save",
                    self._of_key(key),
                    key,
                    record,
                    records.encode_event(rules.noted(stands, decision, event)),
                    read,
                    self._channel,
                    self._changes.sender + key,
                )
                if not saved:
                    # Written by another process since it was read: settle against that.
                    read = found or b""
                    continue
                previous = records.sha_of(read) if read else b""
                if previous and previous != digest:
                    self._unindex(client, previous, key)
                # The picture is judged: whoever held the right to judge it no longer needs it.
                client.delete(self.prefix + "lease:judge:" + stands.sha256)
                return records.decode_decision(key, record)
        raise stores.StoreUnavailable(f"Redis store: saving {key} kept losing races")

    def delete(self, key: str, event: Event) -> bool:
        with self._call() as client:
            old = self._run_acknowledged(
                client,
                "delete",
                self._of_key(key),
                key,
                records.encode_event(event),
                self._channel,
                self._changes.sender + key,
            )
            if old and records.sha_of(old):
                self._unindex(client, records.sha_of(old), key)
        return bool(old)

    def _index(self, client: Client, script: str, digest: bytes, key: str) -> None:
        self._run(client, script, self._of_hash(digest), digest[:HASH_PREFIX] + key.encode())

    def _unindex(self, client: Client, digest: bytes, key: str) -> None:
        """Drop an index entry, and put it back if a save of those bytes landed meanwhile."""
        self._index(client, "index_remove", digest, key)
        record = self._run(client, "get", self._of_key(key), key)
        if record and records.sha_of(record) == digest:
            self._index(client, "index_add", digest, key)

    def find_all_by_hash(self, sha256: str) -> list[Decision]:
        digest = records.raw_sha(sha256)
        if not digest:
            return []
        prefix = digest[:HASH_PREFIX]
        with self._call() as client:
            keys: list[str] = []
            after = b""
            partition = self._of_hash(digest)
            while True:
                done, last, *found = self._run(
                    client, "index_find", partition, prefix, after, scripts.CHUNKS_PER_CALL
                )
                keys += [_text(entry[HASH_PREFIX:]) for entry in found[::2]]
                if int(done):
                    break
                after = last
            answers = self._run_many(client, [("get", self._of_key(key), (key,)) for key in keys])
        decisions = [
            records.decode_decision(key, record)
            for key, record in zip(keys, answers, strict=True)
            if record
        ]
        return sorted(
            (decision for decision in decisions if decision.sha256 == sha256),
            key=lambda decision: decision.key,
        )

    def history(self, key: str) -> list[Event]:
        with self._call() as client:
            _, history, _ = self._run(client, "entry", self._of_key(key), key)
        return [records.decode_event(item) for item in records.split(history)]

    def page(
        self, status: Status | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Decision], str | None]:
        if limit < 1:
            raise ValueError(f"page limit must be at least 1, got {limit}")
        if status is None:
            chosen, wanted = "d", ""
        elif status is Status.APPROVED:
            # Most decisions are approved: read in key order, skipping the others.
            chosen, wanted = "d", "0"
        else:
            chosen, wanted = f"x{_STATUS_NUMBERS[status]}", str(_STATUS_NUMBERS[status])
        with self._call() as client:
            found = _Merge(self, client, chosen, wanted, cursor).take(limit + 1)
        page = [records.decode_decision(key, record) for key, record in found[:limit]]
        return page, (found[limit - 1][0] if len(found) > limit else None)

    def counts(self) -> dict[str, int]:
        with self._call() as client:
            pipeline = client.pipeline(transaction=False)
            for number in range(PARTITIONS):
                pipeline.hgetall(self._partition(number) + "n")
            tallies = pipeline.execute()
        counts: dict[str, int] = {}
        for tally in tallies:
            for name, value in tally.items():
                if int(value):
                    name = _text(name)
                    counts[name] = counts.get(name, 0) + int(value)
                    status = name.split(".")[0]
                    counts[status] = counts.get(status, 0) + int(value)
        return {name: value for name, value in counts.items() if value}

    # Recorded paths

    def add_results(self, key: str, paths: list[str]) -> None:
        if not paths:
            return
        encoded = [records.encode_path(key, path) for path in paths]
        with self._call() as client:
            self._run(client, "add_paths", self._of_key(key), key, *encoded)

    def results(self, key: str) -> list[str]:
        with self._call() as client:
            _, _, paths = self._run(client, "entry", self._of_key(key), key)
        return [records.decode_path(key, item) for item in records.split(paths)]

    def drop_results(self, key: str) -> None:
        with self._call() as client:
            self._run(client, "drop_paths", self._of_key(key), key)

    # Counters and leases

    def incr(self, name: str, amount: int = 1) -> None:
        with self._call() as client:
            client.hincrby(self.prefix + "counters", name, amount)

    def counters(self) -> dict[str, int]:
        with self._call() as client:
            values = client.hgetall(self.prefix + "counters")
        return {_text(name): int(value) for name, value in sorted(values.items())}

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        with self._call() as client:
            taken = client.eval(
                _RENEW, 1, self.prefix + "lease:" + name, holder, str(max(1, int(seconds * 1000)))
            )
        return bool(taken)

    def release_lease(self, name: str, holder: str) -> None:
        with self._call() as client:
            client.eval(_RELEASE, 1, self.prefix + "lease:" + name, holder)

    def compare_and_set(self, name: str, expected: str | None, value: str) -> str | None:
        # The braces make the name the key's hash tag.
        key = self.prefix + "{shared:" + name + "}"
        with self._call() as client:
            found = client.eval(
                _COMPARE_AND_SET, 1, key, "" if expected is None else "=" + expected, value
            )
        return None if found is None else _text(found)

    # Outbox: its keys share one hash tag, so each call runs on one node.

    @property
    def _outbox(self) -> str:
        return self.prefix + "{o}ob:"

    def enqueue(self, topic: str, key: str, payload: str) -> None:
        with self._call() as client:
            client.eval(_ENQUEUE, 1, self._outbox, topic, key, payload, repr(time.time()))

    def claim(self, now: float, lease: float, limit: int) -> list[stores.OutboxItem]:
        with self._call() as client:
            rows = client.eval(_CLAIM, 1, self._outbox, repr(now), repr(now + lease), limit)
        return [
            stores.OutboxItem(
                id=_text(id_),
                topic=_text(topic),
                key=_text(key),
                payload=_text(payload),
                attempts=int(attempts),
                created_at=float(created_at),
            )
            for id_, topic, key, payload, attempts, created_at in rows
        ]

    def complete(self, item: stores.OutboxItem) -> None:
        with self._call() as client:
            client.eval(_FINISH, 1, self._outbox, item.id, "done", "")

    def reschedule(self, item: stores.OutboxItem, next_at: float, error: str) -> None:
        with self._call() as client:
            pipeline = client.pipeline(transaction=not self.cluster)
            pipeline.zadd(self._outbox + "due", {item.id: next_at}, xx=True)
            pipeline.hset(self._outbox + "i:" + item.id, "error", error[:2000])
            pipeline.execute()

    def abandon(self, item: stores.OutboxItem, error: str) -> None:
        with self._call() as client:
            client.eval(_FINISH, 1, self._outbox, item.id, "abandoned", error[:2000])

    def outbox_counts(self) -> dict[str, int]:
        with self._call() as client:
            values = client.hgetall(self._outbox + "counts")
        return {_text(name): int(value) for name, value in sorted(values.items()) if int(value)}

    # Near-duplicates. Every command reads or writes one key: a picture's record
    # 'fp:{<sha256>}' (JSON: its fingerprints by frame, and the frames that reject it), one
    # hash per band of the index, 'fpx:<band>' (field: the band's value in hex; value: its
    # entries end to end, each the 24-byte fingerprint, the 32-byte content hash, and a
    # byte, 1 when the frame rejects its picture), and
    # 'dup:{<sha256>}' (a set: keys of its duplicates' decisions). Four hashes rather
    # than a set per band value: a lookup is four HMGETs, not some seventy commands, and
    # an entry costs its 57 bytes and no key of its own. On a cluster the four hashes sit
    # on up to four nodes, and each picture's record and set on the slot of its hash.

    def _band_key(self, band: int) -> str:
        return f"{self.prefix}fpx:{band}"

    def _on_nodes(self, client: Client, calls: list[tuple[str, str, tuple[Any, ...]]]) -> list[Any]:
        """Commands on one key each (that key, the command, its arguments) sent together: one
        pipeline, or on a cluster one per node (a cluster's pipeline refuses EVAL)."""
        groups: dict[Any, list[int]] = {}
        for index, (key, _, _) in enumerate(calls):
            node = client.get_node_from_key(key) if self.cluster else None
            groups.setdefault(node, []).append(index)
        answers: list[Any] = [None] * len(calls)
        for node, indexes in groups.items():
            target = client.get_redis_connection(node) if node is not None else client
            pipeline = target.pipeline(transaction=False)
            for index in indexes:
                _, command, arguments = calls[index]
                getattr(pipeline, command)(*arguments)
            try:
                found = pipeline.execute()
            except redis.exceptions.ResponseError:
                if self.cluster:
                    # MOVED after a failover or a resharding: learn the layout again.
                    self._relearn()
                raise
            for index, answer in zip(indexes, found, strict=True):
                answers[index] = answer
        return answers

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
        old: set[tuple[int, str, bytes]] | None = None,
    ) -> None:
        record = self.prefix + "fp:{" + sha256 + "}"
        if old is None:
            old = _entries(sha256, *_fingerprint_record(client.get(record)))
        new = _entries(sha256, prints, rejecting)
        # The index first, the record last: a call cut short leaves the record naming
        # what the index held before, and the next call mends both. An entry left over
        # names a picture whose decision lookups read anyway, and so is never believed.
        changes = [(band, field_, entry, "0") for band, field_, entry in old - new]
        changes += [(band, field_, entry, "1") for band, field_, entry in new - old]
        self._on_nodes(
            client,
            [
                (self._band_key(band), "eval", (_INDEX_ENTRY, 1, self._band_key(band), *rest))
                for band, *rest in changes
            ],
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
            prints, _ = _fingerprint_record(client.get(self.prefix + "fp:{" + sha256 + "}"))
        return prints

    def indexed_near(
        self, probes: Sequence[Collection[int]], close: Callable[[int], bool]
    ) -> list[stores.Indexed]:
        asked = [(band, sorted(values)) for band, values in enumerate(probes) if values]
        if not asked:
            return []
        with self._call() as client:
            answers = self._on_nodes(
                client,
                [
                    (
                        self._band_key(band),
                        "hmget",
                        (self._band_key(band), [_field(value) for value in values]),
                    )
                    for band, values in asked
                ],
            )
        kept = {
            entries[start : start + _ENTRY]
            for answer in answers
            for entries in answer
            if entries
            for start in range(0, len(entries), _ENTRY)
            if close(int.from_bytes(entries[start : start + 8], "big"))
        }
        return [
            stores.Indexed(entry[24:56].hex(), Print.from_bytes(entry[:24]), entry[56:] == b"\x01")
            for entry in kept
        ]

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

    def _index_every_picture(self, client: Client) -> int:
        """Every picture's kept fingerprints into this format's index (format 2 indexed
        those of rejected pictures only, in 'fpi:<band>'); how many were converted."""
        converted = 0
        start = len(self.prefix + "fp:{")
        for name in client.scan_iter(_glob_escape(self.prefix + "fp:{") + "*", 1000):
            body = client.get(name)
            if not body or "rejecting" in json.loads(body):
                continue
            sha256 = _text(name)[start:-1]
            prints, rejecting = _fingerprint_record(body)
            self._put_fingerprints(client, sha256, prints, rejecting, old=set())
            converted += 1
        return converted

    # Change notifications

    @property
    def _channel(self) -> str:
        return self.prefix + "changes"

    def subscribe(self, changed: Callable[[str | None], None]) -> None:
        self._changes.subscribe(changed)

    def _listener(self) -> redis.Redis:
        """A connection of its own for the subscription: on a cluster, to a node picked at
        random (a cluster forwards every classic message to every node)."""
        # health_check_interval pings an idle connection, so one that silently stopped
        # carrying traffic is noticed within seconds, not at the kernel's keepalive.
        options: dict[str, Any] = {
            "socket_connect_timeout": self.timeout,
            "socket_keepalive": True,
            "health_check_interval": 5,
        }
        if not self.cluster:
            return redis.Redis.from_url(self.url, **options)
        nodes = [node for node in self._redis().get_nodes() if node.redis_connection is not None]
        if not nodes:
            raise redis.exceptions.ConnectionError("no node of the cluster is known")
        pool = random.choice(nodes).redis_connection.connection_pool  # noqa: S311 - spreads load
        kwargs = {**pool.connection_kwargs, **options, "socket_timeout": None}
        return redis.Redis(
            connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        )

    def _listen(self) -> None:
        """Forward change notifications; reconnect with backoff when Redis goes away."""
        delay = 0.1
        while not self._changes.closed.is_set():
            try:
                client = self._listener()
            except _ERRORS as error:
                logger.warning("decision change notifications interrupted: %s", error)
                self._changes.closed.wait(delay)
                delay = min(delay * 2, 2.0)
                continue
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                # Changes made while nobody listened are unknown: forget everything.
                self._changes.notify(None)
                delay = 0.1
                while not self._changes.closed.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        data = _text(message["data"])
                        # 32 hex digits of the sender, then the key.
                        if data[:32] != self._changes.sender:
                            self._changes.notify(data[32:])
            except _ERRORS as error:
                logger.warning("decision change notifications interrupted: %s", error)
                self._changes.closed.wait(delay)
                delay = min(delay * 2, 2.0)
            finally:
                pubsub.close()
                client.close()

    def migrate(self) -> int:
        """Convert the earlier formats under this prefix: the first (a JSON document, a
        history list, a results set and index entries per decision, all on one server),
        and format 2 (an index of rejected pictures' fingerprints only).

        Pictures that already have an entry in this format keep it. Once everything is
        copied the format key is set and the old keys are deleted; run again after an
        interruption.
        """
        try:
            client = self._redis()
            converted = 0
            names: set[str] = set()
            for kind in ("d:", "h:", "r:"):
                pattern = _glob_escape(self.prefix + kind) + "*"
                start = len(self.prefix) + len(kind)
                names.update(_text(name)[start:] for name in client.scan_iter(pattern, 1000))
            for key in sorted(names):
                converted += self._convert(client, key)
            for name in client.scan_iter(_glob_escape(self.prefix + "ob:") + "*", 1000):
                suffix = _text(name)[len(self.prefix) + len("ob:") :]
                client.rename(name, self._outbox + suffix)
            if _text(client.get(self.prefix + "format")) != FORMAT:
                converted = max(converted, self._index_every_picture(client))
            client.set(self.prefix + "format", FORMAT)
            for band in range(4):
                client.delete(f"{self.prefix}fpi:{band}")
            for kind in ("d:", "h:", "r:", "sha:", "st:", "ss:"):
                for name in client.scan_iter(_glob_escape(self.prefix + kind) + "*", 1000):
                    client.delete(name)
            client.delete(self.prefix + "all")
            self._checked = False
            return converted
        except _ERRORS as error:
            raise stores.StoreUnavailable(
                f"Redis store: {type(error).__name__}: {error}"
            ) from error

    def _convert(self, client: Client, key: str) -> int:
        body = client.get(self.prefix + "d:" + key)
        record = records.encode_decision(Decision.from_json(body)) if body else b""
        history = records.join(
            [
                records.encode_event(Event.from_json(item))
                for item in client.lrange(self.prefix + "h:" + key, 0, -1)
            ]
        )
        paths = records.join(
            [
                records.encode_path(key, _text(path))
                for path in client.zrange(self.prefix + "r:" + key, 0, -1)
            ]
        )
        if record and records.sha_of(record):
            self._index(client, "index_add", records.sha_of(record), key)
        return int(self._run(client, "import", self._of_key(key), key, record, history, paths))

    def close(self) -> None:
        self._changes.closed.set()
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None


@dataclass
class _Stream:
    """One partition's share of a listing: what it answered, and how far it has read."""

    partition: str
    after: str | None
    done: bool = False
    found: list[tuple[str, bytes]] = field(default_factory=list)


class _Merge:
    """Decisions of every partition in key order, reading each partition only as far as
    the merge needs: about limit + PARTITIONS entries for a page of `limit`."""

    def __init__(self, store: Store, client: Client, chosen: str, wanted: str, after: str | None):
        self.store, self.client, self.chosen, self.wanted = store, client, chosen, wanted
        self.streams = [_Stream(store._partition(number), after) for number in range(PARTITIONS)]

    def _read(self, streams: list[_Stream], each: int) -> None:
        calls = [
            (
                "page",
                stream.partition,
                (
                    self.chosen,
                    self.wanted,
                    stream.after or "",
                    "1" if stream.after is not None else "0",
                    each,
                    scripts.CHUNKS_PER_CALL,
                ),
            )
            for stream in streams
        ]
        for stream, answer in zip(streams, self.store._run_many(self.client, calls), strict=True):
            done, last, *found = answer
            stream.done = bool(int(done))
            if found or last:
                stream.after = _text(last)
            stream.found += [
                (_text(key), record) for key, record in zip(found[::2], found[1::2], strict=True)
            ]

    def take(self, count: int) -> list[tuple[str, bytes]]:
        taken: list[tuple[str, bytes]] = []
        waiting = list(self.streams)
        each = -(-2 * count // PARTITIONS) + 1
        while True:
            self._read(waiting, each)
            open_streams = [s for s in self.streams if not s.done]
            # Every stream has read all its keys up to the frontier: what is found up to
            # it can be given out in order.
            frontier = min((s.after or "" for s in open_streams), default=None)
            ready = [
                (key, record)
                for s in self.streams
                for key, record in s.found
                if frontier is None or key <= frontier
            ]
            for item in heapq.nsmallest(count - len(taken), ready):
                taken.append(item)
            given = {key for key, _ in taken}
            for s in self.streams:
                s.found = [item for item in s.found if item[0] not in given]
            if len(taken) >= count or frontier is None:
                return taken
            waiting = [s for s in open_streams if (s.after or "") == frontier]
            each = max(each, count - len(taken))


def _glob_escape(text: str) -> str:
    """A literal text inside a SCAN MATCH pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _field(value: int) -> str:
    """A band value as the field of its band's hash."""
    return f"{value:0{BAND_BITS // 4}x}"


def _fingerprint_record(body: Any) -> tuple[dict[int, Print], list[int]]:
    """A picture's fingerprints and the frames that reject it, from its record (or none);
    format 2 named them 'indexed'."""
    if not body:
        return {}, []
    data = json.loads(body)
    prints = {int(frame): Print.from_hex(text) for frame, text in data.get("prints", {}).items()}
    return prints, [int(frame) for frame in data.get("rejecting", data.get("indexed", []))]


def _entries(
    sha256: str, prints: Mapping[int, Print], rejecting: Collection[int]
) -> set[tuple[int, str, bytes]]:
    """A picture's entries in the index: (band, band value's field, entry)."""
    digest = bytes.fromhex(sha256)
    return {
        (band, _field(value), print_.to_bytes() + digest + bytes([frame in rejecting]))
        for frame, print_ in prints.items()
        for band, value in enumerate(print_.bands())
    }


_SCRIPTS = {
    "get": scripts.GET,
    "save": scripts.SAVE,
    "delete": scripts.DELETE,
    "entry": scripts.ENTRY,
    "add_paths": scripts.ADD_PATHS,
    "drop_paths": scripts.DROP_PATHS,
    "page": scripts.PAGE,
    "index_add": scripts.INDEX_ADD,
    "index_remove": scripts.INDEX_REMOVE,
    "index_find": scripts.INDEX_FIND,
    "import": scripts.IMPORT,
}

_ENQUEUE = """
local p, topic, key = KEYS[1], ARGV[1], ARGV[2]
local id = tostring(redis.call('INCR', p .. 'seq'))
redis.call('HSET', p .. 'i:' .. id, 'topic', topic, 'key', key, 'payload', ARGV[3],
  'attempts', 0, 'created_at', ARGV[4])
redis.call('RPUSH', p .. 'q:' .. topic .. ':' .. key, id)
redis.call('ZADD', p .. 'due', ARGV[4], id)
redis.call('HINCRBY', p .. 'counts', topic .. '.pending', 1)
return id
"""

_CLAIM = """
local p, now, later, limit = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local claimed = {}
local ids = redis.call('ZRANGEBYSCORE', p .. 'due', '-inf', now, 'LIMIT', 0, limit * 10)
for _, id in ipairs(ids) do
  if #claimed >= limit then break end
  local item = redis.call('HMGET', p .. 'i:' .. id, 'topic', 'key', 'payload', 'created_at')
  local head = redis.call('LINDEX', p .. 'q:' .. item[1] .. ':' .. item[2], 0)
  if head == id then
    redis.call('ZADD', p .. 'due', later, id)
    local attempts = redis.call('HINCRBY', p .. 'i:' .. id, 'attempts', 1)
    table.insert(claimed, {id, item[1], item[2], item[3], tostring(attempts), item[4]})
  end
end
return claimed
"""

_FINISH = """
local p, id, state, err = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local item = redis.call('HMGET', p .. 'i:' .. id, 'topic', 'key')
if not item[1] then return 0 end
redis.call('ZREM', p .. 'due', id)
redis.call('LREM', p .. 'q:' .. item[1] .. ':' .. item[2], 1, id)
redis.call('HINCRBY', p .. 'counts', item[1] .. '.pending', -1)
if state == 'done' then
  redis.call('DEL', p .. 'i:' .. id)
else
  redis.call('HSET', p .. 'i:' .. id, 'state', 'abandoned', 'error', err)
  redis.call('HINCRBY', p .. 'counts', item[1] .. '.abandoned', 1)
end
return 1
"""

# One entry of a band's hash added ('1') or removed ('0'): entries are compared whole,
# 56 bytes at a time, so that no entry is mistaken for the bytes across two others.
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
# An index entry: a fingerprint (24 bytes), its picture's content hash (32 bytes), and
# whether the frame rejects its picture (1 byte).
_ENTRY = 57

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_RENEW = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 or 0
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# One key, so one hash slot: the same script runs on Redis Cluster.
_COMPARE_AND_SET = """
local found = redis.call('GET', KEYS[1])
if (not found and ARGV[1] == '') or (found and ARGV[1] == '=' .. found) then
  redis.call('SET', KEYS[1], ARGV[2])
end
return found
"""
