"""Listing the Redis store's decisions in key order (or by time: the maps of the index by
time are keyed by time code and key): the partitions' sorted maps merged, each read only
as far as the merge needs; and building the index by time for data saved before it."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from thumbor_rekognition import stores
from thumbor_rekognition.decision import Decision, Status
from thumbor_rekognition.stores import records
from thumbor_rekognition.stores import redis_scripts as scripts
from thumbor_rekognition.stores.redis_client import PARTITIONS, Client, Connected, _text

_STATUS_NUMBERS = {Status.APPROVED: 0, Status.REJECTED: 1, Status.PENDING: 2}
# Set once every pending and rejected decision is in its status's index by time.
TIMED_MARK = "timed"


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


def by_time(
    store: Connected, client: Client, status: Status, limit: int, cursor: str | None
) -> tuple[list[Decision], str | None]:
    """A page of decisions of a status by time (see Store.page_by_time)."""
    if cursor:
        stores.split_time_cursor(cursor)
    number = _STATUS_NUMBERS[status]
    # The index by time is keyed by time code and key: the same merge orders it.
    found = Merge(store, client, f"t{number}", str(number), cursor).take(limit + 1)
    page = [
        records.decode_decision(stores.split_time_cursor(entry)[1], record)
        for entry, record in found[:limit]
    ]
    return page, (found[limit - 1][0] if len(found) > limit else None)


def order_by_time(store: Connected, client: Client) -> int:
    """List every pending and rejected decision in its status's index by time (each still
    as read; a save meanwhile lists its own), then set the mark; how many were missing.
    Idempotent: `migrate-store` runs it again."""
    listed = 0
    for number in range(PARTITIONS):
        partition = store._partition(number)
        for status in stores.TIMED:
            wanted = str(_STATUS_NUMBERS[status])
            after: str | None = None
            while True:
                done, last, *found = store._run(
                    client,
                    "page",
                    partition,
                    "x" + wanted,
                    wanted,
                    after or "",
                    "1" if after is not None else "0",
                    500,
                    scripts.CHUNKS_PER_CALL,
                )
                triples: list[bytes | str] = []
                for key, record in zip(found[::2], found[1::2], strict=True):
                    decision = records.decode_decision(_text(key), record)
                    triples += [key, record, stores.time_code(decision.updated_at)]
                if triples:
                    listed += int(store._run(client, "time_add", partition, *triples))
                if found or last:
                    after = _text(last)
                if int(done):
                    break
    client.set(store.prefix + TIMED_MARK, "1")
    return listed
