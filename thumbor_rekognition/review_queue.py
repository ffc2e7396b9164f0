"""The review queues: one status (or the duplicates), filtered, a page at a time.

No store keeps decisions indexed by source, category or date: every store pages one
status in key order, and pending and rejected pictures by time too, through indexes of
its own (see ``Store.page`` and ``Store.page_by_time``). A queue is read in one of those
orders and filtered here, reading at most SCAN_BUDGET decisions per request: a request
that reads that many without filling its page answers with what it found and a cursor
to go on from. The pending queue is shown oldest first by default, at any size.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from thumbor_rekognition import stores
from thumbor_rekognition.decision import Decision, Source, Status

# At most this many decisions are read from the store to answer one request.
SCAN_BUDGET = 5000
# What a reviewer calls each source; the store's own names are accepted too.
SOURCES = {
    "model": Source.AUTO,
    "human": Source.MANUAL,
    "duplicate": Source.DUPLICATE,
    **{source.value: source for source in Source},
}
QUEUES = ("pending", "rejected", "approved", "duplicates")
# Starts a cursor of the oldest-first order (then the store's cursor of page_by_time), so
# that one of the key order is told apart.
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


# Reads one page of a status from the store: (status, limit, cursor) -> (page, next cursor),
# in key order (Store.page) or, for the statuses of stores.TIMED, by time (page_by_time).
Pager = Callable[[Status | None, int, str | None], Any]
TimedPager = Callable[[Status, int, str | None], Any]


@dataclass(frozen=True)
class QueuePage:
    """One page of a queue, and how it was read."""

    decisions: list[Decision]
    next_cursor: str | None
    order: str
    scanned: int


async def read(
    pager: Pager,
    timed: TimedPager,
    status: Status | None,
    chosen: Filters,
    limit: int,
    cursor: str | None,
    oldest_first: bool,
) -> QueuePage:
    """A page of the queue: oldest first (pending and rejected pictures, through the
    store's order by time), or in key order."""
    if not oldest_first:
        if cursor and cursor.startswith(_TIMED):
            raise BadFilter("that cursor belongs to the oldest-first order: leave order=key out")
        keyed = functools.partial(pager, status)
        return await _scan(keyed, chosen, limit, cursor, _key, "key")
    if status is None or status not in stores.TIMED:
        raise BadFilter("order=oldest is for the pending and rejected queues")
    if cursor:
        if not cursor.startswith(_TIMED):
            raise BadFilter("that cursor belongs to the key order: leave order out")
        cursor = cursor[len(_TIMED) :]
        try:
            stores.split_time_cursor(cursor)
        except ValueError:
            raise BadFilter("cursor is not one this API gave") from None
    by_time = functools.partial(timed, status)
    page = await _scan(by_time, chosen, limit, cursor, stores.time_cursor, "oldest")
    if page.next_cursor is None:
        return page
    return dataclasses.replace(page, next_cursor=_TIMED + page.next_cursor)


def _key(decision: Decision) -> str:
    return decision.key


async def _scan(
    pager: Callable[[int, str | None], Any],
    chosen: Filters,
    limit: int,
    cursor: str | None,
    after: Callable[[Decision], str],
    order: str,
) -> QueuePage:
    """Up to limit decisions that pass the filters, reading the pager's order from the
    cursor; after(decision) is the cursor that follows a decision in that order."""
    found: list[Decision] = []
    scanned = 0
    # Read a page's worth when nothing is filtered out, bigger pages when filters are on.
    batch = limit + 1 if not chosen.narrows else 500
    while scanned < SCAN_BUDGET:
        page, following = await pager(batch, cursor)
        scanned += len(page)
        for decision in page:
            if not chosen.keeps(decision):
                cursor = after(decision)
                continue
            if len(found) == limit:
                return QueuePage(found, after(found[-1]), order, scanned)
            found.append(decision)
            cursor = after(decision)
        if following is None:
            return QueuePage(found, None, order, scanned)
        cursor = following
    return QueuePage(found, cursor, order, scanned)
