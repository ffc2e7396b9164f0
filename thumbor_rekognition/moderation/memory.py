"""What a process keeps in memory: bounded maps, decisions with a time to live, and
Thumbor's metrics when a request has them."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from thumbor_rekognition.decision import Decision

T = TypeVar("T")


V = TypeVar("V")


class Metrics:
    """Thumbor's metrics object, or nothing when a caller has none."""

    def __init__(self, metrics: Any) -> None:
        self._metrics = metrics

    def incr(self, name: str, value: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.incr(name, value)

    def timing(self, name: str, milliseconds: float) -> None:
        if self._metrics is not None:
            self._metrics.timing(name, milliseconds)


class Bounded(Generic[V]):
    """A dict that forgets its least recently written entries past a size.

    A store's change listener may touch it from another thread, so no method assumes
    an entry it saw is still there.
    """

    get: Callable[[str], V | None]

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, V] = OrderedDict()
        # Read on every request: the dict's own method, without a Python frame around it.
        self.get = self._items.get

    def put(self, key: str, value: V) -> None:
        self._items[key] = value
        with contextlib.suppress(KeyError):
            self._items.move_to_end(key)
        while len(self._items) > self.size:
            with contextlib.suppress(KeyError):
                self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        self._items.pop(key, None)

    def drop_oldest_while(self, stale: Callable[[V], bool]) -> None:
        """Forget the least recently written entries for as long as they are stale."""
        while self._items:
            try:
                key, value = next(iter(self._items.items()))
            except (StopIteration, RuntimeError):  # emptied or changed by another thread
                return
            if not stale(value):
                return
            self._items.pop(key, None)

    def snapshot(self) -> list[str]:
        """The keys held now (a copy: other threads may change them meanwhile)."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


# How long an expired decision is kept to answer while the decision store is unreachable.
STALE_KEPT_SECONDS = 600.0


class DecisionCache:
    """Decisions that expire after a TTL, in a bounded LRU.

    An expired entry stays for STALE_KEPT_SECONDS more, unless evicted before: when the
    store is unreachable, the last known decision still answers. Entries are written in
    the order they expire, so the stale ones are dropped from the front as others come.
    """

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl = ttl
        self._entries: Bounded[tuple[float, Decision]] = Bounded(size)

    def get(self, key: str) -> Decision | None:
        item = self._entries.get(key)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def stale(self, key: str) -> Decision | None:
        """The last decision held for a key, expired or not."""
        item = self._entries.get(key)
        return item[1] if item is not None else None

    def put(self, key: str, decision: Decision) -> None:
        if self.ttl > 0:
            now = time.monotonic()
            self._entries.put(key, (now + self.ttl, decision))
            self._entries.drop_oldest_while(lambda item: item[0] + STALE_KEPT_SECONDS < now)

    def discard(self, key: str) -> None:
        self._entries.discard(key)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def expire(self) -> None:
        """Make every entry ask the store again, while keeping it as the stale answer."""
        now = time.monotonic()
        for key in self._entries.snapshot():
            decision = self.stale(key)
            if decision is not None:
                self._entries.put(key, (now, decision))


def sha256_hex(data: bytes) -> str:
    """The content hash decisions are indexed by."""
    return hashlib.sha256(data).hexdigest()
