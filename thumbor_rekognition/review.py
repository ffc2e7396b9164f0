"""Human review: list, inspect and override decisions, restore or purge what caches hold.

Used by the admin API, the review page and the command line, so that each does the same
thing. A manual decision applies to the picture, not to one spelling of its URL: every
decision about the same bytes is overridden together, and a later URL with those bytes
inherits it. Rejecting copies the original into the quarantine first, then removes it
and its results from Thumbor's caches; approving puts the quarantined original back
into STORAGE so it is served even if its origin has dropped it, and lifts the rejection
of the pictures rejected as its duplicates (see ``duplicates``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import logging
import time
from dataclasses import dataclass
from typing import Any

from thumbor_rekognition import aws_caches, confidence, review_queue, stores
from thumbor_rekognition.caches import ThumborCaches, storage_key
from thumbor_rekognition.decision import Decision, Event, Source, Status
from thumbor_rekognition.moderation.memory import sha256_hex
from thumbor_rekognition.moderator import Moderator
from thumbor_rekognition.runtime import Runtime
from thumbor_rekognition.urls import key_of, normalise

logger = logging.getLogger(__name__)

MAX_PAGE = 500
# Looking for the URLs nearest to one no request has fetched: at most this many keys are
# read from each place in the key order where a near one may be, and this many named.
NEAREST_SCAN = 1000
NEAREST_COUNT = 3
BINDS_TO_FIRST_FETCH = (
    "no request has fetched it yet: the decision binds to the bytes of its first fetch"
)


class NeverFetched(LookupError):
    """A manual decision for a URL no request has fetched, asked for without saying so."""

    def __init__(self, url: str, nearest: list[str]) -> None:
        super().__init__(f"no request has fetched {url}")
        self.url = url
        self.nearest = nearest


@dataclass(frozen=True)
class Purged:
    """What a purge removed."""

    original: bool
    results: int

    def to_dict(self) -> dict[str, Any]:
        return {"original_removed": self.original, "results_removed": self.results}


class Review:
    """Operations on decisions for administrators, one Thumbor configuration."""

    def __init__(self, runtime: Runtime, caches: ThumborCaches) -> None:
        self.runtime = runtime
        self.caches = caches

    @property
    def moderator(self) -> Moderator:
        return self.runtime.moderator

    async def _store(self, method: str, *args: Any) -> Any:
        return await self.moderator.run_store(getattr(self.moderator.store, method), *args)

    async def _store_call(self, func: Any, *args: Any) -> Any:
        return await self.moderator.run_store(func, *args)

    async def page(
        self, status: Status | None, limit: int, cursor: str | None
    ) -> tuple[list[Decision], str | None]:
        """Decisions ordered by key, after the cursor."""
        page: tuple[list[Decision], str | None] = await self._store(
            "page", status, max(1, min(limit, MAX_PAGE)), cursor
        )
        return page

    async def page_by_time(
        self, status: Status, limit: int, cursor: str | None
    ) -> tuple[list[Decision], str | None]:
        """Decisions of a status oldest first, after the cursor (see Store.page_by_time)."""
        page: tuple[list[Decision], str | None] = await self._store(
            "page_by_time", status, max(1, min(limit, MAX_PAGE)), cursor
        )
        return page

    async def queue(
        self,
        name: str,
        chosen: review_queue.Filters,
        limit: int,
        cursor: str | None,
        oldest_first: bool,
    ) -> review_queue.QueuePage:
        """A page of one review queue (see review_queue), filtered."""
        status = None if name == "duplicates" else Status(name)
        if status is None:
            chosen = dataclasses.replace(chosen, source=Source.DUPLICATE)
        return await review_queue.read(
            self.page, self.page_by_time, status, chosen, limit, cursor, oldest_first
        )

    async def queue_counts(self) -> dict[str, int]:
        """How many pictures each queue holds, from the store's tallies."""
        counts: dict[str, int] = await self._store("counts")
        sizes = {status.value: counts.get(status.value, 0) for status in Status}
        sizes["duplicates"] = sum(
            counts.get(f"{s.value}.{Source.DUPLICATE.value}", 0) for s in Status
        )
        return sizes

    async def key(self, url: str) -> str:
        """The decision key an administrator means by a URL.

        URLs are taken as written (a '%' is part of the name); one copied URL-encoded from
        a Thumbor path is recognised too, when a decision exists under that reading.
        """
        written = key_of(url)
        if written == normalise(url) or await self._store("get", written) is not None:
            return written
        encoded = normalise(url)
        return encoded if await self._store("get", encoded) is not None else written

    async def show(self, url: str) -> tuple[Decision, list[Event]] | None:
        """A decision and its history, straight from the store."""
        key = await self.key(url)
        decision = await self._store("get", key)
        if decision is None:
            return None
        return decision, await self._store("history", key)

    async def decide(
        self,
        url: str,
        status: Status,
        note: str,
        actor: str,
        unseen: bool = False,
        settle: bool = True,
    ) -> list[Decision]:
        """A manual decision for the picture at this URL, and every URL showing the same bytes.

        A URL no request has fetched (no decision, no history, nothing in STORAGE) is most
        often a typo: NeverFetched, naming the nearest known URLs, unless unseen is True;
        then the decision is kept for the URL and binds to the bytes of its first fetch.
        Every decision is saved before anything else, so that viewers are refused (or
        served) at once; keeping the original and cleaning caches follow, and a failure
        there is logged and counted without undoing the decision. Unless settle is False
        (the caller waits once for a batch, see settled), it answers once every process
        has heard of the change.
        """
        if status is Status.PENDING:
            raise ValueError("a manual decision approves or rejects")
        key = await self.key(url)
        current: Decision | None = await self._store("get", key)
        sha256 = current.sha256 if current else ""
        original = None
        if not sha256:
            # Never fetched under this key: the bytes in STORAGE, if any, say which picture.
            original = await self._original_bytes("", current.url if current else url)
            sha256 = sha256_hex(original) if original is not None else ""
        if current is None and not sha256 and not unseen and not await self._store("history", key):
            raise NeverFetched(url, await self.nearest(key))
        targets: list[Decision] = await self._store("find_all_by_hash", sha256) if sha256 else []
        first_fetch = None
        if all(target.key != key for target in targets):
            first_fetch = None if current else _unseen(key, url, sha256)
            targets.append(current or first_fetch)  # type: ignore[arg-type]
        now = time.time()
        saved_at = time.monotonic()
        event = Event(status, Source.MANUAL, actor, note)
        decided = []
        for target in targets:
            manual = target.replace(
                status=status,
                source=Source.MANUAL,
                sha256=sha256,
                error="",
                updated_at=now,
                blind=not sha256,
            )
            decided.append(await self._store("save", manual, event))
            self.moderator.forget(target.key)
        if original is None:
            original = await self._original_bytes(sha256, current.url if current else url)
        if status is Status.REJECTED and original is not None:
            await self.moderator.keep_original(sha256, original)
            # Its copies are matched by fingerprint: one judged before they were kept, or
            # never fetched, gets its fingerprints now.
            await self.moderator.fingerprint(sha256, original)
        for target, saved in zip(targets, decided, strict=True):
            await self.moderator.announce(None if target is first_fetch else target, saved, event)
            try:
                if status is Status.REJECTED:
                    await self.purge(target.url, announce=False)
                elif original is not None:
                    await self.caches.restore(target.url, original)
            except Exception as error:
                # Any cache's failure (a storage without remove, say): the decision stands.
                logger.error("caches of %s not updated (%s): %s", target.key, status.value, error)
                await self.moderator.count("caches.errors")
        if settle:
            await self.settled(saved_at)
        return decided

    async def settled(self, saved_at: float) -> None:
        """Wait until a change saved at that time (time.monotonic) has reached every process."""
        # Answer once the other processes have heard of it too: a viewer who asks after
        # the answer gets the new decision from every process of this node.
        remaining = self.moderator.store.propagation_seconds - (time.monotonic() - saved_at)
        if remaining > 0:
            await asyncio.sleep(remaining)

    async def nearest(self, key: str) -> list[str]:
        """The known URLs whose keys are nearest to a key, nearest first.

        Keys are read in order from where near ones sit: the start (all of a small site),
        the key's folder, and the keys sharing the first half of its name.
        """
        folder = key.rpartition("/")[0]
        starts = {"", key[: len(key) // 2], *([folder + "/"] if folder else [])}
        known: dict[str, str] = {}
        for start in sorted(starts):
            cursor = start or None
            read = 0
            while read < NEAREST_SCAN:
                page, cursor = await self.page(None, MAX_PAGE, cursor)
                known.update((decision.key, decision.url) for decision in page)
                read += len(page)
                if cursor is None:
                    break
        near = difflib.get_close_matches(key, known, n=NEAREST_COUNT, cutoff=0.6)
        return [known[match] for match in near]

    async def _original_bytes(self, sha256: str, url: str) -> bytes | None:
        kept = await self.moderator.kept_original(sha256)
        return kept if kept is not None else await self.caches.original(url)

    async def forget(self, url: str, actor: str, note: str = "") -> bool:
        """Drop a decision: the next request judges the picture again."""
        key = await self.key(url)
        event = Event(None, None, actor, note or "decision forgotten")
        previous: Decision | None = await self._store("get", key)
        forgotten: bool = await self._store("delete", key, event)
        self.moderator.forget(key)
        if forgotten:
            await self.moderator.announce(previous, None, event)
        return forgotten

    async def purge(self, url: str, announce: bool = True) -> Purged:
        """Remove the original from STORAGE, under every path it was stored at, and every
        result made from it, here and, through the CDN purgers, at the edge."""
        key = await self.key(url)
        recorded: list[str] = await self._store("results", key)
        paths, stored = stores.result_paths(recorded), stores.storage_paths(recorded)
        outbox = self.moderator.outbox
        if announce and outbox is not None and outbox.purgers:
            await self._store_call(outbox.purge, key, paths, "purged")
        results = await self.caches.remove_results(paths)
        # thumbor-aws's result storage cannot remove one: its objects go in batches.
        results += await aws_caches.remove(self.runtime, key, aws_caches.RESULT_STORAGE, paths)
        original = await self.caches.remove_original(url)
        current: Decision | None = await self._store("get", key)
        if current is not None and current.url != url:
            original = await self.caches.remove_original(current.url) or original
        for path in stored:
            original = await self.caches.remove_stored(path) or original
        # What thumbor-aws's storage keeps beside an original, which its remove leaves.
        spellings = {url, current.url} if current is not None else {url}
        stored_at = [*map(storage_key, sorted(spellings)), *stored]
        await aws_caches.remove(self.runtime, key, aws_caches.STORAGE, stored_at)
        await self._store("drop_results", key)
        return Purged(original=original, results=results)

    async def original(self, url: str) -> bytes | None:
        """The original for reviewers: the quarantined copy, else Thumbor's STORAGE."""
        current: Decision | None = await self._store("get", await self.key(url))
        return await self._original_bytes(current.sha256 if current else "", url)

    async def stats(self) -> dict[str, Any]:
        """Counts by status and source, and backend calls, across every process."""
        counts: dict[str, int] = await self._store("counts")
        counters: dict[str, int] = await self._store("counters")
        return {
            "decisions": {status.value: counts.get(status.value, 0) for status in Status},
            "by_source": {
                f"{status.value}.{source.value}": counts.get(f"{status.value}.{source.value}", 0)
                for status in Status
                for source in Source
            },
            "backend_calls": counters.get("backend.calls", 0),
            # Caches an override could not clean (logged); the decision stood all the same.
            "cache_errors": counters.get("caches.errors", 0),
            # HMA lookups that failed: those pictures were judged by the backend alone.
            "hma_unreachable": counters.get("hma.unreachable", 0),
            "backend": self.moderator.backend.name,
            "outbox": await self._store("outbox_counts"),
            # The process that answered: what it holds in memory and has in flight.
            "process": self.moderator.in_memory(),
        }


def _unseen(key: str, url: str, sha256: str) -> Decision:
    """A decision about a URL no request has fetched yet."""
    return Decision(key=key, url=url, sha256=sha256, status=Status.PENDING, source=Source.MANUAL)


def decision_view(decision: Decision, history: list[Event] | None = None) -> dict[str, Any]:
    """A decision as the admin API returns it."""
    view = confidence.decision_view(decision)
    view["content_hash"] = view.pop("sha256")
    if history is not None:
        view["history"] = [event.to_dict() for event in history]
    return view
