"""The moderator: one backend call per picture, stored decisions reused and re-judged.

The backend is a small real subclass that counts its calls; the store is the SQLite store
in a temporary directory; executors are real thread pools, as in a Thumbor process.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from PIL import Image
from thumbor.config import Config

from tests.conftest import picture
from thumbor_rekognition import stores
from thumbor_rekognition.backends import (
    Backend,
    BackendConfigurationError,
    BackendError,
    BadImageError,
    RetryableError,
)
from thumbor_rekognition.config import Settings
from thumbor_rekognition.decision import Analysis, Decision, Event, Label, Source, Status
from thumbor_rekognition.moderator import Moderator
from thumbor_rekognition.preparation import PreparedImage, UnsupportedImage
from thumbor_rekognition.stores import sqlite

T = TypeVar("T")

RED = (220, 20, 30)
BLUE = (20, 40, 210)
EXPLICIT_NUDITY_70 = Label("Explicit Nudity", "", 1, 70.0)
SUGGESTIVE_40 = Label("Suggestive", "", 1, 40.0)


class CountingBackend(Backend):
    """Answers with configured labels, as Rekognition would at the asked confidence."""

    name = "counting"

    def __init__(self, settings: Settings, labels: tuple[Label, ...] = ()) -> None:
        super().__init__(settings)
        self.labels = labels
        self.errors: list[BackendError] = []
        self.gate: threading.Event | None = None
        self.calls: list[float] = []
        self._lock = threading.Lock()

    def detect(self, image: PreparedImage, min_confidence: float) -> Analysis:
        with self._lock:
            self.calls.append(min_confidence)
            error = self.errors.pop(0) if self.errors else None
        if self.gate is not None and not self.gate.wait(10):
            raise RuntimeError("the test never opened the gate")
        if error is not None:
            raise error
        return Analysis(
            labels=tuple(label for label in self.labels if label.confidence >= min_confidence),
            backend=self.name,
            model_version="7.0",
            min_confidence=min_confidence,
        )


class Metrics:
    """Records what Thumbor's metrics object would receive."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def incr(self, name: str, value: int = 1) -> None:
        self.counts[name] += value

    def timing(self, name: str, milliseconds: float) -> None:
        pass


def make_settings(tmp_path: Path, **values: Any) -> Settings:
    config = Config()
    config.MODERATION_SQLITE_PATH = str(tmp_path / "moderation.sqlite3")
    for key, value in values.items():
        setattr(config, key, value)
    return Settings.from_config(config)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


def run(awaitable: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(awaitable, timeout=20)

    return asyncio.run(bounded())


class World:
    """Executors, one store file and one backend: what the processes of a machine share."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.executor = ThreadPoolExecutor(max_workers=8)
        self.store_executor = ThreadPoolExecutor(max_workers=1)
        self.store = sqlite.Store(path=str(tmp_path / "moderation.sqlite3"))
        self.backend = CountingBackend(make_settings(tmp_path), labels=(EXPLICIT_NUDITY_70,))

    def moderator(self, store: stores.Store | None = None, **values: Any) -> Moderator:
        """A Moderator with empty memory, as in a newly started Thumbor process."""
        return Moderator(
            settings=make_settings(self.tmp_path, **values),
            store=store if store is not None else self.store,
            backend=self.backend,
            executor=self.executor,
            store_executor=self.store_executor,
        )

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.store_executor.shutdown(wait=True)
        self.store.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    shared = World(tmp_path)
    yield shared
    shared.close()


def moderate(moderator: Moderator, key: str, data: bytes) -> Decision:
    return run(moderator.moderate(key, f"http://{key}", data))


# --- single flight ---------------------------------------------------------------------


def test_twenty_concurrent_requests_for_one_key_call_the_backend_once(world: World) -> None:
    moderator = world.moderator()
    data = picture(RED)
    world.backend.gate = threading.Event()
    metrics = Metrics()

    async def twenty_requests() -> list[Decision]:
        tasks = [
            asyncio.create_task(
                moderator.moderate("host/a.jpg", "http://host/a.jpg", data, metrics)
            )
            for _ in range(20)
        ]
        # Keep the backend busy until every other request has arrived.
        await eventually(lambda: metrics.counts["moderation.single_flight.joined"] == 19)
        assert world.backend.gate is not None
        world.backend.gate.set()
        return await asyncio.gather(*tasks)

    decisions = run(twenty_requests())

    assert len(world.backend.calls) == 1
    assert {item.status for item in decisions} == {Status.REJECTED}
    assert all(item == decisions[0] for item in decisions)
    assert len(world.store.history("host/a.jpg")) == 1


def test_twenty_concurrent_requests_for_one_picture_under_twenty_keys_call_the_backend_once(
    world: World,
) -> None:
    moderator = world.moderator()
    data = picture(RED)
    keys = [f"host-{number}/a.jpg" for number in range(20)]
    world.backend.gate = threading.Event()
    metrics = Metrics()

    async def twenty_requests() -> list[Decision]:
        tasks = [
            asyncio.create_task(moderator.moderate(key, f"http://{key}", data, metrics))
            for key in keys
        ]
        await eventually(lambda: metrics.counts["moderation.single_flight.joined"] == 19)
        assert world.backend.gate is not None
        world.backend.gate.set()
        return await asyncio.gather(*tasks)

    decisions = run(twenty_requests())

    assert len(world.backend.calls) == 1
    assert [item.key for item in decisions] == keys
    assert {item.status for item in decisions} == {Status.REJECTED}
    assert {item.sha256 for item in decisions} == {sha256(data)}
    stored = [world.store.get(key) for key in keys]
    assert [item.key if item else None for item in stored] == keys
    notes = {key: [item.note for item in world.store.history(key)] for key in keys}
    judged = [key for key in keys if not any("same picture" in note for note in notes[key])]
    assert len(judged) == 1
    for key in keys:
        if key != judged[0]:
            assert len(notes[key]) == 1
            assert "same picture" in notes[key][0]
            assert notes[key][0].endswith(f"as {judged[0]}")


def test_requests_waiting_on_a_failed_backend_call_under_other_keys_are_pending_too(
    world: World,
) -> None:
    moderator = world.moderator()
    data = picture(RED)
    keys = [f"host-{number}/a.jpg" for number in range(5)]
    world.backend.gate = threading.Event()
    world.backend.errors.append(RetryableError("Rekognition ThrottlingException: Rate exceeded"))
    metrics = Metrics()

    async def five_requests() -> list[Decision]:
        tasks = [
            asyncio.create_task(moderator.moderate(key, f"http://{key}", data, metrics))
            for key in keys
        ]
        await eventually(lambda: metrics.counts["moderation.single_flight.joined"] == 4)
        assert world.backend.gate is not None
        world.backend.gate.set()
        return await asyncio.gather(*tasks)

    decisions = run(five_requests())

    assert len(world.backend.calls) == 1
    assert [(item.key, item.status) for item in decisions] == [
        (key, Status.PENDING) for key in keys
    ]
    assert all("ThrottlingException" in item.error for item in decisions)


def test_a_failure_is_remembered_for_the_request_budget_then_forgotten(world: World) -> None:
    # A budget a judgement keeps within on a loaded machine, and a wait just past it.
    moderator = world.moderator(MODERATION_TIMEOUT_SECONDS=3.0)
    world.backend.errors.append(RetryableError("Rekognition ThrottlingException: Rate exceeded"))
    first = moderate(moderator, "host/a.jpg", picture(RED))
    assert first.needs_retry
    assert moderator.in_memory()["failures_remembered"] == 1

    # No request still waiting can have been asked before the first failure any more.
    time.sleep(3.2)
    world.backend.errors.append(RetryableError("Rekognition ThrottlingException: Rate exceeded"))
    second = moderate(moderator, "host/b.jpg", picture(BLUE))

    assert second.needs_retry
    assert moderator.in_memory()["failures_remembered"] == 1
    # The first picture is tried again, as any request made after its failure would be.
    assert moderate(moderator, "host/a.jpg", picture(RED)).status is Status.REJECTED
    assert len(world.backend.calls) == 3


# --- reuse of stored decisions ---------------------------------------------------------


def test_same_bytes_under_a_new_key_later_reuse_the_stored_decision(world: World) -> None:
    data = picture(RED)
    first = moderate(world.moderator(), "host/a.jpg", data)

    second = moderate(world.moderator(), "cdn/copy-of-a.jpg", data)

    assert len(world.backend.calls) == 1
    assert (second.key, second.status, second.labels) == (
        "cdn/copy-of-a.jpg",
        first.status,
        first.labels,
    )
    assert world.store.get("cdn/copy-of-a.jpg") == second
    [note] = [item.note for item in world.store.history("cdn/copy-of-a.jpg")]
    assert note.endswith("as host/a.jpg")


def test_known_key_with_the_same_bytes_is_answered_from_the_store(world: World) -> None:
    data = picture(RED)
    first = moderate(world.moderator(), "host/a.jpg", data)

    again = moderate(world.moderator(), "host/a.jpg", data)

    assert len(world.backend.calls) == 1
    assert again == first
    assert len(world.store.history("host/a.jpg")) == 1


def test_changed_bytes_under_a_known_key_are_judged_again(world: World) -> None:
    moderator = world.moderator()
    moderate(moderator, "host/a.jpg", picture(RED))
    world.backend.labels = ()
    replacement = picture(BLUE)

    decision = moderate(moderator, "host/a.jpg", replacement)

    assert len(world.backend.calls) == 2
    assert decision.status is Status.APPROVED
    assert decision.sha256 == sha256(replacement)
    assert world.store.get("host/a.jpg") == decision
    assert [item.status for item in world.store.history("host/a.jpg")] == [
        Status.REJECTED,
        Status.APPROVED,
    ]


# --- backend failures --------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        RetryableError("Rekognition ThrottlingException: Rate exceeded"),
        BadImageError("Rekognition InvalidImageFormatException: bad"),
        BackendConfigurationError("Rekognition AccessDeniedException: denied"),
        BackendError("Rekognition call failed: who knows"),
    ],
    ids=["retryable", "bad_image", "configuration", "error"],
)
def test_backend_error_leaves_the_picture_pending_with_the_error_recorded(
    world: World, error: BackendError
) -> None:
    world.backend.errors.append(error)

    decision = moderate(world.moderator(), "host/a.jpg", picture(RED))

    assert decision.status is Status.PENDING
    assert decision.error.startswith(f"{error.kind}: ")
    assert str(error) in decision.error
    assert world.store.get("host/a.jpg") == decision
    [entry] = world.store.history("host/a.jpg")
    assert entry.status is Status.PENDING
    assert str(error) in entry.note


def test_pending_picture_is_retried_by_the_next_request_and_then_decided(
    world: World,
) -> None:
    moderator = world.moderator()
    data = picture(RED)
    world.backend.errors.append(RetryableError("Rekognition ThrottlingException: Rate exceeded"))
    moderate(moderator, "host/a.jpg", data)

    retried = moderate(moderator, "host/a.jpg", data)

    assert len(world.backend.calls) == 2
    assert retried.status is Status.REJECTED
    assert retried.error == ""
    assert world.store.get("host/a.jpg") == retried
    assert [item.status for item in world.store.history("host/a.jpg")] == [
        Status.PENDING,
        Status.REJECTED,
    ]


def test_pending_picture_is_not_reused_for_the_same_bytes_under_another_key(
    world: World,
) -> None:
    data = picture(RED)
    world.backend.errors.append(RetryableError("Rekognition InternalServerError: oops"))
    moderate(world.moderator(), "host/a.jpg", data)

    other = moderate(world.moderator(), "cdn/a.jpg", data)

    assert len(world.backend.calls) == 2
    assert other.status is Status.REJECTED


# --- manual decisions --------------------------------------------------------------------


def test_manual_decision_is_returned_unchanged_without_a_backend_call(world: World) -> None:
    data = picture(RED)
    manual = Decision(
        key="host/a.jpg",
        url="http://host/a.jpg",
        sha256=sha256(data),
        status=Status.APPROVED,
        source=Source.MANUAL,
        labels=(Label("Explicit Nudity", "", 1, 99.0),),
        backend="counting",
        min_confidence=50.0,
    )
    world.store.save(manual, Event(Status.APPROVED, Source.MANUAL, "alice", "a museum piece"))

    decision = moderate(world.moderator(), "host/a.jpg", data)

    assert decision == manual
    assert world.backend.calls == []
    assert world.store.get("host/a.jpg") == manual
    assert len(world.store.history("host/a.jpg")) == 1


def test_manual_rejection_follows_the_picture_to_another_key(world: World) -> None:
    data = picture(RED)
    world.backend.labels = ()
    manual = Decision(
        key="host/a.jpg",
        url="http://host/a.jpg",
        sha256=sha256(data),
        status=Status.REJECTED,
        source=Source.MANUAL,
    )
    world.store.save(manual, Event(Status.REJECTED, Source.MANUAL, "alice", "copyright"))

    copy = moderate(world.moderator(), "cdn/a.jpg", data)

    assert world.backend.calls == []
    assert (copy.key, copy.status, copy.source) == ("cdn/a.jpg", Status.REJECTED, Source.MANUAL)


# --- new thresholds ----------------------------------------------------------------------


def test_raised_threshold_rejudges_the_stored_labels_without_a_backend_call(
    world: World,
) -> None:
    data = picture(RED)
    before = moderate(world.moderator(), "host/a.jpg", data)
    lenient = world.moderator(MODERATION_CATEGORY_THRESHOLDS={"explicit_nudity": 0.9})

    after = moderate(lenient, "host/a.jpg", data)

    assert before.status is Status.REJECTED
    assert after.status is Status.APPROVED
    assert len(world.backend.calls) == 1
    assert after.labels == before.labels
    assert world.store.get("host/a.jpg") == after
    history = world.store.history("host/a.jpg")
    assert [item.status for item in history] == [Status.REJECTED, Status.APPROVED]
    assert "threshold" in history[-1].note


def test_rejudged_decision_is_stored_once_not_on_every_lookup(world: World) -> None:
    data = picture(RED)
    moderate(world.moderator(), "host/a.jpg", data)
    settings = {"MODERATION_CATEGORY_THRESHOLDS": {"explicit_nudity": 0.9}}
    moderate(world.moderator(**settings), "host/a.jpg", data)

    moderate(world.moderator(**settings), "host/a.jpg", data)

    assert len(world.store.history("host/a.jpg")) == 2


def test_twin_judged_under_old_thresholds_is_rejudged_before_it_is_reused(
    world: World,
) -> None:
    data = picture(RED)
    moderate(world.moderator(), "host/a.jpg", data)
    lenient = world.moderator(MODERATION_CATEGORY_THRESHOLDS={"explicit_nudity": 0.9})

    copy = moderate(lenient, "cdn/a.jpg", data)

    assert copy.status is Status.APPROVED
    assert len(world.backend.calls) == 1


def test_threshold_below_the_analysed_confidence_floor_calls_the_backend_again(
    world: World,
) -> None:
    data = picture(RED)
    world.backend.labels = (SUGGESTIVE_40,)
    before = moderate(world.moderator(), "host/a.jpg", data)
    strict = world.moderator(MODERATION_MIN_CONFIDENCE=0.3)

    after = moderate(strict, "host/a.jpg", data)

    assert before.status is Status.APPROVED
    assert before.min_confidence == 50.0
    assert world.backend.calls == [50.0, 30.0]
    assert after.status is Status.REJECTED
    assert after.min_confidence == 30.0
    assert world.store.get("host/a.jpg") == after


# --- pictures that are not pictures ------------------------------------------------------


def test_random_bytes_are_unsupported_and_nothing_is_stored(world: World) -> None:
    moderator = world.moderator()
    noise = random.Random(7).randbytes(4096)

    with pytest.raises(UnsupportedImage):
        moderate(moderator, "host/noise.jpg", noise)
    with pytest.raises(UnsupportedImage):
        moderate(moderator, "host/noise.jpg", noise)

    assert world.backend.calls == []
    assert world.store.get("host/noise.jpg") is None
    assert world.store.counts() == {}
    assert world.store.history("host/noise.jpg") == []


# --- the decision cache ------------------------------------------------------------------


def test_decision_changed_in_the_store_is_seen_once_the_cache_ttl_has_passed(
    world: World,
) -> None:
    moderator = world.moderator(MODERATION_CACHE_TTL_SECONDS=0.5)
    data = picture(RED)
    first = moderate(moderator, "host/a.jpg", data)
    override = first.replace(status=Status.APPROVED, source=Source.MANUAL, updated_at=time.time())
    admin = sqlite.Store(path=world.store.path)
    admin.save(override, Event(Status.APPROVED, Source.MANUAL, "alice", "fine"))
    admin.close()

    within_ttl = moderate(moderator, "host/a.jpg", data)
    time.sleep(0.6)
    after_ttl = moderate(moderator, "host/a.jpg", data)

    assert within_ttl == first
    assert after_ttl == override
    assert len(world.backend.calls) == 1


def test_forgotten_key_is_read_from_the_store_again_at_once(world: World) -> None:
    moderator = world.moderator(MODERATION_CACHE_TTL_SECONDS=60)
    data = picture(RED)
    first = moderate(moderator, "host/a.jpg", data)
    override = first.replace(status=Status.APPROVED, source=Source.MANUAL)
    world.store.save(override, Event(Status.APPROVED, Source.MANUAL, "alice", "fine"))

    moderator.forget("host/a.jpg")
    seen = moderate(moderator, "host/a.jpg", data)

    assert seen == override
    assert len(world.backend.calls) == 1


def test_cache_ttl_of_zero_reads_every_decision_from_the_store(world: World) -> None:
    moderator = world.moderator(MODERATION_CACHE_TTL_SECONDS=0)
    data = picture(RED)
    first = moderate(moderator, "host/a.jpg", data)
    override = first.replace(status=Status.APPROVED, source=Source.MANUAL)
    world.store.save(override, Event(Status.APPROVED, Source.MANUAL, "alice", "fine"))

    seen = moderate(moderator, "host/a.jpg", data)

    assert seen == override


# --- an unavailable store ---------------------------------------------------------------


def test_unreachable_store_leaves_new_pictures_pending_without_a_backend_call(
    world: World,
) -> None:
    broken = sqlite.Store(path=str(world.tmp_path))  # a directory cannot be opened
    with pytest.raises(stores.StoreUnavailable):
        broken.get("host/a.jpg")
    moderator = world.moderator(store=broken)

    decision = moderate(moderator, "host/a.jpg", picture(RED))

    assert decision.status is Status.PENDING
    assert decision.needs_retry
    assert decision.error.startswith("store:")
    assert world.backend.calls == []


class HungStore(sqlite.Store):
    """A store that, while `hung` is set, answers every call only with a timeout."""

    hung = False

    def __init__(self, path: str) -> None:
        super().__init__(path=path)
        self.reached = 0
        self._lock = threading.Lock()

    def _hang(self) -> None:
        if self.hung:
            with self._lock:
                self.reached += 1
            time.sleep(0.05)
            raise stores.StoreUnavailable("timeout reading from socket")

    def get(self, key: str) -> Decision | None:
        self._hang()
        return super().get(key)

    def find_all_by_hash(self, sha256: str) -> list[Decision]:
        self._hang()
        return super().find_all_by_hash(sha256)

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        self._hang()
        return super().acquire_lease(name, holder, seconds)

    def save(self, decision: Decision, event: Event) -> Decision:
        self._hang()
        return super().save(decision, event)


def test_each_request_waits_for_a_hung_store_once_at_most(world: World) -> None:
    store = HungStore(str(world.tmp_path / "hung.sqlite3"))
    moderator = world.moderator(store=store)
    pictures = [picture(RED, size=(90, 80 + index)) for index in range(10)]
    store.hung = True

    async def one_request(index: int) -> Decision:
        # A request of its own: gather runs each in a task, as Tornado runs requests.
        key = f"host/{index}.jpg"
        await moderator.lookup(key)
        return await moderator.moderate(key, f"http://{key}", pictures[index])

    async def together() -> list[Decision]:
        return await asyncio.gather(*(one_request(index) for index in range(10)))

    decisions = run(together())

    # Each request makes several store calls; only its first may wait for the store.
    assert store.reached <= len(pictures)
    assert [decision.status for decision in decisions] == [Status.PENDING] * len(pictures)
    assert world.backend.calls == []


def test_the_first_request_after_a_store_outage_gets_a_real_decision(world: World) -> None:
    store = HungStore(str(world.tmp_path / "hung.sqlite3"))
    moderator = world.moderator(store=store)
    store.hung = True
    during = moderate(moderator, "host/a.jpg", picture(RED))
    store.hung = False

    after = moderate(moderator, "host/a.jpg", picture(RED))

    assert during.status is Status.PENDING
    assert after.status is Status.REJECTED


def test_store_in_an_uncreatable_directory_leaves_pictures_pending(world: World) -> None:
    blocker = world.tmp_path / "not-a-directory"
    blocker.write_text("")
    moderator = world.moderator(store=sqlite.Store(path=str(blocker / "moderation.sqlite3")))

    decision = moderate(moderator, "host/a.jpg", picture(RED))

    assert decision.status is Status.PENDING
    assert decision.needs_retry


class FlakySaves(sqlite.Store):
    """An SQLite store whose saves fail while `down` is set."""

    down = False

    def save(self, decision: Decision, event: Event) -> Decision:
        if self.down:
            raise stores.StoreUnavailable("saves are failing")
        return super().save(decision, event)


def test_an_approval_the_store_could_not_keep_is_pending_then_kept_without_paying_again(
    world: World,
) -> None:
    store = FlakySaves(path=str(world.tmp_path / "flaky.sqlite3"))
    moderator = world.moderator(store=store)
    world.backend.labels = ()
    data = picture(BLUE)
    store.down = True

    during = moderate(moderator, "host/a.jpg", data)
    store.down = False
    after = moderate(moderator, "host/a.jpg", data)

    assert (during.status, during.needs_retry) == (Status.PENDING, True)
    assert after.status is Status.APPROVED
    assert store.get("host/a.jpg") == after
    assert len(world.backend.calls) == 1


def test_a_rejection_the_store_could_not_keep_is_still_a_rejection_then_kept_without_paying(
    world: World,
) -> None:
    # Answered pending, it would be shown to viewers by a Thumbor failing open
    # (MODERATION_ON_ERROR = 'allow') although the model rejected it.
    store = FlakySaves(path=str(world.tmp_path / "flaky.sqlite3"))
    moderator = world.moderator(store=store)
    data = picture(RED)
    store.down = True

    during = moderate(moderator, "host/a.jpg", data)
    store.down = False
    after = moderate(moderator, "host/a.jpg", data)

    assert (during.status, during.needs_retry) == (Status.REJECTED, False)
    assert after.status is Status.REJECTED
    assert store.get("host/a.jpg") == after
    assert len(world.backend.calls) == 1


def test_a_blind_rejection_the_store_cannot_bind_is_still_a_rejection(world: World) -> None:
    store = FlakySaves(path=str(world.tmp_path / "flaky.sqlite3"))
    moderator = world.moderator(store=store)
    world.backend.labels = ()
    blind = Decision(
        key="host/a.jpg",
        url="https://host/a.jpg",
        sha256="",
        status=Status.REJECTED,
        source=Source.MANUAL,
        blind=True,
    )
    store.save(blind, Event(Status.REJECTED, Source.MANUAL, "reports", "abuse report"))
    store.down = True

    during = moderate(moderator, "host/a.jpg", picture(BLUE))
    store.down = False
    after = moderate(moderator, "host/a.jpg", picture(BLUE))

    assert (during.status, during.source) == (Status.REJECTED, Source.MANUAL)
    assert (after.status, after.source, after.blind) == (Status.REJECTED, Source.MANUAL, True)
    assert store.get("host/a.jpg") == after
    assert after.sha256 == hashlib.sha256(picture(BLUE)).hexdigest()
    assert world.backend.calls == []


def test_decision_known_before_the_store_went_away_still_answers(world: World) -> None:
    store = FlakySaves(path=str(world.tmp_path / "flaky.sqlite3"))
    moderator = world.moderator(store=store, MODERATION_CACHE_TTL_SECONDS=0.05)
    judged = moderate(moderator, "host/a.jpg", picture(RED))
    store.path = str(world.tmp_path)  # every call fails from now on
    store.close()
    time.sleep(0.1)

    remembered = run(moderator.lookup("host/a.jpg"))

    assert remembered == judged


# --- review band -------------------------------------------------------------------------


def test_picture_waiting_for_review_is_not_sent_to_the_backend_again(world: World) -> None:
    moderator = world.moderator(MODERATION_REVIEW_BAND=0.2)
    world.backend.labels = (Label("Explicit Nudity", "", 1, 40.0),)
    data = picture(RED)
    first = moderate(moderator, "host/a.jpg", data)

    for _ in range(3):
        moderate(moderator, "host/a.jpg", data)

    assert (first.status, first.error) == (Status.PENDING, "")
    assert len(world.backend.calls) == 1


def test_request_that_is_cancelled_does_not_cancel_the_requests_waiting_on_it(
    world: World,
) -> None:
    moderator = world.moderator()
    data = picture(RED)
    world.backend.gate = threading.Event()
    metrics = Metrics()

    async def leader_gives_up() -> Decision:
        leader = asyncio.create_task(moderator.moderate("host/a.jpg", "http://a", data, metrics))
        await eventually(lambda: len(world.backend.calls) == 1)
        follower = asyncio.create_task(moderator.moderate("cdn/a.jpg", "http://b", data, metrics))
        await eventually(lambda: metrics.counts["moderation.single_flight.joined"] == 1)
        leader.cancel()
        await asyncio.sleep(0.05)
        assert world.backend.gate is not None
        world.backend.gate.set()
        return await follower

    decision = run(leader_gives_up())

    assert decision.status is Status.REJECTED
    assert len(world.backend.calls) == 1


def _scenes_gif(count: int) -> bytes:
    colours = [
        (index * 40 % 256, 255 - index * 30 % 256, index * 70 % 256) for index in range(count)
    ]
    frames = [Image.new("RGB", (120, 90), colour) for colour in colours]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def test_animation_with_scenes_past_the_frame_limit_waits_for_a_human(world: World) -> None:
    world.backend.labels = ()
    moderator = world.moderator(MODERATION_MAX_FRAMES=2)

    decision = moderate(moderator, "host/scenes.gif", _scenes_gif(5))
    rejudged = moderator.rejudged(decision)

    assert (decision.status, decision.needs_retry) == (Status.PENDING, False)
    assert [reason.category for reason in decision.reasons] == ["unjudged_scenes"]
    assert decision.reasons[0].confidence == 3
    assert rejudged.status is Status.PENDING
    assert len(world.backend.calls) == 1


def test_unjudged_scenes_are_named_next_to_a_manual_review(world: World) -> None:
    world.backend.labels = ()
    moderator = world.moderator(MODERATION_MAX_FRAMES=2, MODERATION_RULES="aws_rek|manual")

    decision = moderate(moderator, "host/manual-scenes.gif", _scenes_gif(5))
    rejudged = moderator.rejudged(decision)

    assert (decision.status, decision.needs_retry) == (Status.PENDING, False)
    assert [reason.category for reason in decision.reasons] == ["unjudged_scenes", "manual"]
    assert [reason.category for reason in rejudged.reasons] == ["unjudged_scenes", "manual"]


def test_animation_whose_scenes_are_all_judged_is_approved(world: World) -> None:
    world.backend.labels = ()
    moderator = world.moderator(MODERATION_MAX_FRAMES=5)

    decision = moderate(moderator, "host/scenes.gif", _scenes_gif(5))

    assert decision.status is Status.APPROVED
