"""The cluster's call rate, shared through each decision store: SQLite, Redis, DynamoDB."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.moto_server import moto_server
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from thumbor_rekognition import ratelimit, stores
from thumbor_rekognition.stores import dynamodb, sqlite
from thumbor_rekognition.stores import redis as redis_store

OpenStore = Callable[[], stores.Store]


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "redis", "dynamodb"])
def open_store(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[OpenStore]:
    """A new store object on the same data at each call, as another process would open."""
    opened: list[stores.Store] = []
    kind = request.param
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"test-{uuid.uuid4().hex[:12]}:"
    if kind == "dynamodb":
        endpoint: str = request.getfixturevalue("moto_endpoint")
        table = f"rate-{uuid.uuid4().hex[:12]}"
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def open_store() -> stores.Store:
        store: stores.Store
        if kind == "sqlite":
            store = sqlite.Store(path=str(tmp_path / "moderation.sqlite3"))
        elif kind == "redis":
            store = redis_store.Store(url=server.url, prefix=prefix, timeout=2.0)
        else:
            store = dynamodb.Store(
                table=table, endpoint_url=endpoint, region="us-east-1", create_table=True
            )
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def rate(limit: float, store: stores.Store) -> ratelimit.CallRate:
    return ratelimit.CallRate(limit, lambda: store)


def test_turns_taken_by_two_processes_from_eight_threads_are_one_interval_apart(
    open_store: OpenStore,
) -> None:
    limit = 40.0
    processes = [rate(limit, open_store()), rate(limit, open_store())]
    turns: list[float] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8, timeout=30)

    def work(thread: int) -> None:
        try:
            start.wait()
            for _ in range(6):
                turns.append(processes[thread % 2].take())
        except BaseException as error:
            errors.append(error)
            start.abort()

    threads = [threading.Thread(target=work, args=(thread,)) for thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    ordered = sorted(turns)
    gaps = [later - earlier for earlier, later in itertools.pairwise(ordered)]
    assert len(ordered) == 48
    assert min(gaps) >= 1 / limit - 1e-6


def test_a_turn_that_would_come_after_the_deadline_is_refused_and_takes_nothing(
    open_store: OpenStore,
) -> None:
    # A turn every 10 s, the deadline counted from the first turn: however long the
    # store's calls take on a busy machine, the next turn comes after the deadline.
    calls = rate(0.1, open_store())
    first = calls.take()

    with pytest.raises(ratelimit.NoTurn, match=r"REKOGNITION_MAX_CALLS_PER_SECOND=0\.1"):
        calls.take(deadline=first + 5.0)
    second = calls.take()

    # The refused attempt took no turn: the next one is still one interval after the first.
    assert second - first == pytest.approx(10.0, abs=0.01)


def test_a_turn_refused_on_a_stale_view_is_checked_against_the_store(
    open_store: OpenStore,
) -> None:
    # This process last saw the next turn a second away; another process's view of an
    # idle second is what the store holds now.
    here, there = rate(1.0, open_store()), rate(1.0, open_store())
    here.take()
    here.take()
    there.take(deadline=time.time() + 5)

    # A fresh read shows the next free turn 2 s away: still refused within 0.5 s.
    with pytest.raises(ratelimit.NoTurn):
        here.take(deadline=time.time() + 0.5)


def test_waiting_for_a_turn_sleeps_until_it(open_store: OpenStore) -> None:
    calls = rate(4.0, open_store())
    first = calls.take()
    calls.take()

    calls.wait()

    assert time.time() >= first + 2 / 4.0 - 0.001


def test_a_turn_free_now_is_taken_even_past_the_deadline(open_store: OpenStore) -> None:
    # One turn a minute: the next one stays in the future however slow the store answers
    # (at one every 2 s, a store call of over 2 s on a loaded machine made it free too).
    calls = rate(1 / 60, open_store())

    turn = calls.take(deadline=time.time() - 1.0)

    assert turn <= time.time()
    with pytest.raises(ratelimit.NoTurn):
        calls.take(deadline=time.time() - 1.0)


def test_turns_taken_ahead_are_used_before_any_new_one(open_store: OpenStore) -> None:
    calls = rate(4.0, open_store())
    ahead = calls.take_many(2)
    budget = ratelimit.Budget(None, ahead)

    calls.wait(budget)
    calls.wait(budget)
    after = calls.take()

    assert time.time() >= ahead[1] - 0.001
    # Two turns were taken ahead, one interval apart, and the next one follows them.
    assert after == pytest.approx(ahead[1] + 1 / 4.0)


def test_a_turn_taken_ahead_but_used_late_is_exchanged_for_a_fresh_one(
    open_store: OpenStore,
) -> None:
    calls = rate(4.0, open_store())
    [stale] = calls.take_many(1)
    time.sleep(0.3)  # past half an interval (0.125 s): the call comes late
    following = calls.take()

    calls.wait(ratelimit.Budget(None, [stale]))

    # Not sent at once beside the turn after it: it waited for a turn after that one.
    assert time.time() >= following + 1 / 4.0 - 0.001


def test_throttling_halves_the_rate_for_every_process_once_a_second(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Still, as ratelimit sees it: the rate grows back with time, and a loaded machine
    # can take a second to build the second process's client (and a DynamoDB client
    # more), which would be read here as recovery.
    monkeypatch.setattr(ratelimit, "time", Clock())
    here, there = rate(10.0, open_store()), rate(10.0, open_store())
    here.take()

    here.throttled()
    here.throttled()
    first = there.take()
    second = there.take()

    assert here.current() == pytest.approx(5.0, abs=0.1)
    assert there.current() == pytest.approx(5.0, abs=0.1)
    # The next turn after a throttling answer is one lowered interval away at least.
    assert second - first >= 1 / 5.0 - 0.01


class Clock:
    """ratelimit's own clock, moved by the test (the store keeps the real one)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_lowered_rate_grows_back_to_the_limit_within_a_minute_per_halving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(ratelimit, "time", clock)
    store = sqlite.Store(path=str(tmp_path / "moderation.sqlite3"))
    calls = rate(8.0, store)
    calls.take()

    lowered = []
    for _ in range(6):
        calls.throttled()
        lowered.append(calls.current())
        clock.now += 1.5
    at_lowest = calls.current()
    clock.now += 30
    calls.take()
    after_30_s = calls.current()
    clock.now += 60
    calls.take()
    after_90_s = calls.current()
    store.close()

    assert lowered[0] == pytest.approx(4.0)
    assert lowered[-1] < lowered[0]
    # Never below a sixteenth of the limit.
    assert min(lowered) >= 8.0 / 16
    assert at_lowest < after_30_s < 8.0
    assert after_90_s == 8.0


def test_an_unreadable_shared_value_starts_afresh(open_store: OpenStore) -> None:
    store = open_store()
    store.compare_and_set(ratelimit.NAME, None, "not a state")

    turn = rate(2.0, store).take()

    assert turn == pytest.approx(time.time(), abs=1.0)
