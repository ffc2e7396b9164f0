"""The review queues: one status (or the duplicates), filtered, a page at a time.

No store keeps decisions indexed by source, category, date or by time: every store pages
one status in key order, through an index of its own (see ``Store.page``). A queue is
read that way and filtered here, reading at most SCAN_BUDGET decisions per request: a
request that reads that many without filling its page answers with what it found and a
cursor to go on from. The pending queue is shown oldest first while it holds at most
OLDEST_FIRST_LIMIT pictures (a human queue is short; its count is a tally, free to
read); a longer one is shown in key order, and the answer says which order it used.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from thumbor_rekognition.decision import Decision, Source, Status

# At most this many decisions are read from the store to answer one request.
SCAN_BUDGET = 5000
# The pending queue is sorted oldest first up to this many pictures.
OLDEST_FIRST_LIMIT = 2000
# What a reviewer calls each source; the store's own names are accepted too.
SOURCES = {
    "model": Source.AUTO,
    "human": Source.MANUAL,
    "duplicate": Source.DUPLICATE,
    **{source.value: source for source in Source},
}
QUEUES = ("pending", "rejected", "approved", "duplicates")
# A cursor of the oldest-first order: the time and key of the last picture shown.
_TIMED = "t:"


class BadFilter(ValueError):
    """A filter or cursor the API cannot use; its message says why."""


@dataclass(frozen=True)
class Filters:
    """What a reviewer narrows a queue to; empty fields do not narrow it."""

    source: Source | None = None
    category: str = ""
    since: float | None = None
    until: float | None = None
    search: str = ""

    @property
    def narrows(self) -> bool:
        times = (self.since, self.until)
        return bool(self.source or self.category or self.search) or times != (None, None)

    def keeps(self, decision: Decision) -> bool:
        """Whether a decision passes every filter."""
        if self.source is not None and decision.source is not self.source:
            return False
        if self.category and not any(
            self.category in (reason.category, reason.name.lower(), reason.parent.lower())
            for reason in decision.reasons
        ):
            return False
        if self.since is not None and decision.updated_at < self.since:
            return False
        if self.until is not None and decision.updated_at >= self.until:
            return False
        return not self.search or self.search in decision.url.lower()


def filters(arguments: dict[str, str]) -> Filters:
    """Filters from the list route's query arguments, or BadFilter."""
    source_name = arguments.get("source", "").strip().lower()
    source = SOURCES.get(source_name) if source_name else None
    if source_name and source is None:
        raise BadFilter(f"source must be one of: {', '.join(sorted(SOURCES))}")
    search = arguments.get("q", "").strip().lower()
    if len(search) > 4096:
        raise BadFilter("q is too long")
    category = arguments.get("category", "").strip().lower()
    if len(category) > 200:
        raise BadFilter("category is too long")
    since = _time(arguments.get("since", ""), "since", end=False)
    until = _time(arguments.get("until", ""), "until", end=True)
    return Filters(source, category, since, until, search)


def _time(value: str, name: str, end: bool) -> float | None:
    """Seconds since the epoch, from a number or an ISO date (a date's end is the next
    midnight, UTC, so that until=2026-12-06 includes that day)."""
    value = value.strip()
    if not value:
        return None
    try:
        return float(value) if value.replace(".", "", 1).isdigit() else _date(value, end)
    except (ValueError, OverflowError, OSError):
        # A date past year 9999 or before the epoch's range, as well as no date at all.
        raise BadFilter(f"{name} must be seconds since the epoch or a date (YYYY-MM-DD)") from None


def _date(value: str, end: bool) -> float:
    moment = datetime.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    if end and len(value) == 10:
        moment += datetime.timedelta(days=1)
    return moment.timestamp()


# Reads one page of a status from the store: (status, limit, cursor) -> (page, next cursor).
Pager = Callable[[Status | None, int, str | None], Any]


@dataclass(frozen=True)
class QueuePage:
    """One page of a queue, and how it was read."""

    decisions: list[Decision]
    next_cursor: str | None
    order: str
    scanned: int


async def read(
    pager: Pager,
    status: Status | None,
    chosen: Filters,
    limit: int,
    cursor: str | None,
    oldest_first: bool,
    size: int,
) -> QueuePage:
    """A page of the queue: oldest first when asked and the queue (of about size
    decisions, its tally) is short enough, else in key order."""
    if oldest_first and size <= OLDEST_FIRST_LIMIT:
        page = await _oldest_first(pager, status, chosen, limit, cursor)
        if page is not None:
            return page
    if cursor and cursor.startswith(_TIMED):
        raise BadFilter("the queue is no longer sorted oldest first: start again")
    return await _key_order(pager, status, chosen, limit, cursor)


async def _key_order(
    pager: Pager, status: Status | None, chosen: Filters, limit: int, cursor: str | None
) -> QueuePage:
    found: list[Decision] = []
    scanned = 0
    # Read a page's worth when nothing is filtered out, bigger pages when filters are on.
    batch = limit + 1 if not chosen.narrows else 500
    while scanned < SCAN_BUDGET:
        page, after = await pager(status, batch, cursor)
        scanned += len(page)
        for decision in page:
            if not chosen.keeps(decision):
                cursor = decision.key
                continue
            if len(found) == limit:
                return QueuePage(found, found[-1].key, "key", scanned)
            found.append(decision)
            cursor = decision.key
        if after is None:
            return QueuePage(found, None, "key", scanned)
        cursor = after
    return QueuePage(found, cursor, "key", scanned)


async def _oldest_first(
    pager: Pager, status: Status | None, chosen: Filters, limit: int, cursor: str | None
) -> QueuePage | None:
    """Every decision of the queue, sorted by time of last change; None when the queue
    is longer than OLDEST_FIRST_LIMIT (the caller falls back to key order)."""
    everything: list[Decision] = []
    after: str | None = None
    while True:
        page, after = await pager(status, 500, after)
        everything.extend(page)
        if len(everything) > OLDEST_FIRST_LIMIT:
            return None
        if after is None:
            break
    ordered = sorted(
        (d for d in everything if chosen.keeps(d)), key=lambda d: (d.updated_at, d.key)
    )
    if cursor:
        last = _timed(cursor)
        ordered = [d for d in ordered if (d.updated_at, d.key) > last]
    shown = ordered[:limit]
    more = len(ordered) > limit
    next_cursor = f"{_TIMED}{shown[-1].updated_at!r}:{shown[-1].key}" if more else None
    return QueuePage(shown, next_cursor, "oldest", len(everything))


def _timed(cursor: str) -> tuple[float, str]:
    if not cursor.startswith(_TIMED):
        raise BadFilter("that cursor belongs to the key order: leave order out")
    at, _, key = cursor[len(_TIMED) :].partition(":")
    try:
        return float(at), key
    except ValueError:
        raise BadFilter("cursor is not one this API gave") from None
