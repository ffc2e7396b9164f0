"""Decisions in Redis, shared by every Thumbor process of every node.

Writes that must not race (an automatic decision landing on a manual one, the indexes
of a decision) run as Lua scripts, atomically on the server. Every change is published
on a channel so that each process drops the decision from its memory at once; the
cache TTL is the backstop when a notification is missed. Redis standalone or Sentinel;
not Redis Cluster (keys of one decision span hash slots). Durability is Redis's: run
it with AOF (``appendonly yes``) so that an answered decision survives a restart.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import redis
import redis.exceptions

from thumbor_rekognition import stores
from thumbor_rekognition.decision import Decision, Event, Source, Status
from thumbor_rekognition.fingerprint import BAND_BITS, Print

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

logger = logging.getLogger(__name__)

_SAVE = """
local p, key = ARGV[1], ARGV[2]
local body, sha, status, source = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local dkey = p .. 'd:' .. key
local current = redis.call('GET', dkey)
if current then
  local old = cjson.decode(current)
  if ARGV[8] == '1' and old['source'] == 'manual' and old['sha256'] == sha then
    return current
  end
  redis.call('SREM', p .. 'sha:' .. old['sha256'], key)
  redis.call('ZREM', p .. 'st:' .. old['status'], key)
  redis.call('ZREM', p .. 'ss:' .. old['status'] .. '.' .. old['source'], key)
end
redis.call('SET', dkey, body)
redis.call('SADD', p .. 'sha:' .. sha, key)
redis.call('ZADD', p .. 'all', 0, key)
redis.call('ZADD', p .. 'st:' .. status, 0, key)
redis.call('ZADD', p .. 'ss:' .. status .. '.' .. source, 0, key)
redis.call('RPUSH', p .. 'h:' .. key, ARGV[7])
redis.call('DEL', p .. 'lease:judge:' .. sha)
redis.call('PUBLISH', p .. 'changes', ARGV[9] .. key)
return body
"""

_DELETE = """
local p, key = ARGV[1], ARGV[2]
local dkey = p .. 'd:' .. key
local current = redis.call('GET', dkey)
if not current then
  return 0
end
local old = cjson.decode(current)
redis.call('DEL', dkey)
redis.call('SREM', p .. 'sha:' .. old['sha256'], key)
redis.call('ZREM', p .. 'all', key)
redis.call('ZREM', p .. 'st:' .. old['status'], key)
redis.call('ZREM', p .. 'ss:' .. old['status'] .. '.' .. old['source'], key)
redis.call('RPUSH', p .. 'h:' .. key, ARGV[3])
redis.call('PUBLISH', p .. 'changes', ARGV[4] .. key)
return 1
"""

_ENQUEUE = """
local p, topic, key = ARGV[1], ARGV[2], ARGV[3]
local id = tostring(redis.call('INCR', p .. 'ob:seq'))
redis.call('HSET', p .. 'ob:i:' .. id, 'topic', topic, 'key', key, 'payload', ARGV[4],
  'attempts', 0, 'created_at', ARGV[5])
redis.call('RPUSH', p .. 'ob:q:' .. topic .. ':' .. key, id)
redis.call('ZADD', p .. 'ob:due', ARGV[5], id)
redis.call('HINCRBY', p .. 'ob:counts', topic .. '.pending', 1)
return id
"""

_CLAIM = """
local p, now, later, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local claimed = {}
local ids = redis.call('ZRANGEBYSCORE', p .. 'ob:due', '-inf', now, 'LIMIT', 0, limit * 10)
for _, id in ipairs(ids) do
  if #claimed >= limit then break end
  local item = redis.call('HMGET', p .. 'ob:i:' .. id, 'topic', 'key', 'payload', 'created_at')
  local head = redis.call('LINDEX', p .. 'ob:q:' .. item[1] .. ':' .. item[2], 0)
  if head == id then
    redis.call('ZADD', p .. 'ob:due', later, id)
    local attempts = redis.call('HINCRBY', p .. 'ob:i:' .. id, 'attempts', 1)
    table.insert(claimed, {id, item[1], item[2], item[3], tostring(attempts), item[4]})
  end
end
return claimed
"""

_FINISH = """
local p, id, state, err = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local item = redis.call('HMGET', p .. 'ob:i:' .. id, 'topic', 'key')
if not item[1] then return 0 end
redis.call('ZREM', p .. 'ob:due', id)
redis.call('LREM', p .. 'ob:q:' .. item[1] .. ':' .. item[2], 1, id)
redis.call('HINCRBY', p .. 'ob:counts', item[1] .. '.pending', -1)
if state == 'done' then
  redis.call('DEL', p .. 'ob:i:' .. id)
else
  redis.call('HSET', p .. 'ob:i:' .. id, 'state', 'abandoned', 'error', err)
  redis.call('HINCRBY', p .. 'ob:counts', item[1] .. '.abandoned', 1)
end
return 1
"""

_ADD_RESULTS = """
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local n = tonumber(last[2] or '0')
for _, path in ipairs(ARGV) do
  if not redis.call('ZSCORE', KEYS[1], path) then
    n = n + 1
    redis.call('ZADD', KEYS[1], n, path)
  end
end
return n
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
# An index entry: a fingerprint (24 bytes) and its picture's content hash (32 bytes).
_ENTRY = 56

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
    ) -> None:
        super().__init__(settings)
        self.url = url or (settings.redis_url.value if settings else "redis://127.0.0.1:6379/0")
        self.prefix = (
            prefix if prefix is not None else (settings.redis_prefix if settings else "moderation:")
        )
        self.timeout = timeout or (settings.store_timeout if settings else 0.5)
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._pid = 0
        self._changes = stores.ChangeFeed(self._listen)

    def _redis(self) -> redis.Redis:
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client = redis.Redis.from_url(
                    self.url,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    health_check_interval=30,
                )
                self._pid = os.getpid()
            return self._client

    @contextmanager
    def _call(self) -> Iterator[redis.Redis]:
        try:
            yield self._redis()
        except redis.exceptions.RedisError as error:
            raise stores.StoreUnavailable(
                f"Redis store: {type(error).__name__}: {error}"
            ) from error

    def _key(self, *parts: str) -> str:
        return self.prefix + "".join(parts)

    def get(self, key: str) -> Decision | None:
        with self._call() as client:
            body = client.get(self._key("d:", key))
        return Decision.from_json(body) if body else None

    def _decisions(self, client: redis.Redis, keys: list[str]) -> list[Decision]:
        if not keys:
            return []
        bodies = client.mget([self._key("d:", key) for key in keys])
        return [Decision.from_json(body) for body in bodies if body]

    def find_all_by_hash(self, sha256: str) -> list[Decision]:
        if not sha256:
            return []
        with self._call() as client:
            keys = sorted(_text(member) for member in client.smembers(self._key("sha:", sha256)))
            return self._decisions(client, keys)

    def find_by_hash(self, sha256: str) -> Decision | None:
        standing = [d for d in self.find_all_by_hash(sha256) if not d.needs_retry]
        if not standing:
            return None
        return max(standing, key=lambda d: (d.source is Source.MANUAL, d.updated_at))

    def save(self, decision: Decision, event: Event) -> Decision:
        with self._call() as client:
            body = client.eval(
                _SAVE,
                0,
                self.prefix,
                decision.key,
                decision.to_json(),
                decision.sha256,
                decision.status.value,
                decision.source.value,
                _event_json(event),
                "1" if decision.source is not Source.MANUAL else "0",
                self._changes.sender,
            )
        return Decision.from_json(body)

    def delete(self, key: str, event: Event) -> bool:
        with self._call() as client:
            deleted = client.eval(
                _DELETE, 0, self.prefix, key, _event_json(event), self._changes.sender
            )
        return bool(deleted)

    def history(self, key: str) -> list[Event]:
        with self._call() as client:
            items = client.lrange(self._key("h:", key), 0, -1)
        return [Event.from_json(item) for item in items]

    def page(
        self, status: Status | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Decision], str | None]:
        if limit < 1:
            raise ValueError(f"page limit must be at least 1, got {limit}")
        index = self._key("st:", status.value) if status else self._key("all")
        start = f"({cursor}" if cursor else "-"
        with self._call() as client:
            keys = [_text(k) for k in client.zrangebylex(index, start, "+", start=0, num=limit + 1)]
            decisions = {d.key: d for d in self._decisions(client, keys[:limit])}
        page = [decisions[key] for key in keys[:limit] if key in decisions]
        return page, (keys[limit - 1] if len(keys) > limit else None)

    def counts(self) -> dict[str, int]:
        names = [(status.value, source.value) for status in Status for source in Source]
        with self._call() as client:
            pipeline = client.pipeline(transaction=False)
            for status, source in names:
                pipeline.zcard(self._key("ss:", f"{status}.{source}"))
            values = pipeline.execute()
        counts: dict[str, int] = {}
        for (status, source), value in zip(names, values, strict=True):
            if value:
                counts[status] = counts.get(status, 0) + int(value)
                counts[f"{status}.{source}"] = int(value)
        return counts

    def add_results(self, key: str, paths: list[str]) -> None:
        if not paths:
            return
        with self._call() as client:
            # Numbered in the order recorded, whatever the clocks of the nodes say.
            client.eval(_ADD_RESULTS, 1, self._key("r:", key), *paths)

    def results(self, key: str) -> list[str]:
        with self._call() as client:
            return [_text(path) for path in client.zrange(self._key("r:", key), 0, -1)]

    def drop_results(self, key: str) -> None:
        with self._call() as client:
            client.delete(self._key("r:", key))

    def incr(self, name: str, amount: int = 1) -> None:
        with self._call() as client:
            client.hincrby(self._key("counters"), name, amount)

    def counters(self) -> dict[str, int]:
        with self._call() as client:
            values = client.hgetall(self._key("counters"))
        return {_text(name): int(value) for name, value in sorted(values.items())}

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        with self._call() as client:
            taken = client.eval(
                _RENEW, 1, self._key("lease:", name), holder, str(max(1, int(seconds * 1000)))
            )
        return bool(taken)

    def release_lease(self, name: str, holder: str) -> None:
        with self._call() as client:
            client.eval(_RELEASE, 1, self._key("lease:", name), holder)

    def compare_and_set(self, name: str, expected: str | None, value: str) -> str | None:
        # The braces make the name the key's hash tag.
        key = self._key("{shared:", name, "}")
        with self._call() as client:
            found = client.eval(
                _COMPARE_AND_SET, 1, key, "" if expected is None else "=" + expected, value
            )
        return None if found is None else _text(found)

    def enqueue(self, topic: str, key: str, payload: str) -> None:
        with self._call() as client:
            client.eval(_ENQUEUE, 0, self.prefix, topic, key, payload, repr(time.time()))

    def claim(self, now: float, lease: float, limit: int) -> list[stores.OutboxItem]:
        with self._call() as client:
            rows = client.eval(_CLAIM, 0, self.prefix, repr(now), repr(now + lease), limit)
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
            client.eval(_FINISH, 0, self.prefix, item.id, "done", "")

    def reschedule(self, item: stores.OutboxItem, next_at: float, error: str) -> None:
        with self._call() as client:
            pipeline = client.pipeline(transaction=True)
            pipeline.zadd(self._key("ob:due"), {item.id: next_at}, xx=True)
            pipeline.hset(self._key("ob:i:", item.id), "error", error[:2000])
            pipeline.execute()

    def abandon(self, item: stores.OutboxItem, error: str) -> None:
        with self._call() as client:
            client.eval(_FINISH, 0, self.prefix, item.id, "abandoned", error[:2000])

    def outbox_counts(self) -> dict[str, int]:
        with self._call() as client:
            values = client.hgetall(self._key("ob:counts"))
        return {_text(name): int(value) for name, value in sorted(values.items()) if int(value)}

    # Near-duplicates. Every command reads or writes one key: a picture's record
    # 'fp:{<sha256>}' (JSON: its fingerprints by frame, and the frames in the index), one
    # hash per band of the index, 'fpi:<band>' (field: the band's value in hex; value: its
    # entries end to end, each the 24-byte fingerprint then the 32-byte content hash), and
    # 'dup:{<sha256>}' (a set: keys of its duplicates' decisions). Four hashes rather
    # than a set per band value: a lookup is four HMGETs, not some seventy commands, and
    # an entry costs its 56 bytes and no key of its own.

    def _band_key(self, band: int) -> str:
        return self._key(f"fpi:{band}")

    def _entries(
        self, sha256: str, prints: Mapping[int, Print], indexed: Collection[int]
    ) -> set[tuple[int, str, bytes]]:
        digest = bytes.fromhex(sha256)
        return {
            (band, _field(value), print_.to_bytes() + digest)
            for frame, print_ in prints.items()
            if frame in indexed
            for band, value in enumerate(print_.bands())
        }

    def put_fingerprints(
        self, sha256: str, prints: Mapping[int, Print], indexed: Collection[int]
    ) -> None:
        record = self._key("fp:{", sha256, "}")
        with self._call() as client:
            old_prints, old_indexed = _fingerprint_record(client.get(record))
            old = self._entries(sha256, old_prints, old_indexed)
            new = self._entries(sha256, prints, indexed)
            # The index first, the record last: a call cut short leaves the record naming
            # what the index held before, and the next call mends both. An entry left over
            # names a picture that lookups find no longer rejected, and skip.
            pipeline = client.pipeline(transaction=False)
            for band, field, entry in old - new:
                pipeline.eval(_INDEX_ENTRY, 1, self._band_key(band), field, entry, "0")
            for band, field, entry in new - old:
                pipeline.eval(_INDEX_ENTRY, 1, self._band_key(band), field, entry, "1")
            pipeline.set(
                record,
                json.dumps(
                    {
                        "prints": {str(frame): p.hex() for frame, p in sorted(prints.items())},
                        "indexed": sorted(frame for frame in indexed if frame in prints),
                    },
                    separators=(",", ":"),
                ),
            )
            pipeline.execute()

    def fingerprints(self, sha256: str) -> dict[int, Print]:
        with self._call() as client:
            prints, _ = _fingerprint_record(client.get(self._key("fp:{", sha256, "}")))
        return prints

    def indexed_near(
        self, probes: Sequence[Collection[int]], close: Callable[[int], bool]
    ) -> list[tuple[str, Print]]:
        asked = [(band, sorted(values)) for band, values in enumerate(probes) if values]
        if not asked:
            return []
        with self._call() as client:
            pipeline = client.pipeline(transaction=False)
            for band, values in asked:
                pipeline.hmget(self._band_key(band), [_field(value) for value in values])
            answers = pipeline.execute()
        kept = {
            entries[start : start + _ENTRY]
            for answer in answers
            for entries in answer
            if entries
            for start in range(0, len(entries), _ENTRY)
            if close(int.from_bytes(entries[start : start + 8], "big"))
        }
        return [(entry[24:].hex(), Print.from_bytes(entry[:24])) for entry in kept]

    def link_duplicate(self, original: str, key: str, linked: bool = True) -> None:
        with self._call() as client:
            if linked:
                client.sadd(self._key("dup:{", original, "}"), key)
            else:
                client.srem(self._key("dup:{", original, "}"), key)

    def duplicates_of(self, original: str) -> list[str]:
        with self._call() as client:
            keys = client.smembers(self._key("dup:{", original, "}"))
        return sorted(_text(key) for key in keys)

    def subscribe(self, changed: Callable[[str | None], None]) -> None:
        self._changes.subscribe(changed)

    def _listen(self) -> None:
        """Forward change notifications; reconnect with backoff when Redis goes away."""
        channel = self._key("changes")
        delay = 0.1
        while not self._changes.closed.is_set():
            # health_check_interval pings an idle connection, so one that silently stopped
            # carrying traffic is noticed within seconds, not at the kernel's keepalive.
            client = redis.Redis.from_url(
                self.url,
                socket_connect_timeout=self.timeout,
                socket_keepalive=True,
                health_check_interval=5,
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(channel)
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
            except redis.exceptions.RedisError as error:
                logger.warning("decision change notifications interrupted: %s", error)
                self._changes.closed.wait(delay)
                delay = min(delay * 2, 2.0)
            finally:
                pubsub.close()
                client.close()

    def close(self) -> None:
        self._changes.closed.set()
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _field(value: int) -> str:
    """A band value as the field of its band's hash."""
    return f"{value:0{BAND_BITS // 4}x}"


def _fingerprint_record(body: Any) -> tuple[dict[int, Print], list[int]]:
    """A picture's fingerprints and its frames in the index, from its record (or none)."""
    if not body:
        return {}, []
    data = json.loads(body)
    prints = {int(frame): Print.from_hex(text) for frame, text in data.get("prints", {}).items()}
    return prints, [int(frame) for frame in data.get("indexed", [])]


def _event_json(event: Event) -> str:
    return json.dumps(event.to_dict(), separators=(",", ":"))
