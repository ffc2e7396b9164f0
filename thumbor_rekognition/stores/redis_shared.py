"""What the plugin's processes share through Redis besides decisions: counters, leases,
compare-and-set values and the outbox (one queue per topic and key, what is due when),
each a script on one key, so that it runs on Redis Cluster too."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from thumbor_rekognition import stores
from thumbor_rekognition.stores.redis_client import (
    Connected,
    _text,
)

if TYPE_CHECKING:
    pass

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
