"""Listing the Redis store's decisions in key order: the partitions' sorted maps merged,
each read only as far as the merge needs."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from thumbor_rekognition.stores import redis_scripts as scripts
from thumbor_rekognition.stores.redis_client import PARTITIONS, Client, Connected, _text


@dataclass
class _Stream:
    """One partition's share of a listing: what it answered, and how far it has read."""

    partition: str
    after: str | None
    done: bool = False
    found: list[tuple[str, bytes]] = field(default_factory=list)


class Merge:
    """Decisions of every partition in key order, reading each partition only as far as
    the merge needs: about limit + PARTITIONS entries for a page of `limit`."""

    def __init__(
        self, store: Connected, client: Client, chosen: str, wanted: str, after: str | None
    ):
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
