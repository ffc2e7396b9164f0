"""The durable outbox of every decision store: order per topic and key, claims, retries.

``OutboxContract`` holds what a store's outbox promises to outbox.py; a store runs it by
subclassing it with a ``make_store`` fixture, as ``StoreContract`` does.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.stores.test_sqlite import MakeStore, decision, event, save
from thumbor_rekognition import stores
from thumbor_rekognition.decision import Decision, Event, Source, Status
from thumbor_rekognition.stores import redis as redis_store
from thumbor_rekognition.stores import sqlite

LEASE = 30.0


class Announcer:
    """Announces every change as '<previous status>-><status> <recorded paths>', on the
    webhook topic and one CDN's; remembers what it was asked."""

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.asked: list[tuple[str | None, str | None, str, list[str]]] = []

    def __call__(
        self, previous: Decision | None, current: Decision | None, event: Event, recorded: list[str]
    ) -> list[tuple[str, str]]:
        before = previous.status.value if previous else None
        after = current.status.value if current else None
        self.asked.append((before, after, event.note, recorded))
        if self.fails:
            raise RuntimeError("announcer failing on purpose")
        text = f"{before}->{after} {' '.join(recorded)}".strip()
        return [("webhook", text), ("cdn:http", text)]


def neighbour_of(key: str) -> str:
    """Another key that the Redis store keeps in the same partition (and outbox)."""
    partition = zlib.crc32(key.encode()) % redis_store.PARTITIONS
    return next(
        other
        for other in (f"host/other-{number}.jpg" for number in itertools.count())
        if zlib.crc32(other.encode()) % redis_store.PARTITIONS == partition
    )


def claim_all(store: stores.Store, now: float | None = None) -> list[stores.OutboxItem]:
    return store.claim(time.time() if now is None else now, LEASE, 100)


class OutboxContract:
    """What every store's outbox does; subclasses provide ``make_store``."""

    @pytest.fixture
    def make_store(self) -> Iterator[MakeStore]:
        raise NotImplementedError

    @pytest.fixture
    def store(self, make_store: MakeStore) -> stores.Store:
        return make_store()

    def test_an_enqueued_item_is_claimed_with_its_topic_key_payload_and_first_attempt(
        self, store: stores.Store
    ) -> None:
        before = time.time()
        store.enqueue("webhook", "host/a.jpg", '{"event": "decision.changed"}')

        claimed = claim_all(store)

        assert [(i.topic, i.key, i.payload, i.attempts) for i in claimed] == [
            ("webhook", "host/a.jpg", '{"event": "decision.changed"}', 1)
        ]
        assert before - 1 <= claimed[0].created_at <= time.time() + 1

    def test_a_claimed_item_is_hidden_for_the_lease_then_claimed_again_with_one_more_attempt(
        self, store: stores.Store
    ) -> None:
        store.enqueue("webhook", "host/a.jpg", "one")
        now = time.time()
        first = store.claim(now, 10.0, 5)

        hidden = store.claim(now + 5.0, 10.0, 5)
        again = store.claim(now + 11.0, 10.0, 5)

        assert [item.attempts for item in first] == [1]
        assert hidden == []
        assert [(item.id, item.attempts) for item in again] == [(first[0].id, 2)]

    def test_items_of_one_topic_and_key_are_claimed_one_at_a_time_in_order(
        self, store: stores.Store
    ) -> None:
        for payload in ("first", "second", "third"):
            store.enqueue("webhook", "host/a.jpg", payload)

        order = []
        for _ in range(3):
            claimed = claim_all(store)
            assert len(claimed) == 1
            order.append(claimed[0].payload)
            store.complete(claimed[0])

        assert order == ["first", "second", "third"]
        assert claim_all(store) == []

    def test_the_next_item_of_a_key_waits_while_the_first_is_claimed(
        self, store: stores.Store
    ) -> None:
        store.enqueue("webhook", "host/a.jpg", "first")
        store.enqueue("webhook", "host/a.jpg", "second")
        now = time.time()
        store.claim(now, 10.0, 5)

        after_the_lease = store.claim(now + 11.0, 10.0, 5)

        assert [item.payload for item in after_the_lease] == ["first"]

    def test_items_of_other_keys_and_topics_are_claimed_together_up_to_the_limit(
        self, store: stores.Store
    ) -> None:
        store.enqueue("webhook", "host/a.jpg", "a")
        store.enqueue("webhook", "host/b.jpg", "b")
        store.enqueue("cdn:cloudfront", "host/a.jpg", "purge a")

        first = store.claim(time.time(), LEASE, 2)
        rest = claim_all(store)

        assert len(first) == 2
        assert sorted(item.payload for item in first + rest) == ["a", "b", "purge a"]

    def test_an_item_ids_are_unique_across_keys(self, store: stores.Store) -> None:
        for number in range(5):
            store.enqueue("webhook", f"host/{number}.jpg", str(number))

        claimed = claim_all(store)

        assert len({item.id for item in claimed}) == 5

    def test_a_rescheduled_item_is_due_again_at_its_new_time_only(
        self, store: stores.Store
    ) -> None:
        store.enqueue("webhook", "host/a.jpg", "retry me")
        now = time.time()
        [item] = store.claim(now, 1.0, 5)

        store.reschedule(item, now + 60.0, "webhook answered HTTP 500")

        assert store.claim(now + 30.0, 1.0, 5) == []
        assert [i.attempts for i in store.claim(now + 61.0, 1.0, 5)] == [2]

    def test_counts_tell_items_waiting_per_topic_and_drop_delivered_ones(
        self, store: stores.Store
    ) -> None:
        store.enqueue("webhook", "host/a.jpg", "a")
        store.enqueue("webhook", "host/b.jpg", "b")
        store.enqueue("cdn:http", "host/a.jpg", "purge")
        waiting = store.outbox_counts()

        for item in claim_all(store):
            store.complete(item)

        assert waiting == {"cdn:http.pending": 1, "webhook.pending": 2}
        assert store.outbox_counts() == {}

    def test_an_abandoned_item_is_counted_and_no_longer_blocks_its_key(
        self, store: stores.Store
    ) -> None:
        store.enqueue("webhook", "host/a.jpg", "hopeless")
        store.enqueue("webhook", "host/a.jpg", "next")
        [hopeless] = claim_all(store)

        store.abandon(hopeless, "receiver gone")
        following = claim_all(store)

        assert [item.payload for item in following] == ["next"]
        assert store.outbox_counts() == {"webhook.abandoned": 1, "webhook.pending": 1}

    def test_items_queued_behind_a_failing_one_do_not_keep_other_pictures_waiting(
        self, store: stores.Store
    ) -> None:
        for number in range(60):
            store.enqueue("webhook", "host/busy.jpg", f"busy {number}")
        [failing] = store.claim(time.time(), LEASE, 1)
        store.reschedule(failing, time.time() + 600, "receiver down")
        store.enqueue("webhook", neighbour_of("host/busy.jpg"), "other")

        claimed = store.claim(time.time(), LEASE, 1)

        assert [item.payload for item in claimed] == ["other"]

    def test_a_claim_for_one_topic_takes_its_items_only(self, store: stores.Store) -> None:
        for number in range(3):
            store.enqueue("webhook", f"host/{number}.jpg", f"hook {number}")
        store.enqueue("cdn:http", "host/0.jpg", "purge 0")

        purges = store.claim(time.time(), LEASE, 10, "cdn:http")
        webhooks = store.claim(time.time(), LEASE, 10, "webhook")

        assert [item.payload for item in purges] == ["purge 0"]
        assert sorted(item.payload for item in webhooks) == ["hook 0", "hook 1", "hook 2"]

    def test_a_saved_change_is_in_the_outbox_with_what_its_announcer_said_of_it(
        self, store: stores.Store
    ) -> None:
        announcer = Announcer()
        store.announcer = announcer
        store.add_results("host/a.jpg", ["/unsafe/50x50/a.jpg"])

        save(store, decision("host/a.jpg"), note="judged")
        save(store, decision("host/a.jpg", status=Status.REJECTED, source=Source.MANUAL))
        store.delete("host/a.jpg", event(None, None, note="forgotten"))

        changes = []
        for _ in range(3):
            [hook] = store.claim(time.time(), LEASE, 10, "webhook")
            changes.append(hook.payload)
            store.complete(hook)
        assert changes == [
            "None->approved /unsafe/50x50/a.jpg",
            "approved->rejected /unsafe/50x50/a.jpg",
            "rejected->None /unsafe/50x50/a.jpg",
        ]
        assert [asked[2] for asked in announcer.asked] == ["judged", "", "forgotten"]
        assert store.outbox_counts() == {"cdn:http.pending": 3}

    def test_a_save_that_changes_nothing_announces_nothing(self, store: stores.Store) -> None:
        store.announcer = Announcer()
        manual = decision("host/a.jpg", status=Status.REJECTED, source=Source.MANUAL)
        save(store, manual)
        announced = claim_all(store)
        for item in announced:
            store.complete(item)

        save(store, decision("host/a.jpg", status=Status.APPROVED))

        assert store.get("host/a.jpg") == manual
        assert [item.payload for item in announced] == ["None->rejected"] * 2
        assert store.outbox_counts() == {}

    def test_a_change_whose_announcements_cannot_be_made_is_not_saved(
        self, store: stores.Store
    ) -> None:
        save(store, decision("host/a.jpg"))
        store.announcer = Announcer(fails=True)

        with pytest.raises(RuntimeError):
            save(store, decision("host/a.jpg", status=Status.REJECTED, source=Source.MANUAL))
        with pytest.raises(RuntimeError):
            store.delete("host/a.jpg", event(None, None))

        assert store.get("host/a.jpg") == decision("host/a.jpg")
        assert claim_all(store) == []

    def test_an_item_claimed_in_one_process_is_completed_from_another(
        self, make_store: MakeStore
    ) -> None:
        first, second = make_store(), make_store()
        first.enqueue("webhook", "host/a.jpg", "a")
        [item] = claim_all(first)

        second.complete(item)

        assert first.outbox_counts() == {}
        assert claim_all(first, time.time() + 2 * LEASE) == []

    def test_each_item_is_claimed_by_one_of_four_racing_processes(
        self, make_store: MakeStore
    ) -> None:
        writer = make_store()
        for number in range(12):
            writer.enqueue("webhook", f"host/{number}.jpg", str(number))
        claimed: list[list[stores.OutboxItem]] = [[] for _ in range(4)]
        errors: list[BaseException] = []
        start = threading.Barrier(4, timeout=10)

        def work(index: int) -> None:
            try:
                own = make_store()
                start.wait()
                claimed[index] = own.claim(time.time(), LEASE, 12)
            except BaseException as error:
                errors.append(error)
                start.abort()

        threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        payloads = [item.payload for items in claimed for item in items]
        assert errors == []
        assert sorted(payloads, key=int) == [str(number) for number in range(12)]


class TestSQLiteOutbox(OutboxContract):
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


class TestRedisOutbox(OutboxContract):
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
