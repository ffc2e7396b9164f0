"""What the plugin's processes share through Redis besides decisions: counters, leases,
compare-and-set values and the outbox (one queue per topic and key, what is due when),
each a script on one key, so that it runs on Redis Cluster too."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import redis.exceptions

from thumbor_rekognition import stores
from thumbor_rekognition.stores.redis_client import (
    _ERRORS,
    PARTITIONS,
    Client,
    Connected,
    _sha1,
    _text,
)

logger = logging.getLogger(__name__)

# The outbox scripts work on a partition's outbox (ARGV[1] '<prefix>{<tag>}ob:', what is
# due kept per topic in 'due:<topic>') and on the single outbox of earlier versions
# ('<prefix>{o}ob:', ARGV[n] '1', all topics due in 'due'), which is delivered until empty.
_DUE_KEYS = """
local o, legacy = ARGV[1], ARGV[2] == '1'
local function due_keys(topic)
  if legacy then return {o .. 'due'} end
  if topic ~= '' then return {o .. 'due:' .. topic} end
  local keys = {}
  for _, t in ipairs(redis.call('SMEMBERS', o .. 'topics')) do
    keys[#keys + 1] = o .. 'due:' .. t
  end
  return keys
end
"""

# ARGV: outbox, legacy, now, topic ('' for any) -> how many items are due (an upper bound).
_DUE = (
    _DUE_KEYS
    + """
local n = 0
for _, due in ipairs(due_keys(ARGV[4])) do n = n + redis.call('ZCOUNT', due, '-inf', ARGV[3]) end
return n
"""
)

# ARGV: outbox, legacy, now, later, limit, topic -> the claimed items.
_CLAIM = (
    _DUE_KEYS
    + """
local now, later, limit, topic = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local claimed = {}
for _, due in ipairs(due_keys(topic)) do
  local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit * 10)
  for _, id in ipairs(ids) do
    if #claimed >= limit then return claimed end
    local item = redis.call('HMGET', o .. 'i:' .. id, 'topic', 'key', 'payload', 'created_at')
    if item[1] and (topic == '' or item[1] == topic) then
      local head = redis.call('LINDEX', o .. 'q:' .. item[1] .. ':' .. item[2], 0)
      if head == id then
        redis.call('ZADD', due, later, id)
        local attempts = redis.call('HINCRBY', o .. 'i:' .. id, 'attempts', 1)
        table.insert(claimed, {id, item[1], item[2], item[3], tostring(attempts), item[4]})
      end
    end
  end
end
return claimed
"""
)

# ARGV: outbox, legacy, id, 'done' or 'abandoned', error, now. The next item of its queue
# becomes due (earlier versions' outbox had every item due already).
_FINISH = (
    _DUE_KEYS
    + """
local id, state, err = ARGV[3], ARGV[4], ARGV[5]
local item = redis.call('HMGET', o .. 'i:' .. id, 'topic', 'key')
if not item[1] then return 0 end
local due, queue = due_keys(item[1])[1], o .. 'q:' .. item[1] .. ':' .. item[2]
redis.call('ZREM', due, id)
redis.call('LREM', queue, 1, id)
local next = redis.call('LINDEX', queue, 0)
if next then redis.call('ZADD', due, 'NX', ARGV[6], next) end
redis.call('HINCRBY', o .. 'counts', item[1] .. '.pending', -1)
if state == 'done' then
  redis.call('DEL', o .. 'i:' .. id)
else
  redis.call('HSET', o .. 'i:' .. id, 'state', 'abandoned', 'error', err)
  redis.call('HINCRBY', o .. 'counts', item[1] .. '.abandoned', 1)
end
return 1
"""
)

# ARGV: outbox, legacy, id, when, error.
_RESCHEDULE = (
    _DUE_KEYS
    + """
local topic = redis.call('HGET', o .. 'i:' .. ARGV[3], 'topic')
if not topic then return 0 end
redis.call('ZADD', due_keys(topic)[1], 'XX', ARGV[4], ARGV[3])
redis.call('HSET', o .. 'i:' .. ARGV[3], 'error', ARGV[5])
return 1
"""
)


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


class SharedState(Connected):
    """Counters, leases, shared values and the outbox."""

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

    # Outbox: one per partition, beside its decisions, so that a decision and what it
    # announces are written by one script; items are named '<partition>/<number>'.

    @property
    def _legacy_outbox(self) -> str:
        return self.prefix + "{o}ob:"

    def _outboxes(self) -> list[tuple[str, str]]:
        """Each outbox (the name its items' ids start with, its key prefix), the single
        outbox of earlier versions last."""
        own = [(f"{number}/", self._partition(number) + "ob:") for number in range(PARTITIONS)]
        return [*own, ("", self._legacy_outbox)]

    def _outbox_of(self, item: stores.OutboxItem) -> tuple[str, str, str]:
        """An item's outbox, whether it is the earlier versions' one, and its number."""
        partition, slash, number = item.id.rpartition("/")
        if not slash:
            return self._legacy_outbox, "1", number
        return self._partition(int(partition)) + "ob:", "0", number

    def enqueue(self, topic: str, key: str, payload: str) -> None:
        with self._call() as client:
            self._run_acknowledged(
                client, "enqueue", self._of_key(key), repr(time.time()), topic, key, payload
            )

    def claim(
        self, now: float, lease: float, limit: int, topic: str | None = None
    ) -> list[stores.OutboxItem]:
        claimed: list[stores.OutboxItem] = []
        with self._call() as client:
            waiting = self._due(client, now, topic or "")
            # Processes claiming at once start at different outboxes.
            random.shuffle(waiting)
            for name, base, legacy in waiting:
                if len(claimed) >= limit:
                    break
                try:
                    rows = client.eval(
                        _CLAIM,
                        1,
                        base + "seq",
                        base,
                        legacy,
                        repr(now),
                        repr(now + lease),
                        limit - len(claimed),
                        topic or "",
                    )
                except _ERRORS:
                    if not self.cluster or not claimed:
                        raise
                    # What is claimed already is delivered; this node's items wait.
                    self._relearn()
                    break
                claimed += [
                    stores.OutboxItem(
                        id=name + _text(id_),
                        topic=_text(topic_),
                        key=_text(key),
                        payload=_text(payload),
                        attempts=int(attempts),
                        created_at=float(created_at),
                    )
                    for id_, topic_, key, payload, attempts, created_at in rows
                ]
        return claimed

    def _due(self, client: Client, now: float, topic: str) -> list[tuple[str, str, str]]:
        """The outboxes with items due (name, key prefix, legacy flag): one pipeline per
        node; the outboxes of a node that does not answer are left for the next call."""
        groups: dict[Any, list[tuple[str, str, str]]] = {}
        for name, base in self._outboxes():
            node = client.get_node_from_key(base + "seq") if self.cluster else None
            groups.setdefault(node, []).append((name, base, "0" if name else "1"))
        sha = _sha1(_DUE)
        waiting: list[tuple[str, str, str]] = []
        for node, outboxes in groups.items():
            target = client.get_redis_connection(node) if node is not None else client
            try:
                for attempt in range(2):
                    pipeline = target.pipeline(transaction=False)
                    for _, base, legacy in outboxes:
                        pipeline.evalsha(sha, 1, base + "seq", base, legacy, repr(now), topic)
                    counts = pipeline.execute(raise_on_error=False)
                    if attempt == 0 and any(
                        isinstance(count, redis.exceptions.NoScriptError) for count in counts
                    ):
                        target.script_load(_DUE)
                        continue
                    break
            except _ERRORS as error:
                if not self.cluster:
                    raise
                logger.warning("outbox of a Redis Cluster node not read: %s", error)
                self._relearn()
                continue
            for outbox, count in zip(outboxes, counts, strict=True):
                if isinstance(count, Exception):
                    if not self.cluster:
                        raise count
                    self._relearn()
                elif int(count):
                    waiting.append(outbox)
        return waiting

    def complete(self, item: stores.OutboxItem) -> None:
        base, legacy, number = self._outbox_of(item)
        with self._call() as client:
            client.eval(
                _FINISH, 1, base + "seq", base, legacy, number, "done", "", repr(time.time())
            )

    def reschedule(self, item: stores.OutboxItem, next_at: float, error: str) -> None:
        base, legacy, number = self._outbox_of(item)
        with self._call() as client:
            client.eval(
                _RESCHEDULE, 1, base + "seq", base, legacy, number, repr(next_at), error[:2000]
            )

    def abandon(self, item: stores.OutboxItem, error: str) -> None:
        base, legacy, number = self._outbox_of(item)
        with self._call() as client:
            client.eval(
                _FINISH,
                1,
                base + "seq",
                base,
                legacy,
                number,
                "abandoned",
                error[:2000],
                repr(time.time()),
            )

    def outbox_counts(self) -> dict[str, int]:
        with self._call() as client:
            tallies = self._on_nodes(
                client,
                [(base + "counts", "hgetall", (base + "counts",)) for _, base in self._outboxes()],
            )
        counts: dict[str, int] = {}
        for tally in tallies:
            for name, value in tally.items():
                counts[_text(name)] = counts.get(_text(name), 0) + int(value)
        return {name: value for name, value in sorted(counts.items()) if value}
