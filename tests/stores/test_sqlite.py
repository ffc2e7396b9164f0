"""The decision store contract, run against the SQLite store.

``StoreContract`` holds every behaviour a decision store promises. A store runs it by
subclassing it with a ``make_store`` fixture: a factory whose every call opens a new
Store object on the same underlying data, as another Thumbor process would.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from thumbor.config import Config

from thumbor_rekognition import stores
from thumbor_rekognition.config import Settings
from thumbor_rekognition.decision import Decision, Event, Label, Reason, Source, Status
from thumbor_rekognition.duplicates import probes
from thumbor_rekognition.fingerprint import Print
from thumbor_rekognition.stores import sqlite

MakeStore = Callable[[], stores.Store]

SHA_A = "a" * 64
SHA_B = "b" * 64
# Two fingerprints whose slots differ everywhere (the first with its rotations' and
# mirrors' hashes, as a judged frame has them), and one 3 bits from the first.
_A = 0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210_0F1E_2D3C_4B5A_6978_8796_A5B4_C3D2_E1F0
PRINT_A = Print(_A, (_A, *(_A ^ (0xFFFF << (16 * turn)) for turn in range(1, 8))))
PRINT_B = Print(_A ^ ((1 << 256) - 1))
NEAR_A = Print(_A ^ 0b1000_0000_0000_0001 ^ (1 << 40) ^ (1 << 255))
# What the index answers for the first: its hash alone.
HASH_A = Print(_A)


def everything(value: int) -> bool:
    return True


def by_hash(entry: stores.Indexed) -> str:
    return entry.sha256


def decision(
    key: str,
    sha256: str = SHA_A,
    status: Status = Status.APPROVED,
    source: Source = Source.AUTO,
    updated_at: float = 1_700_000_000.0,
) -> Decision:
    return Decision(
        key=key,
        url=f"http://{key}",
        sha256=sha256,
        status=status,
        source=source,
        created_at=updated_at,
        updated_at=updated_at,
    )


def event(
    status: Status | None, source: Source | None, actor: str = "test", note: str = ""
) -> Event:
    return Event(status=status, source=source, actor=actor, note=note)


def save(store: stores.Store, item: Decision, actor: str = "test", note: str = "") -> Decision:
    return store.save(item, event(item.status, item.source, actor, note))


def every_key(store: stores.Store, status: Status | None = None, limit: int = 37) -> list[str]:
    keys: list[str] = []
    cursor: str | None = None
    for _ in range(10_000):
        page, cursor = store.page(status=status, limit=limit, cursor=cursor)
        assert len(page) <= limit
        keys.extend(item.key for item in page)
        if cursor is None:
            return keys
    raise AssertionError("page() never returned a last page")


def every_key_by_time(store: stores.Store, status: Status, limit: int = 37) -> list[str]:
    keys: list[str] = []
    cursor: str | None = None
    for _ in range(10_000):
        page, cursor = store.page_by_time(status, limit=limit, cursor=cursor)
        assert len(page) <= limit
        keys.extend(item.key for item in page)
        if cursor is None:
            return keys
    raise AssertionError("page_by_time() never returned a last page")


class StoreContract:
    """What every decision store does; subclasses provide ``make_store``."""

    @pytest.fixture
    def make_store(self) -> Iterator[MakeStore]:
        raise NotImplementedError

    @pytest.fixture
    def store(self, make_store: MakeStore) -> stores.Store:
        return make_store()

    def test_unknown_key_has_no_decision(self, store: stores.Store) -> None:
        assert store.get("host/nothing.jpg") is None

    def test_saved_decision_comes_back_with_every_field(self, store: stores.Store) -> None:
        original = Decision(
            key="example.com/photos/été.jpg",
            url="https://example.com/photos/%C3%A9t%C3%A9.jpg?size=large",
            sha256=SHA_A,
            status=Status.REJECTED,
            source=Source.AUTO,
            labels=(
                Label("Explicit", "", 1, 97.123456789),
                Label("Explicit Nudity", "Explicit", 2, 97.123456789),
                Label("Exposed Female Nipple", "Explicit Nudity", 3, 64.5),
            ),
            reasons=(Reason("Explicit Nudity", "Explicit", 97.123456789, 0.6, "explicit"),),
            backend="rekognition",
            model_version="7.0",
            policy="0123456789abcdef",
            min_confidence=42.5,
            width=4032,
            height=3024,
            error="retryable: an earlier attempt failed",
            created_at=1_700_000_000.25,
            updated_at=1_700_000_123.5,
        )

        returned = store.save(original, event(Status.REJECTED, Source.AUTO))
        stored = store.get(original.key)

        assert stored == original
        assert returned == original

    def test_saving_again_replaces_the_decision_for_the_key(self, store: stores.Store) -> None:
        save(store, decision("host/a.jpg", status=Status.PENDING))

        save(store, decision("host/a.jpg", status=Status.REJECTED))

        stored = store.get("host/a.jpg")
        assert stored is not None
        assert stored.status is Status.REJECTED

    def test_history_lists_every_change_oldest_first_with_actor_and_note(
        self, store: stores.Store
    ) -> None:
        events = [
            Event(Status.PENDING, Source.AUTO, "thumbor-rekognition", "no decision: timeout", 1.0),
            Event(Status.REJECTED, Source.AUTO, "thumbor-rekognition", "Explicit 97.1 > 0.5", 2.0),
            Event(Status.APPROVED, Source.MANUAL, "alice@example.com", "a statue, not nudity", 3.0),
        ]
        for item, status, source in zip(
            events,
            [Status.PENDING, Status.REJECTED, Status.APPROVED],
            [Source.AUTO, Source.AUTO, Source.MANUAL],
            strict=True,
        ):
            store.save(decision("host/a.jpg", status=status, source=source), item)
        delete_event = Event(None, None, "bob", "purged on request", 4.0)
        store.delete("host/a.jpg", delete_event)

        history = store.history("host/a.jpg")

        assert history == [*events, delete_event]

    def test_history_of_one_key_holds_nothing_of_another(self, store: stores.Store) -> None:
        save(store, decision("host/a.jpg"), note="about a")
        save(store, decision("host/b.jpg"), note="about b")

        history = store.history("host/a.jpg")

        assert [item.note for item in history] == ["about a"]

    def test_automatic_decision_never_replaces_a_manual_one_about_the_same_bytes(
        self, store: stores.Store
    ) -> None:
        manual = save(store, decision("host/a.jpg", status=Status.APPROVED, source=Source.MANUAL))

        returned = save(store, decision("host/a.jpg", status=Status.REJECTED, source=Source.AUTO))

        assert returned == manual
        assert store.get("host/a.jpg") == manual

    def test_automatic_decision_replaces_a_manual_one_about_other_bytes(
        self, store: stores.Store
    ) -> None:
        save(store, decision("host/a.jpg", SHA_A, Status.APPROVED, Source.MANUAL))
        changed = decision("host/a.jpg", SHA_B, Status.REJECTED, Source.AUTO)

        returned = save(store, changed)

        assert returned == changed
        assert store.get("host/a.jpg") == changed

    def test_manual_decision_replaces_a_manual_one(self, store: stores.Store) -> None:
        save(store, decision("host/a.jpg", status=Status.APPROVED, source=Source.MANUAL))
        second = decision("host/a.jpg", status=Status.REJECTED, source=Source.MANUAL)

        save(store, second)

        assert store.get("host/a.jpg") == second

    def test_find_by_hash_prefers_a_manual_decision_to_a_newer_automatic_one(
        self, store: stores.Store
    ) -> None:
        manual = decision("host/a.jpg", status=Status.REJECTED, source=Source.MANUAL)
        save(store, manual)
        save(store, decision("cdn/a.jpg", status=Status.APPROVED, updated_at=1_800_000_000.0))

        found = store.find_by_hash(SHA_A)

        assert found == manual

    def test_find_by_hash_finds_a_picture_waiting_for_review(self, store: stores.Store) -> None:
        waiting = save(store, decision("host/b.jpg", SHA_B, status=Status.PENDING))

        assert store.find_by_hash(SHA_B) == waiting

    def test_find_by_hash_ignores_decisions_left_pending_by_a_failure(
        self, store: stores.Store
    ) -> None:
        failed = decision("host/a.jpg", status=Status.PENDING, updated_at=1_800_000_000.0)
        save(store, failed.replace(error="retryable: ThrottlingException"))
        approved = decision("cdn/a.jpg", status=Status.APPROVED)
        save(store, approved)
        save(store, decision("host/b.jpg", SHA_B, status=Status.PENDING).replace(error="timeout"))

        found_a = store.find_by_hash(SHA_A)
        found_b = store.find_by_hash(SHA_B)

        assert found_a == approved
        assert found_b is None

    def test_find_by_hash_of_unknown_bytes_finds_nothing(self, store: stores.Store) -> None:
        save(store, decision("host/a.jpg"))

        assert store.find_by_hash(SHA_B) is None

    def test_delete_forgets_the_decision_but_keeps_its_history(self, store: stores.Store) -> None:
        save(store, decision("host/a.jpg"), note="judged")

        deleted = store.delete("host/a.jpg", event(None, None, "alice", "forget it"))

        assert deleted is True
        assert store.get("host/a.jpg") is None
        assert store.find_by_hash(SHA_A) is None
        assert [(item.actor, item.note) for item in store.history("host/a.jpg")] == [
            ("test", "judged"),
            ("alice", "forget it"),
        ]

    def test_delete_of_an_unknown_key_is_false_and_logs_nothing(self, store: stores.Store) -> None:
        save(store, decision("host/a.jpg"))
        store.delete("host/a.jpg", event(None, None, "alice", "first"))

        deleted_again = store.delete("host/a.jpg", event(None, None, "alice", "second"))
        deleted_unknown = store.delete("host/never.jpg", event(None, None, "alice", "never"))

        assert (deleted_again, deleted_unknown) == (False, False)
        assert [item.note for item in store.history("host/a.jpg")] == ["", "first"]
        assert store.history("host/never.jpg") == []

    def test_list_pages_visit_every_key_exactly_once_in_key_order_with_or_without_a_status(
        self, store: stores.Store
    ) -> None:
        # One set of 1,000 decisions for the four listings: saving them is what costs
        # (a minute on DynamoDB's fake), listing them is not.
        statuses = [Status.APPROVED, Status.REJECTED, Status.PENDING]
        expected: dict[str, Status] = {}
        for number in range(1000):
            key = f"host-{number % 7}/image-{number:04d}.jpg"
            expected[key] = statuses[number % 3]
            save(store, decision(key, sha256=f"{number:064x}", status=expected[key]))

        assert every_key(store) == sorted(expected)
        for status in statuses:
            assert every_key(store, status=status) == sorted(
                key for key, its in expected.items() if its is status
            ), status

    def test_list_page_that_ends_exactly_at_the_last_key_has_no_next_cursor(
        self, store: stores.Store
    ) -> None:
        for number in range(74):
            save(store, decision(f"host/{number:03d}.jpg", sha256=f"{number:064x}"))

        first, cursor = store.page(limit=37)
        second, last_cursor = store.page(limit=37, cursor=cursor)

        assert [len(first), len(second)] == [37, 37]
        assert last_cursor is None

    def test_list_of_an_empty_store_is_one_empty_page(self, store: stores.Store) -> None:
        assert store.page() == ([], None)

    def test_counts_decisions_per_status_and_per_status_and_source(
        self, store: stores.Store
    ) -> None:
        layout = [
            (Status.APPROVED, Source.AUTO, 5),
            (Status.APPROVED, Source.MANUAL, 2),
            (Status.REJECTED, Source.AUTO, 3),
            (Status.REJECTED, Source.MANUAL, 1),
            (Status.PENDING, Source.AUTO, 4),
        ]
        number = 0
        for status, source, count in layout:
            for _ in range(count):
                save(store, decision(f"host/{number}.jpg", f"{number:064x}", status, source))
                number += 1
        store.delete("host/0.jpg", event(None, None))

        counts = store.counts()

        assert counts == {
            "approved": 6,
            "approved.auto": 4,
            "approved.manual": 2,
            "rejected": 4,
            "rejected.auto": 3,
            "rejected.manual": 1,
            "pending": 4,
            "pending.auto": 4,
        }

    def test_two_processes_see_each_others_writes(self, make_store: MakeStore) -> None:
        first, second = make_store(), make_store()
        written = decision("host/a.jpg", status=Status.REJECTED)

        first.save(written, event(Status.REJECTED, Source.AUTO, note="from the first"))
        seen_by_second = second.get("host/a.jpg")
        second.delete("host/a.jpg", event(None, None, note="from the second"))
        seen_by_first = first.get("host/a.jpg")

        assert seen_by_second == written
        assert seen_by_first is None
        assert [item.note for item in first.history("host/a.jpg")] == [
            "from the first",
            "from the second",
        ]

    def test_manual_decision_of_one_process_stands_against_automatic_saves_of_another(
        self, make_store: MakeStore
    ) -> None:
        reviewer, worker = make_store(), make_store()
        manual = save(
            reviewer, decision("host/a.jpg", status=Status.REJECTED, source=Source.MANUAL)
        )

        returned = save(worker, decision("host/a.jpg", status=Status.APPROVED, source=Source.AUTO))

        assert returned == manual
        assert reviewer.get("host/a.jpg") == manual

    def test_concurrent_saves_from_eight_threads_sharing_a_store_all_land(
        self, store: stores.Store
    ) -> None:
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def work(thread: int) -> None:
            try:
                start.wait()
                for number in range(50):
                    save(
                        store,
                        decision(f"t{thread}/{number:02d}.jpg", f"{thread:032x}{number:032x}"),
                    )
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(thread,)) for thread in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert store.counts()["approved"] == 400
        assert len(every_key(store, limit=100)) == 400

    def test_concurrent_saves_from_eight_threads_with_a_store_each_all_land(
        self, make_store: MakeStore
    ) -> None:
        # The file exists before the race starts; opening a new file concurrently is
        # covered on its own below.
        make_store().counts()
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def work(thread: int) -> None:
            try:
                own = make_store()
                start.wait()
                for number in range(50):
                    save(
                        own, decision(f"t{thread}/{number:02d}.jpg", f"{thread:032x}{number:032x}")
                    )
                    save(
                        own, decision("shared.jpg", f"{thread:032x}{number:032x}"), note=str(thread)
                    )
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(thread,)) for thread in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        reader = make_store()
        assert errors == []
        assert reader.counts()["approved"] == 401
        assert len(reader.history("shared.jpg")) == 400

    def test_find_all_by_hash_returns_every_decision_about_the_bytes_in_key_order(
        self, store: stores.Store
    ) -> None:
        about_a = [
            decision("host/c.jpg", status=Status.APPROVED),
            decision("cdn/a.jpg", status=Status.REJECTED, source=Source.MANUAL),
            decision("host/a.jpg", status=Status.PENDING).replace(error="retryable: timeout"),
            decision("mirror/a.jpg", status=Status.PENDING),
        ]
        for item in about_a:
            save(store, item)
        save(store, decision("host/b.jpg", SHA_B, status=Status.REJECTED))

        found = store.find_all_by_hash(SHA_A)

        assert found == sorted(about_a, key=lambda item: item.key)

    def test_find_all_by_hash_leaves_out_forgotten_decisions(self, store: stores.Store) -> None:
        kept = save(store, decision("host/a.jpg"))
        save(store, decision("host/b.jpg"))
        store.delete("host/b.jpg", event(None, None))

        found = store.find_all_by_hash(SHA_A)

        assert found == [kept]

    def test_find_all_by_hash_of_unknown_bytes_is_empty(self, store: stores.Store) -> None:
        save(store, decision("host/a.jpg"))

        assert store.find_all_by_hash(SHA_B) == []

    def test_find_all_by_hash_of_an_empty_hash_is_empty_even_if_decisions_have_none(
        self, store: stores.Store
    ) -> None:
        save(store, decision("host/unread.jpg", sha256="", status=Status.PENDING))

        assert store.find_all_by_hash("") == []

    def test_results_come_back_in_the_order_they_were_recorded(self, store: stores.Store) -> None:
        store.add_results("host/a.jpg", ["/unsafe/300x200/host/a.jpg", "/unsafe/host/a.jpg"])
        store.add_results("host/a.jpg", ["/unsafe/fit-in/10x10/host/a.jpg"])

        paths = store.results("host/a.jpg")

        assert paths == [
            "/unsafe/300x200/host/a.jpg",
            "/unsafe/host/a.jpg",
            "/unsafe/fit-in/10x10/host/a.jpg",
        ]

    def test_paths_recorded_in_one_call_keep_that_order(self, store: stores.Store) -> None:
        store.add_results("host/a.jpg", ["/unsafe/zz/host/a.jpg", "/unsafe/aa/host/a.jpg"])

        store.add_results("host/a.jpg", ["/unsafe/mm/host/a.jpg"])

        assert store.results("host/a.jpg") == [
            "/unsafe/zz/host/a.jpg",
            "/unsafe/aa/host/a.jpg",
            "/unsafe/mm/host/a.jpg",
        ]

    def test_result_recorded_again_keeps_one_entry_in_its_first_place(
        self, store: stores.Store
    ) -> None:
        store.add_results("host/a.jpg", ["/one", "/two", "/one"])

        store.add_results("host/a.jpg", ["/three", "/two", "/one", "/three"])

        assert store.results("host/a.jpg") == ["/one", "/two", "/three"]

    def test_results_of_one_key_hold_nothing_of_another(self, store: stores.Store) -> None:
        store.add_results("host/a.jpg", ["/shared", "/only-a"])
        store.add_results("host/b.jpg", ["/shared", "/only-b"])

        paths = (store.results("host/a.jpg"), store.results("host/b.jpg"))

        assert paths == (["/shared", "/only-a"], ["/shared", "/only-b"])

    def test_results_of_a_key_without_any_are_empty(self, store: stores.Store) -> None:
        store.add_results("host/a.jpg", [])

        assert (store.results("host/a.jpg"), store.results("host/never.jpg")) == ([], [])

    def test_drop_results_forgets_the_paths_of_that_key_only(self, store: stores.Store) -> None:
        store.add_results("host/a.jpg", ["/a/1", "/a/2"])
        store.add_results("host/b.jpg", ["/b/1"])

        store.drop_results("host/a.jpg")
        store.drop_results("host/never.jpg")

        assert store.results("host/a.jpg") == []
        assert store.results("host/b.jpg") == ["/b/1"]

    def test_results_recorded_after_a_drop_start_afresh(self, store: stores.Store) -> None:
        store.add_results("host/a.jpg", ["/old", "/again"])
        store.drop_results("host/a.jpg")

        store.add_results("host/a.jpg", ["/again", "/new"])

        assert store.results("host/a.jpg") == ["/again", "/new"]

    def test_results_recorded_by_one_process_are_dropped_by_another(
        self, make_store: MakeStore
    ) -> None:
        worker, reviewer = make_store(), make_store()
        worker.add_results("host/a.jpg", ["/unsafe/host/a.jpg"])

        seen = reviewer.results("host/a.jpg")
        reviewer.drop_results("host/a.jpg")

        assert seen == ["/unsafe/host/a.jpg"]
        assert worker.results("host/a.jpg") == []

    def test_counters_of_a_new_store_are_empty(self, store: stores.Store) -> None:
        assert store.counters() == {}

    def test_incr_adds_to_a_named_counter(self, store: stores.Store) -> None:
        store.incr("moderation.backend.calls")
        store.incr("moderation.backend.calls", 5)
        store.incr("moderation.decision.rejected", 2)

        counters = store.counters()

        assert counters == {"moderation.backend.calls": 6, "moderation.decision.rejected": 2}

    def test_two_stores_on_the_same_data_share_counters(self, make_store: MakeStore) -> None:
        first, second = make_store(), make_store()

        first.incr("moderation.backend.calls", 3)
        second.incr("moderation.backend.calls", 4)

        assert first.counters() == second.counters() == {"moderation.backend.calls": 7}

    def test_concurrent_increments_from_eight_threads_sharing_a_store_are_all_counted(
        self, store: stores.Store
    ) -> None:
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def work() -> None:
            try:
                start.wait()
                for _ in range(100):
                    store.incr("moderation.backend.calls")
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert store.counters() == {"moderation.backend.calls": 800}

    def test_concurrent_increments_from_eight_threads_with_a_store_each_are_all_counted(
        self, make_store: MakeStore
    ) -> None:
        make_store().counters()
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def work(thread: int) -> None:
            try:
                own = make_store()
                start.wait()
                for _ in range(100):
                    own.incr("moderation.backend.calls")
                    own.incr(f"thread.{thread}", 2)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(thread,)) for thread in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert make_store().counters() == {
            "moderation.backend.calls": 800,
            **{f"thread.{thread}": 200 for thread in range(8)},
        }

    def test_page_returns_whole_decisions(self, store: stores.Store) -> None:
        rejected = save(store, decision("host/a.jpg", status=Status.REJECTED, source=Source.MANUAL))
        approved = save(store, decision("host/b.jpg", SHA_B))

        page, cursor = store.page()

        assert page == [rejected, approved]
        assert cursor is None

    def test_page_of_one_walks_every_key(self, store: stores.Store) -> None:
        keys = [f"host/{letter}.jpg" for letter in "edcba"]
        for key in keys:
            save(store, decision(key))

        walked = every_key(store, limit=1)

        assert walked == sorted(keys)

    def test_page_after_a_cursor_that_is_no_key_starts_at_the_next_key(
        self, store: stores.Store
    ) -> None:
        for key in ["host/a.jpg", "host/c.jpg", "host/e.jpg"]:
            save(store, decision(key))

        page, _ = store.page(limit=10, cursor="host/b")

        assert [item.key for item in page] == ["host/c.jpg", "host/e.jpg"]

    def test_page_resumes_after_a_cursor_whose_decision_was_forgotten(
        self, store: stores.Store
    ) -> None:
        for number in range(6):
            save(store, decision(f"host/{number}.jpg"))
        first, cursor = store.page(limit=3)
        assert cursor is not None
        store.delete(cursor, event(None, None))

        second, last = store.page(limit=3, cursor=cursor)

        assert [item.key for item in first] == ["host/0.jpg", "host/1.jpg", "host/2.jpg"]
        assert [item.key for item in second] == ["host/3.jpg", "host/4.jpg", "host/5.jpg"]
        assert last is None

    def test_page_with_a_status_and_a_cursor_skips_other_statuses(
        self, store: stores.Store
    ) -> None:
        statuses = [Status.REJECTED, Status.APPROVED, Status.REJECTED, Status.PENDING]
        for number, status in enumerate(statuses * 2):
            save(store, decision(f"host/{number}.jpg", status=status))

        first, cursor = store.page(status=Status.REJECTED, limit=2)
        second, last = store.page(status=Status.REJECTED, limit=2, cursor=cursor)

        assert [item.key for item in first] == ["host/0.jpg", "host/2.jpg"]
        assert [item.key for item in second] == ["host/4.jpg", "host/6.jpg"]
        assert last is None

    def test_page_with_a_limit_below_one_is_refused(self, store: stores.Store) -> None:
        save(store, decision("host/a.jpg"))

        with pytest.raises(ValueError, match="limit"):
            store.page(limit=0)

    def forget_order_by_time(self, store: stores.Store) -> None:
        """Take the index by time away from the store's data, as the version before it
        left its data."""
        raise NotImplementedError

    def test_decisions_saved_before_the_index_by_time_are_listed_by_time_once_opened(
        self, make_store: MakeStore
    ) -> None:
        writer = make_store()
        statuses = [Status.PENDING, Status.REJECTED, Status.PENDING, Status.APPROVED]
        for number, status in enumerate(statuses * 3):
            save(
                writer,
                decision(
                    f"host/{number:02d}.jpg", f"{number:064x}", status, updated_at=100.0 - number
                ),
            )
        self.forget_order_by_time(writer)

        reopened = make_store()

        assert every_key_by_time(reopened, Status.PENDING, 2) == [
            f"host/{number:02d}.jpg" for number in (10, 8, 6, 4, 2, 0)
        ]
        assert every_key_by_time(reopened, Status.REJECTED, 2) == [
            f"host/{number:02d}.jpg" for number in (9, 5, 1)
        ]

    @pytest.mark.parametrize("status", [Status.PENDING, Status.REJECTED])
    def test_page_by_time_lists_a_status_oldest_first_across_pages(
        self, store: stores.Store, status: Status
    ) -> None:
        statuses = [Status.PENDING, Status.APPROVED, Status.REJECTED]
        expected: list[tuple[float, str]] = []
        for number in range(90):
            key = f"host-{number % 7}/image-{number:04d}.jpg"
            # Times out of key order, some shared by two pictures (then in key order).
            at = 1_700_000_000.0 + (number * 37 % 90) // 2 + 0.25
            if statuses[number % 3] is status:
                expected.append((at, key))
            save(store, decision(key, f"{number:064x}", statuses[number % 3], updated_at=at))

        walked = every_key_by_time(store, status, limit=7)

        assert walked == [key for _, key in sorted(expected)]

    def test_a_status_change_moves_a_picture_between_orderings(self, store: stores.Store) -> None:
        for number, key in enumerate(["host/c.jpg", "host/a.jpg", "host/b.jpg"]):
            save(store, decision(key, status=Status.PENDING, updated_at=100.0 + number))

        save(store, decision("host/c.jpg", status=Status.REJECTED, updated_at=200.0))
        pending_then = every_key_by_time(store, Status.PENDING)
        save(store, decision("host/c.jpg", status=Status.PENDING, updated_at=300.0))
        save(store, decision("host/a.jpg", status=Status.APPROVED, updated_at=400.0))
        store.delete("host/b.jpg", event(None, None))

        assert pending_then == ["host/a.jpg", "host/b.jpg"]
        assert every_key_by_time(store, Status.PENDING) == ["host/c.jpg"]
        assert every_key_by_time(store, Status.REJECTED) == []

    def test_page_by_time_returns_whole_decisions_and_resumes_after_a_forgotten_one(
        self, store: stores.Store
    ) -> None:
        saved = [
            save(store, decision(f"host/{n}.jpg", status=Status.PENDING, updated_at=10.0 - n))
            for n in range(4)
        ]
        first, cursor = store.page_by_time(Status.PENDING, limit=2)
        assert cursor is not None
        store.delete("host/2.jpg", event(None, None))

        second, last = store.page_by_time(Status.PENDING, limit=2, cursor=cursor)

        assert first == [saved[3], saved[2]]
        assert second == [saved[1], saved[0]]
        assert last is None

    def test_page_by_time_of_approved_or_after_a_cursor_it_never_gave_is_refused(
        self, store: stores.Store
    ) -> None:
        save(store, decision("host/a.jpg", status=Status.PENDING))

        with pytest.raises(ValueError, match="by time"):
            store.page_by_time(Status.APPROVED)
        with pytest.raises(ValueError, match="cursor"):
            store.page_by_time(Status.PENDING, cursor="host/a.jpg")
        with pytest.raises(ValueError, match="limit"):
            store.page_by_time(Status.PENDING, limit=0)

    def test_automatic_save_racing_a_manual_one_about_the_same_bytes_never_replaces_it(
        self, make_store: MakeStore
    ) -> None:
        make_store().counts()
        keys = [f"host/{number:02d}.jpg" for number in range(40)]
        errors: list[BaseException] = []
        together = threading.Barrier(2, timeout=10)

        def work(status: Status, source: Source) -> None:
            try:
                own = make_store()
                for key in keys:
                    together.wait()
                    save(own, decision(key, status=status, source=source))
            except BaseException as error:
                errors.append(error)
                together.abort()

        threads = [
            threading.Thread(target=work, args=(Status.REJECTED, Source.MANUAL)),
            threading.Thread(target=work, args=(Status.APPROVED, Source.AUTO)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        reader = make_store()
        assert errors == []
        assert [reader.get(key) for key in keys] == [
            decision(key, status=Status.REJECTED, source=Source.MANUAL) for key in keys
        ]

    def test_an_automatic_or_duplicate_decision_never_replaces_a_manual_one_about_the_same_bytes(
        self, store: stores.Store
    ) -> None:
        manual = save(store, decision("host/a.jpg", status=Status.APPROVED, source=Source.MANUAL))
        duplicate = decision("host/a.jpg", status=Status.REJECTED, source=Source.DUPLICATE)

        returned = save(store, duplicate.replace(duplicate_of="host/o.jpg", similarity=0.97))

        assert returned == manual
        assert store.get("host/a.jpg") == manual

    def test_a_duplicate_decision_comes_back_naming_its_original_and_counts_by_source(
        self, store: stores.Store
    ) -> None:
        duplicate = decision("host/copy.jpg", status=Status.REJECTED, source=Source.DUPLICATE)
        duplicate = duplicate.replace(duplicate_of="host/o.jpg", similarity=0.9688)

        save(store, duplicate)

        assert store.get("host/copy.jpg") == duplicate
        assert store.counts() == {"rejected": 1, "rejected.duplicate": 1}

    def test_fingerprints_come_back_by_frame_and_a_new_put_replaces_them(
        self, store: stores.Store
    ) -> None:
        store.put_fingerprints(SHA_A, {0: PRINT_A, 3: PRINT_B}, rejecting=())
        first = store.fingerprints(SHA_A)

        store.put_fingerprints(SHA_A, {1: NEAR_A}, rejecting=())

        assert first == {0: PRINT_A, 3: PRINT_B}
        assert store.fingerprints(SHA_A) == {1: NEAR_A}
        assert store.fingerprints(SHA_B) == {}

    def test_every_frame_is_found_by_its_bands_marked_rejecting_or_not(
        self, store: stores.Store
    ) -> None:
        store.put_fingerprints(SHA_A, {0: PRINT_A, 1: PRINT_B}, rejecting={0})

        near_a = store.indexed_near(probes([NEAR_A], within=6), everything)
        near_b = store.indexed_near(probes([PRINT_B], within=6), everything)

        assert near_a == [stores.Indexed(SHA_A, HASH_A, rejecting=True)]
        assert near_b == [stores.Indexed(SHA_A, PRINT_B, rejecting=False)]

    def test_the_index_of_rejecting_frames_holds_their_rotations_and_mirrors_alone(
        self, store: stores.Store
    ) -> None:
        store.put_fingerprints(SHA_A, {0: PRINT_A, 1: PRINT_B}, rejecting={0})
        store.put_fingerprints(SHA_B, {0: Print(PRINT_A.variants[5])}, rejecting=())
        # PRINT_A's variants share most slots: each lookup keeps one hash exactly.
        turned, fifth = Print(PRINT_A.variants[3]), Print(PRINT_A.variants[5])

        def lookup(print_: Print, rejecting_only: bool) -> list[stores.Indexed]:
            found = store.indexed_near(
                probes([print_], within=0), print_.value.__eq__, rejecting_only=rejecting_only
            )
            return sorted(found, key=by_hash)

        assert lookup(turned, rejecting_only=True) == [stores.Indexed(SHA_A, turned, True)]
        assert lookup(turned, rejecting_only=False) == []
        assert lookup(PRINT_B, rejecting_only=True) == []
        assert lookup(PRINT_B, rejecting_only=False) == [stores.Indexed(SHA_A, PRINT_B, False)]
        assert lookup(fifth, rejecting_only=True) == [stores.Indexed(SHA_A, fifth, True)]
        assert lookup(fifth, rejecting_only=False) == [stores.Indexed(SHA_B, fifth, False)]
        assert store.fingerprints(SHA_A) == {0: PRINT_A, 1: PRINT_B}

    def test_a_frame_that_stops_rejecting_leaves_the_index_of_rejecting_frames(
        self, make_store: MakeStore
    ) -> None:
        writer, reader = make_store(), make_store()
        turned = Print(PRINT_A.variants[6])
        writer.put_fingerprints(SHA_A, {0: PRINT_A}, rejecting={0})
        asked = probes([turned], within=0)
        found = reader.indexed_near(asked, turned.value.__eq__, rejecting_only=True)

        writer.put_fingerprints(SHA_A, {0: PRINT_A}, rejecting=())

        assert found == [stores.Indexed(SHA_A, turned, rejecting=True)]
        assert reader.indexed_near(asked, everything, rejecting_only=True) == []
        assert reader.indexed_near(probes([PRINT_A], within=0), everything) == [
            stores.Indexed(SHA_A, HASH_A, rejecting=False)
        ]

    def test_a_band_within_the_probed_values_is_enough_to_be_found(
        self, store: stores.Store
    ) -> None:
        store.put_fingerprints(SHA_A, {0: PRINT_A}, rejecting={0})
        bands = PRINT_A.bands()
        only_third_band: list[set[int]] = [set() for _ in bands]
        only_third_band[2] = {bands[2]}
        wrong_values = [{value ^ 1} for value in bands]

        assert store.indexed_near(only_third_band, everything) == [
            stores.Indexed(SHA_A, HASH_A, rejecting=True)
        ]
        assert store.indexed_near(wrong_values, everything) == []

    def test_close_sees_each_candidates_hash_and_keeps_only_what_it_accepts(
        self, store: stores.Store
    ) -> None:
        store.put_fingerprints(SHA_A, {0: PRINT_A}, rejecting={0})
        store.put_fingerprints(SHA_B, {0: PRINT_B}, rejecting={0})
        both = [a | b for a, b in zip(probes([HASH_A], 0), probes([PRINT_B], 0), strict=True)]
        seen: list[int] = []

        def only_b(value: int) -> bool:
            seen.append(value)
            return value == PRINT_B.value

        found = store.indexed_near(both, only_b)

        assert found == [stores.Indexed(SHA_B, PRINT_B, rejecting=True)]
        assert sorted(set(seen)) == sorted({PRINT_A.value, PRINT_B.value})

    def test_a_picture_put_again_without_rejecting_frames_stays_indexed_once(
        self, make_store: MakeStore
    ) -> None:
        writer, reader = make_store(), make_store()
        writer.put_fingerprints(SHA_A, {0: PRINT_A}, rejecting={0})
        writer.put_fingerprints(SHA_B, {0: PRINT_A}, rejecting={0})
        found = reader.indexed_near(probes([PRINT_A], within=0), everything)

        writer.put_fingerprints(SHA_A, {0: PRINT_A}, rejecting=())

        assert sorted(found, key=by_hash) == [
            stores.Indexed(SHA_A, HASH_A, rejecting=True),
            stores.Indexed(SHA_B, HASH_A, rejecting=True),
        ]
        assert sorted(
            reader.indexed_near(probes([PRINT_A], within=0), everything), key=by_hash
        ) == [
            stores.Indexed(SHA_A, HASH_A, rejecting=False),
            stores.Indexed(SHA_B, HASH_A, rejecting=True),
        ]
        assert reader.fingerprints(SHA_A) == {0: PRINT_A}

    def test_duplicates_are_linked_to_their_original_and_unlinked(
        self, make_store: MakeStore
    ) -> None:
        writer, reader = make_store(), make_store()
        writer.link_duplicate(SHA_A, "host/copy-2.jpg")
        writer.link_duplicate(SHA_A, "host/copy-1.jpg")
        writer.link_duplicate(SHA_A, "host/copy-1.jpg")
        writer.link_duplicate(SHA_B, "host/other.jpg")
        linked = reader.duplicates_of(SHA_A)

        writer.link_duplicate(SHA_A, "host/copy-2.jpg", linked=False)

        assert linked == ["host/copy-1.jpg", "host/copy-2.jpg"]
        assert reader.duplicates_of(SHA_A) == ["host/copy-1.jpg"]
        assert reader.duplicates_of("c" * 64) == []

    def test_free_lease_is_taken(self, store: stores.Store) -> None:
        assert store.acquire_lease("backfill", "node-1", 30) is True

    def test_lease_held_by_another_holder_is_refused(self, make_store: MakeStore) -> None:
        first, second = make_store(), make_store()
        first.acquire_lease("backfill", "node-1", 30)

        taken = second.acquire_lease("backfill", "node-2", 30)

        assert taken is False

    def test_holder_renews_its_own_lease(self, store: stores.Store) -> None:
        store.acquire_lease("backfill", "node-1", 30)

        renewed = store.acquire_lease("backfill", "node-1", 30)

        assert renewed is True
        assert store.acquire_lease("backfill", "node-2", 30) is False

    def test_renewed_lease_outlives_its_first_term(self, store: stores.Store) -> None:
        store.acquire_lease("backfill", "node-1", 1.0)
        first_term_over = time.monotonic() + 1.0
        store.acquire_lease("backfill", "node-1", 30)

        # However slow the machine: the first term has ended, the renewed one has not.
        time.sleep(first_term_over + 0.2 - time.monotonic())
        taken = store.acquire_lease("backfill", "node-2", 30)

        assert taken is False

    def test_expired_lease_is_taken_by_another_holder(self, store: stores.Store) -> None:
        store.acquire_lease("backfill", "node-1", 0.3)
        time.sleep(0.4)

        taken = store.acquire_lease("backfill", "node-2", 30)

        assert taken is True
        assert store.acquire_lease("backfill", "node-1", 30) is False

    def test_release_by_another_holder_leaves_the_lease_held(self, store: stores.Store) -> None:
        store.acquire_lease("backfill", "node-1", 30)

        store.release_lease("backfill", "node-2")

        assert store.acquire_lease("backfill", "node-2", 30) is False

    def test_release_by_the_holder_frees_the_lease_for_another_process(
        self, make_store: MakeStore
    ) -> None:
        holder, other = make_store(), make_store()
        holder.acquire_lease("backfill", "node-1", 30)

        holder.release_lease("backfill", "node-1")

        assert other.acquire_lease("backfill", "node-2", 30) is True

    def test_release_of_a_lease_nobody_holds_does_nothing(self, store: stores.Store) -> None:
        store.release_lease("backfill", "node-1")

        assert store.acquire_lease("backfill", "node-2", 30) is True

    def test_leases_of_different_names_do_not_block_each_other(self, store: stores.Store) -> None:
        store.acquire_lease("backfill", "node-1", 30)

        taken = store.acquire_lease(f"content:{SHA_A}", "node-2", 30)

        assert taken is True

    @pytest.mark.parametrize("shared", [True, False], ids=["sharing-a-store", "a-store-each"])
    def test_exactly_one_of_eight_threads_racing_for_a_lease_wins_it(
        self, make_store: MakeStore, shared: bool
    ) -> None:
        common = make_store()
        common.counters()
        winners: dict[str, list[str]] = {f"race-{race}": [] for race in range(5)}
        errors: list[BaseException] = []
        start = threading.Barrier(8, timeout=10)

        def work(thread: int) -> None:
            try:
                own = common if shared else make_store()
                for name, won in winners.items():
                    start.wait()
                    if own.acquire_lease(name, f"node-{thread}", 30):
                        won.append(f"node-{thread}")
            except BaseException as error:
                errors.append(error)
                start.abort()

        threads = [threading.Thread(target=work, args=(thread,)) for thread in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert [len(won) for won in winners.values()] == [1] * 5
        assert all(common.acquire_lease(name, "late", 30) is False for name in winners)


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Iterator[MakeStore]:
        opened: list[sqlite.Store] = []

        def make() -> stores.Store:
            store = sqlite.Store(path=str(tmp_path / "decisions" / "moderation.sqlite3"))
            opened.append(store)
            return store

        yield make
        for store in opened:
            store.close()

    def forget_order_by_time(self, store: stores.Store) -> None:
        assert isinstance(store, sqlite.Store)
        with contextlib.closing(sqlite3.connect(store.path)) as db:
            db.execute("DROP INDEX pictures_by_time")
            db.execute("ALTER TABLE pictures DROP COLUMN changed")
            db.commit()

    def test_pictures_an_earlier_version_saved_into_a_file_with_the_index_are_timed_when_opened(
        self, make_store: MakeStore
    ) -> None:
        writer = make_store()
        for number in range(3):
            save(
                writer,
                decision(f"host/{number}.jpg", status=Status.PENDING, updated_at=9.0 - number),
            )
        path = writer.path if isinstance(writer, sqlite.Store) else ""
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("UPDATE pictures SET changed = NULL WHERE key = 'host/1.jpg'")
            db.commit()

        reopened = make_store()

        assert every_key_by_time(reopened, Status.PENDING) == [
            "host/2.jpg",
            "host/1.jpg",
            "host/0.jpg",
        ]

    def test_migrate_store_dates_waiting_pictures_an_earlier_version_saved_meanwhile(
        self, make_store: MakeStore
    ) -> None:
        store = make_store()
        for number in range(3):
            save(store, decision(f"host/{number}.jpg", status=Status.PENDING, updated_at=5.0))
        assert isinstance(store, sqlite.Store)
        with contextlib.closing(sqlite3.connect(store.path)) as db:
            db.execute("UPDATE pictures SET changed = NULL WHERE key != 'host/1.jpg'")
            db.commit()

        dated, again = store.migrate(), store.migrate()

        with contextlib.closing(sqlite3.connect(store.path)) as db:
            untimed = db.execute("SELECT COUNT(*) FROM pictures WHERE changed IS NULL").fetchone()
        assert (dated, again, untimed[0]) == (2, 0, 0)

    def test_change_saved_by_another_process_reaches_this_ones_listener(
        self, make_store: MakeStore
    ) -> None:
        listening, writer = make_store(), make_store()
        heard: queue.Queue[str | None] = queue.Queue()
        listening.subscribe(heard.put)
        time.sleep(0.3)

        save(writer, decision("host/changed.jpg"))
        save(listening, decision("host/own.jpg"))
        writer.delete("host/changed.jpg", event(None, None))

        told = [heard.get(timeout=1.0), heard.get(timeout=1.0)]
        assert told == ["host/changed.jpg", "host/changed.jpg"]
        time.sleep(0.3)
        assert heard.empty()

    def test_configured_store_module_loads_an_sqlite_store_at_the_configured_path(
        self, tmp_path: Path
    ) -> None:
        config = Config()
        config.MODERATION_SQLITE_PATH = str(tmp_path / "configured.sqlite3")
        settings = Settings.from_config(config)

        store = stores.load_store(settings)
        save(store, decision("host/a.jpg"))
        store.close()

        assert isinstance(store, sqlite.Store)
        assert (tmp_path / "configured.sqlite3").is_file()

    def test_module_without_a_store_class_is_refused(self) -> None:
        config = Config()
        config.MODERATION_DECISION_STORE = "thumbor_rekognition.decision"
        settings = Settings.from_config(config)

        with pytest.raises(TypeError, match="MODERATION_DECISION_STORE"):
            stores.load_store(settings)

    def test_store_without_settings_or_path_is_refused(self) -> None:
        with pytest.raises(ValueError, match="path"):
            sqlite.Store()

    def test_path_that_is_a_directory_is_unavailable(self, tmp_path: Path) -> None:
        store = sqlite.Store(path=str(tmp_path))

        with pytest.raises(stores.StoreUnavailable):
            store.get("host/a.jpg")

    def test_file_that_is_not_a_database_is_unavailable(self, tmp_path: Path) -> None:
        path = tmp_path / "moderation.sqlite3"
        path.write_bytes(b"this is not an SQLite database, it is a note" * 100)
        store = sqlite.Store(path=str(path))

        with pytest.raises(stores.StoreUnavailable):
            store.save(decision("host/a.jpg"), event(Status.APPROVED, Source.AUTO))

    @pytest.mark.parametrize(
        "below_file", ["moderation.sqlite3", "sub/moderation.sqlite3"], ids=["child", "grandchild"]
    )
    def test_path_in_an_unwritable_location_is_unavailable(
        self, tmp_path: Path, below_file: str
    ) -> None:
        # Tests run as root, for whom permissions do not stop writes: a regular file
        # standing where the directory should be does.
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        store = sqlite.Store(path=str(blocker / below_file))

        with pytest.raises(stores.StoreUnavailable):
            store.get("host/a.jpg")

    def test_reopened_store_finds_what_a_closed_one_saved(self, tmp_path: Path) -> None:
        path = str(tmp_path / "moderation.sqlite3")
        first = sqlite.Store(path=path)
        written = decision("host/a.jpg", status=Status.REJECTED)
        save(first, written)
        first.close()

        second = sqlite.Store(path=path)

        assert second.get("host/a.jpg") == written
        second.close()

    def test_opening_a_new_file_waits_while_another_process_is_writing_it(
        self, tmp_path: Path
    ) -> None:
        path = str(tmp_path / "moderation.sqlite3")
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        other.execute("CREATE TABLE IF NOT EXISTS other_process (value)")
        releases = threading.Timer(0.3, other.execute, args=("COMMIT",))
        releases.start()
        store = sqlite.Store(path=path)

        try:
            found = store.get("host/a.jpg")
        finally:
            releases.join()
            other.close()
            store.close()

        assert found is None
