"""Decisions in Redis or Redis Cluster, shared by every Thumbor process of every node.

Each picture's decision, history and recorded paths are one entry of a sorted map kept
in chunks (``redis_scripts``), in one of PARTITIONS partitions chosen by its key; a
partition's keys share a hash tag, and the tags' slots are spread evenly over Redis
Cluster's 16,384. Every write of a decision is one Lua script on one partition:
atomic, and on one node of a cluster. The content-hash index is partitioned by hash,
so a save adds the new hash's entry before the decision and removes the old one after
(a reader checks what it finds against the decision). Listing merges the partitions in
key order; statuses other than approved have an index of their own, and one by time
(the time code of the last change, then the key), kept by the same script that writes
the decision; a process builds it once for data saved before it existed. The index of
judged pictures' fingerprints, the links to their duplicates and the shared values
(the call rate) live beside the partitions, each command on one key.

Each partition also holds its outbox (``redis_shared``): a save or a forget writes the
decision and the webhooks and CDN purges it calls for in one script, in one slot.

Every change is published (classic pub/sub, which a cluster forwards to every node) so
that each process drops the decision from its memory at once; the cache TTL is the
backstop when a notification is missed. Durability is Redis's: AOF on a single server,
and ``MODERATION_REDIS_WAIT_REPLICAS`` through a cluster's failovers: a write waits for
as many replicas as its master has now, up to that number, and one they did not
acknowledge in time is undone before it is answered as failed.

The layers below the decisions: ``redis_client`` (connections, clusters, partitions,
scripts), ``redis_shared`` (counters, leases, shared values, the outbox), ``redis_index``
(fingerprints, the index, duplicates), ``redis_listing`` (pages in key order); the
decisions' scripts are ``redis_scripts``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
import redis.exceptions

from thumbor_rekognition import rules, stores
from thumbor_rekognition.decision import Decision, Event, Status
from thumbor_rekognition.stores import records
from thumbor_rekognition.stores import redis_scripts as scripts
from thumbor_rekognition.stores.redis_client import (
    _ERRORS,
    FORMAT,
    PARTITIONS,
    TAGS,
    Client,
    NotAcknowledged,
    _glob_escape,
    _text,
)
from thumbor_rekognition.stores.redis_index import (
    FingerprintIndex,
)
from thumbor_rekognition.stores.redis_listing import (
    _STATUS_NUMBERS,
    TIMED_MARK,
    Merge,
    by_time,
    order_by_time,
)

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

# The partitions' hash tags are read from here too.
__all__ = ["PARTITIONS", "TAGS", "Store"]

logger = logging.getLogger(__name__)

# Who undoes a write its replicas did not acknowledge, in its history.
UNDONE_BY = "thumbor-moderation"

# Bytes of a content hash that its index keeps: readers check the whole hash.
HASH_PREFIX = 8


class Store(FingerprintIndex):
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
        super().__init__(
            settings,
            url=url,
            prefix=prefix,
            timeout=timeout,
            cluster=cluster,
            wait_replicas=wait_replicas,
        )
        self._changes = stores.ChangeFeed(self._listen)

    def get(self, key: str) -> Decision | None:
        with self._call() as client:
            record = self._run(client, "get", self._of_key(key), key)
        return records.decode_decision(key, record) if record else None

    def save(self, decision: Decision, event: Event) -> Decision:
        key = decision.key
        with self._call() as client:
            read, paths = self._entry(client, key)
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
                noted = rules.noted(stands, decision, event)
                try:
                    saved, *found = self._run_acknowledged(
                        client,
                        "save",
                        self._of_key(key),
                        key,
                        record,
                        records.encode_event(noted),
                        read,
                        paths,
                        self._channel,
                        self._changes.sender + key,
                        *self._entries(key, current, stands, noted, paths),
                    )
                except NotAcknowledged as error:
                    if int(error.answer[0]):
                        self._undo(client, key, (record, stands), (read, current), paths)
                    raise
                if not saved:
                    # Written by another process since it was read: settle against that.
                    read, paths = found[0] or b"", found[1] or b""
                    continue
                previous = records.sha_of(read) if read else b""
                self._tidy(client, key, previous if previous != digest else b"", stands.sha256)
                return records.decode_decision(key, record)
        raise stores.StoreUnavailable(f"Redis store: saving {key} kept losing races")

    def delete(self, key: str, event: Event) -> bool:
        with self._call() as client:
            read, paths = self._entry(client, key)
            for _ in range(stores.RACES):
                if not read:
                    return False
                current = records.decode_decision(key, read)
                try:
                    done, *found = self._run_acknowledged(
                        client,
                        "delete",
                        self._of_key(key),
                        key,
                        records.encode_event(event),
                        read,
                        paths,
                        self._channel,
                        self._changes.sender + key,
                        *self._entries(key, current, None, event, paths),
                    )
                except NotAcknowledged as error:
                    if int(error.answer[0]):
                        self._undo(client, key, (b"", None), (read, current), paths)
                    raise
                if not done:
                    read, paths = found[0] or b"", found[1] or b""
                    continue
                self._tidy(client, key, records.sha_of(read), "")
                return True
        raise stores.StoreUnavailable(f"Redis store: forgetting {key} kept losing races")

    def _tidy(self, client: Client, key: str, unindexed: bytes, judged: str) -> None:
        """What follows a saved change, on other keys (other nodes of a cluster): drop the
        index entry of the bytes it no longer names, and the lease of whoever judged the
        picture. The change is saved and announced: a failure here must not answer it as
        failed; an entry left behind is checked by readers, a lease expires."""
        try:
            if unindexed:
                self._unindex(client, unindexed, key)
            if judged:
                client.delete(self.prefix + "lease:judge:" + judged)
        except (*_ERRORS, stores.StoreUnavailable) as error:
            logger.warning("%s saved; index or lease not tidied: %s", key, error)

    def _undo(
        self,
        client: Client,
        key: str,
        written: tuple[bytes, Decision | None],
        before: tuple[bytes, Decision | None],
        paths: bytes,
    ) -> None:
        """Put back what a write replaced when its replicas did not acknowledge it, so
        that a write answered as failed changed nothing; announced as the change back,
        in case the first was delivered meanwhile. Never raises: if the master cannot
        take it either, what it holds is the write and its announcements, together."""
        (record, changed), (old, previous) = written, before
        event = Event(
            previous.status if previous else None,
            previous.source if previous else None,
            UNDONE_BY,
            "write not acknowledged by a replica in time: undone",
        )
        try:
            done, *_ = self._run_acknowledged(
                client,
                "save",
                self._of_key(key),
                key,
                old,
                records.encode_event(event),
                record,
                paths,
                self._channel,
                self._changes.sender + key,
                *self._entries(key, changed, previous, event, paths),
            )
        except NotAcknowledged as error:
            if int(error.answer[0]):
                logger.warning("write of %s undone, on its master only: %s", key, error)
            else:
                logger.error("write of %s not acknowledged, and changed again since", key)
            return
        except stores.StoreUnavailable as error:
            logger.error("write of %s not acknowledged, and not undone: %s", key, error)
            return
        if not int(done):
            logger.error("write of %s not acknowledged, and changed again since", key)

    def _entry(self, client: Client, key: str) -> tuple[bytes, bytes]:
        """A key's record and recorded paths, as the scripts compare them."""
        record, _, paths = self._run(client, "entry", self._of_key(key), key)
        return record or b"", paths or b""

    def _entries(
        self,
        key: str,
        previous: Decision | None,
        current: Decision | None,
        event: Event,
        paths: bytes,
    ) -> list[str]:
        """The arguments that end a save or a delete: now, the time codes of the decision
        before and after, then its outbox entries."""
        recorded = [records.decode_path(key, path) for path in records.split(paths)]
        entries = self.announcements(previous, current, event, recorded)
        codes = [stores.time_code(d.updated_at) if d else "" for d in (previous, current)]
        return [repr(time.time()), *codes, *(part for entry in entries for part in entry)]

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
            found = Merge(self, client, chosen, wanted, cursor).take(limit + 1)
        page = [records.decode_decision(key, record) for key, record in found[:limit]]
        return page, (found[limit - 1][0] if len(found) > limit else None)

    def page_by_time(
        self, status: Status, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Decision], str | None]:
        stores.check_timed(status, limit)
        with self._call() as client:
            return by_time(self, client, status, limit, cursor)

    def _check_format(self, client: Client) -> None:
        """The format, then the index by time, built once for data saved before it existed
        (each process looks at its mark once)."""
        if not client.exists(self.prefix + "format"):
            # Nothing saved yet under this prefix: nothing to list.
            client.set(self.prefix + TIMED_MARK, "1", nx=True)
        super()._check_format(client)
        if not client.exists(self.prefix + TIMED_MARK):
            order_by_time(self, client)

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

    def close(self) -> None:
        self._changes.closed.set()
        super().close()

    def migrate(self) -> int:
        """Convert the earlier formats under this prefix: the first (a JSON document, a
        history list, a results set and index entries per decision, all on one server),
        and the former fingerprint's index (formats 2 and 3), which is deleted.

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
                client.rename(name, self._legacy_outbox + suffix)
            self._drop_former_fingerprints(client)
            client.set(self.prefix + "format", FORMAT)
            for kind in ("d:", "h:", "r:", "sha:", "st:", "ss:"):
                for name in client.scan_iter(_glob_escape(self.prefix + kind) + "*", 1000):
                    client.delete(name)
            client.delete(self.prefix + "all")
            converted = max(converted, order_by_time(self, client))
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
        code = stores.time_code(Decision.from_json(body).updated_at) if body else ""
        return int(
            self._run(client, "import", self._of_key(key), key, record, history, paths, code)
        )
