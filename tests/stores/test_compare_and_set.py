"""Small values every process shares through the decision store, changed atomically.

``CompareAndSetContract`` is what the shared call rate (ratelimit.py) needs of a store;
a store runs it by subclassing it with a ``make_store`` fixture.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.stores.test_sqlite import MakeStore
from thumbor_rekognition import stores
from thumbor_rekognition.stores import redis as redis_store
from thumbor_rekognition.stores import sqlite


class CompareAndSetContract:
    """What every store's compare_and_set does; subclasses provide ``make_store``."""

    @pytest.fixture
    def make_store(self) -> Iterator[MakeStore]:
        raise NotImplementedError

    @pytest.fixture
    def store(self, make_store: MakeStore) -> stores.Store:
        return make_store()

    def test_a_value_not_set_yet_is_set_when_none_is_expected(self, store: stores.Store) -> None:
        found = store.compare_and_set("rate", None, "1.5 1 0")

        assert found is None
        assert store.compare_and_set("rate", "1.5 1 0", "1.5 1 0") == "1.5 1 0"

    def test_a_value_is_replaced_when_it_is_the_expected_one(self, store: stores.Store) -> None:
        store.compare_and_set("rate", None, "first")

        found = store.compare_and_set("rate", "first", "second")

        assert found == "first"
        assert store.compare_and_set("rate", "second", "second") == "second"

    def test_a_value_that_is_not_the_expected_one_is_kept_and_returned(
        self, store: stores.Store
    ) -> None:
        store.compare_and_set("rate", None, "current")

        stale = store.compare_and_set("rate", "old", "mine")
        absent = store.compare_and_set("rate", None, "mine")

        assert (stale, absent) == ("current", "current")
        assert store.compare_and_set("rate", "current", "current") == "current"

    def test_an_expected_value_that_is_not_set_yet_sets_nothing(self, store: stores.Store) -> None:
        found = store.compare_and_set("rate", "imagined", "mine")

        assert found is None
        assert store.compare_and_set("rate", None, "first") is None

    def test_values_of_other_names_are_apart(self, store: stores.Store) -> None:
        store.compare_and_set("rate", None, "a")

        assert store.compare_and_set("other", None, "b") is None
        assert store.compare_and_set("rate", "a", "a") == "a"

    def test_of_eight_processes_racing_from_one_value_exactly_one_replaces_it_each_round(
        self, make_store: MakeStore
    ) -> None:
        make_store().compare_and_set("rate", None, "0")
        won: list[tuple[int, int]] = []
        errors: list[BaseException] = []
        start = threading.Barrier(8, timeout=10)

        def work(thread: int) -> None:
            try:
                own = make_store()
                for round_ in range(5):
                    start.wait()
                    if own.compare_and_set("rate", str(round_), str(round_ + 1)) == str(round_):
                        won.append((round_, thread))
                    start.wait()
            except BaseException as error:
                errors.append(error)
                start.abort()

        threads = [threading.Thread(target=work, args=(thread,)) for thread in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert sorted(round_ for round_, _ in won) == [0, 1, 2, 3, 4]


class TestSQLiteCompareAndSet(CompareAndSetContract):
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


class TestRedisCompareAndSet(CompareAndSetContract):
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

    def test_the_value_is_one_key_with_a_hash_tag_for_redis_cluster(
        self,
        make_store: MakeStore,
        redis_server: RedisServer,  # noqa: F811
    ) -> None:
        store = make_store()
        assert isinstance(store, redis_store.Store)

        store.compare_and_set("rate:rekognition", None, "state")

        with redis.Redis.from_url(redis_server.url) as client:
            keys = sorted(key.decode() for key in client.scan_iter(match=store.prefix + "*"))
        # Beside the format key and the mark of the index by time that every store writes
        # on its first call.
        assert keys == [
            store.prefix + "format",
            store.prefix + "timed",
            store.prefix + "{shared:rate:rekognition}",
        ]
