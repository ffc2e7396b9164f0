"""The review queues read from each decision store: filters, pages and the oldest-first
order, through the store's own page() (see review_queue). ``QueueContract`` runs on
every store by subclassing it with a ``make_store`` fixture."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.stores.test_dynamodb import aws_environment, endpoint, open_store  # noqa: F401
from tests.stores.test_sqlite import MakeStore
from thumbor_rekognition import review_queue, stores
from thumbor_rekognition.decision import Decision, Event, Reason, Source, Status
from thumbor_rekognition.review_queue import Filters, QueuePage
from thumbor_rekognition.stores import redis as redis_store
from thumbor_rekognition.stores import sqlite

EVERYTHING = Filters()
NUDITY = Reason("Nudity", "Explicit Nudity", 99.0, 60.0, "explicit_nudity")


def read(
    store: stores.Store,
    status: Status | None,
    chosen: Filters = EVERYTHING,
    limit: int = 100,
    cursor: str | None = None,
    oldest_first: bool = False,
) -> QueuePage:
    async def pager(
        status: Status | None, limit: int, cursor: str | None
    ) -> tuple[list[Decision], str | None]:
        return store.page(status, limit, cursor)

    async def timed(
        status: Status, limit: int, cursor: str | None
    ) -> tuple[list[Decision], str | None]:
        return store.page_by_time(status, limit, cursor)

    return asyncio.run(review_queue.read(pager, timed, status, chosen, limit, cursor, oldest_first))


def every_key(
    store: stores.Store,
    status: Status | None,
    chosen: Filters,
    limit: int,
    oldest: bool | None = None,
) -> list[str]:
    keys: list[str] = []
    cursor = None
    oldest = status is Status.PENDING if oldest is None else oldest
    while True:
        page = read(store, status, chosen, limit, cursor, oldest)
        keys += [decision.key for decision in page.decisions]
        if page.next_cursor is None:
            return keys
        cursor = page.next_cursor


class QueueContract:
    """What every store lets the review queues do; subclasses provide ``make_store``."""

    @pytest.fixture
    def make_store(self) -> Iterator[MakeStore]:
        raise NotImplementedError

    @pytest.fixture
    def store(self, make_store: MakeStore) -> stores.Store:
        store = make_store()
        # Saved in the reverse of key order, a second apart.
        for index in reversed(range(30)):
            status = [Status.PENDING, Status.REJECTED, Status.APPROVED][index % 3]
            source = [Source.AUTO, Source.MANUAL, Source.DUPLICATE][index % 5 % 3]
            key = f"queue/{index:02d}.png"
            store.save(
                Decision(
                    key=key,
                    url=key,
                    sha256=f"{index:064x}",
                    status=status,
                    source=source,
                    reasons=(NUDITY,) if index % 2 else (),
                    updated_at=1_800_000_000.0 - index,
                    duplicate_of="queue/99.png" if source is Source.DUPLICATE else "",
                ),
                Event(status, source, "test", ""),
            )
        return store

    def test_pending_is_oldest_first_across_pages(self, store: stores.Store) -> None:
        keys = every_key(store, Status.PENDING, Filters(), limit=4)

        assert keys == [f"queue/{index:02d}.png" for index in reversed(range(0, 30, 3))]

    def test_filters_keep_what_they_name_across_pages_in_key_order(
        self, store: stores.Store
    ) -> None:
        chosen = Filters(source=Source.MANUAL, category="explicit_nudity")

        keys = every_key(store, Status.REJECTED, chosen, limit=1)

        expected = [
            f"queue/{index:02d}.png"
            for index in range(30)
            if index % 3 == 1 and index % 5 % 3 == 1 and index % 2
        ]
        assert expected
        assert keys == expected

    def test_duplicates_of_every_status_and_url_search(self, store: stores.Store) -> None:
        duplicates = every_key(store, None, Filters(source=Source.DUPLICATE), limit=2)
        searched = every_key(store, None, Filters(search="queue/1"), limit=3)
        dated = every_key(store, Status.APPROVED, Filters(since=1_800_000_000.0 - 10), limit=100)

        assert duplicates == [f"queue/{i:02d}.png" for i in range(30) if i % 5 % 3 == 2]
        assert searched == [f"queue/{i:02d}.png" for i in range(10, 20)]
        assert dated == [f"queue/{i:02d}.png" for i in range(11) if i % 3 == 2]

    def test_rejected_queue_asked_oldest_first_is_filtered_in_that_order(
        self, store: stores.Store
    ) -> None:
        chosen = Filters(category="explicit_nudity")

        keys = every_key(store, Status.REJECTED, chosen, limit=2, oldest=True)

        assert keys == [f"queue/{i:02d}.png" for i in reversed(range(30)) if i % 3 == 1 and i % 2]

    def test_oldest_first_is_refused_where_no_store_orders_by_time(
        self, store: stores.Store
    ) -> None:
        with pytest.raises(review_queue.BadFilter, match="pending and rejected"):
            read(store, Status.APPROVED, oldest_first=True)
        with pytest.raises(review_queue.BadFilter, match="pending and rejected"):
            read(store, None, Filters(source=Source.DUPLICATE), oldest_first=True)

    def test_a_cursor_of_one_order_is_refused_by_the_other(self, store: stores.Store) -> None:
        oldest = read(store, Status.PENDING, limit=2, oldest_first=True)
        keyed = read(store, Status.PENDING, limit=2)
        assert oldest.next_cursor is not None
        assert keyed.next_cursor is not None

        with pytest.raises(review_queue.BadFilter, match="oldest-first"):
            read(store, Status.PENDING, cursor=oldest.next_cursor)
        with pytest.raises(review_queue.BadFilter, match="key order"):
            read(store, Status.PENDING, cursor=keyed.next_cursor, oldest_first=True)


class TestSQLiteQueue(QueueContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Iterator[MakeStore]:
        opened: list[sqlite.Store] = []

        def make() -> stores.Store:
            store = sqlite.Store(path=str(tmp_path / "moderation.sqlite3"))
            opened.append(store)
            return store

        yield make
        for store in opened:
            store.close()


class TestRedisQueue(QueueContract):
    @pytest.fixture
    def make_store(self, redis_server: RedisServer) -> Iterator[MakeStore]:  # noqa: F811
        prefix = f"test-{uuid.uuid4().hex[:12]}:"
        opened: list[redis_store.Store] = []

        def make() -> stores.Store:
            store = redis_store.Store(url=redis_server.url, prefix=prefix, timeout=1.0)
            opened.append(store)
            return store

        yield make
        for store in opened:
            store.close()


class TestDynamoDBQueue(QueueContract):
    @pytest.fixture
    def make_store(self, open_store) -> MakeStore:  # type: ignore[no-untyped-def]  # noqa: F811
        table = f"moderation-{uuid.uuid4().hex[:12]}"
        return lambda: open_store(table=table, create_table=True)
