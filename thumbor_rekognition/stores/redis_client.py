"""The ground floor of the Redis store: a client per process for one Redis or a Redis
Cluster, the data's format under the prefix, the partitions (hash tags spread over the
cluster's slots), and scripts run on them, in pipelines per node, acknowledged by replicas
when asked."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.retry import Retry

from thumbor_rekognition import stores
from thumbor_rekognition.stores import redis_scripts as scripts

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings


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


Client = Any  # redis.Redis or redis.RedisCluster


# A cluster that cannot be reached at all raises the second.
_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)


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
    "enqueue": scripts.ENQUEUE,
    "time_add": scripts.TIME_ADD,
}


# How long the number of a master's replicas is believed before it is asked again: a
# replica attached meanwhile starts acknowledging writes at most this late.
REPLICAS_SECONDS = 2.0


class NotAcknowledged(stores.StoreUnavailable):
    """A write that landed on its master but not on the replicas it waited for."""

    def __init__(self, answer: Any, message: str) -> None:
        super().__init__(message)
        self.answer = answer


def _glob_escape(text: str) -> str:
    """A literal text inside a SCAN MATCH pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Connected(stores.Store):
    """A client per process (Redis or Redis Cluster), the data's format under the prefix,
    its partitions, and the scripts run on them."""

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
        # Replicas of each master, by node name, and when its ROLE told.
        self._known_replicas: dict[str, tuple[int, float]] = {}

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
        """A write, answered once the replicas its master has (at most
        MODERATION_REDIS_WAIT_REPLICAS) hold it too; NotAcknowledged when they did not."""
        if not self.wait_replicas:
            return self._run(client, name, partition, *args)
        # WAIT counts the writes of its own connection: both go down one connection.
        node = client.get_node_from_key(partition + "rd") if self.cluster else None
        node_client = client.get_redis_connection(node) if node is not None else client
        place = node.name if node is not None else ""
        wanted = min(self.wait_replicas, self._replicas(place, node_client))
        for attempt in range(2):
            pipeline = node_client.pipeline(transaction=False)
            pipeline.evalsha(self._shas[name], 1, partition + "rd", partition, *args)
            # Half the budget: the answer must arrive within the socket's timeout.
            pipeline.execute_command("WAIT", wanted, max(1, int(self.timeout * 500)))
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
            if int(acknowledged) < wanted:
                # A master that lost replicas since it was asked (a failover): what it has
                # now is what can acknowledge.
                wanted = min(wanted, self._replicas(place, node_client, again=True))
            if int(acknowledged) < wanted:
                raise NotAcknowledged(
                    answer,
                    f"Redis store: {acknowledged} of {wanted} replicas acknowledged "
                    "the write in time",
                )
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _replicas(self, place: str, node_client: Client, again: bool = False) -> int:
        """How many replicas the master at place has now, as its ROLE tells (asked again
        after REPLICAS_SECONDS, or at once with again)."""
        known = self._known_replicas.get(place)
        if known is not None and not again and time.monotonic() - known[1] < REPLICAS_SECONDS:
            return known[0]
        role = node_client.execute_command("ROLE")
        count = len(role[2]) if _text(role[0]) == "master" else 0
        self._known_replicas[place] = (count, time.monotonic())
        return count

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

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None
