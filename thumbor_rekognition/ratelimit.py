"""One Rekognition call rate for the whole cluster, kept in the decision store.

REKOGNITION_MAX_CALLS_PER_SECOND spaces calls evenly: a token bucket that holds one
token. The store keeps one small shared value, the earliest time the next call may
start and how far the rate is lowered; a process takes the next turn with one atomic
compare-and-set (a Lua script on one key in Redis, an IMMEDIATE transaction in SQLite, a
conditional put in DynamoDB) and sleeps until it. A turn that would come after the
caller's deadline is not taken: the caller answers ``pending`` and the picture is judged
on a later request.

Throttling answers from AWS halve the shared rate (once a second at most, down to a
sixteenth); it grows back by a sixtieth of the limit every second. Times are the
nodes' clocks (``time.time()``): nodes whose clocks disagree by some milliseconds may
call that much closer together.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

from thumbor_rekognition import stores

logger = logging.getLogger(__name__)

T = TypeVar("T")

NAME = "rate:rekognition"
SHRINK = 0.5
LOWEST = 1 / 16
# Throttling answers to calls made together are one signal, not several.
SHRINK_GAP_SECONDS = 1.0
# The lowered share of the limit grows back by this much every second.
RECOVERY_PER_SECOND = 1 / 60
# Compare-and-set rounds lost to other processes before giving up.
RACES = 100
THROTTLING_CODES = frozenset({"ThrottlingException", "ProvisionedThroughputExceededException"})


class NoTurn(Exception):
    """No call may start before the caller's deadline."""


@dataclass(frozen=True)
class _State:
    """The shared value: when the next call may start, and the share of the limit in force."""

    next_at: float = 0.0
    share: float = 1.0
    lowered_at: float = 0.0

    def share_at(self, now: float) -> float:
        """The share of the limit in force at a time, grown back since it was lowered."""
        return min(1.0, self.share + max(0.0, now - self.lowered_at) * RECOVERY_PER_SECOND)

    def text(self) -> str:
        return f"{self.next_at!r} {self.share!r} {self.lowered_at!r}"

    @classmethod
    def parse(cls, text: str | None) -> _State:
        if not text:
            return cls()
        try:
            next_at, share, lowered_at = (float(part) for part in text.split())
        except ValueError:
            logger.warning("call rate state %r unreadable: starting afresh", text)
            return cls()
        return cls(next_at, min(1.0, max(LOWEST, share)), lowered_at)


class CallRate:
    """The cluster's turns to call, shared through a decision store."""

    def __init__(self, limit: float, store: Callable[[], stores.Store], name: str = NAME) -> None:
        if limit <= 0:
            raise ValueError(f"a call rate must be above 0, got {limit}")
        self.limit = limit
        self.name = name
        self._store = store
        # The value this process last saw: right most of the time, so a turn usually
        # costs one store round trip.
        self._seen: str | None = None
        self._lock = threading.Lock()

    def _swap(self, change: Callable[[_State, float], _State | None]) -> _State | None:
        """Apply a change to the shared state atomically; the state written (None: none)."""
        store = self._store()
        with self._lock:
            expected = self._seen
        for _ in range(RACES):
            state = _State.parse(expected)
            changed = change(state, time.time())
            if changed is None and expected is not None:
                # Nothing to write is an answer only about the value the store holds now.
                found = store.compare_and_set(self.name, expected, expected)
                if found == expected:
                    return None
            else:
                text = (changed or state).text()
                found = store.compare_and_set(self.name, expected, text)
                if found == expected:
                    with self._lock:
                        self._seen = text
                    return changed
            expected = found
            with self._lock:
                self._seen = found
        raise stores.StoreUnavailable(f"call rate {self.name}: lost {RACES} races in a row")

    def take(self, deadline: float | None = None) -> float:
        """Take the next turn to call; the time.time() at which the call may start.

        deadline is a time.time() too; NoTurn when the turn would come after it.
        """
        return self.take_many(1, deadline)[0]

    def take_many(self, count: int, deadline: float | None = None) -> list[float]:
        """Take the next `count` turns at once (the scenes of an animation, asked about
        together): their time.time()s, spaced by the rate. NoTurn, and none taken, when
        the last would come after deadline (a time.time())."""
        turns: list[float] = []
        late: list[float] = []

        def next_turns(state: _State, now: float) -> _State | None:
            turns.clear()
            late.clear()
            interval = 1.0 / (self.limit * state.share_at(now))
            first = max(state.next_at, now)
            last = first + (count - 1) * interval
            # Refused only when waiting for it would run past the deadline: a turn free
            # now is taken, however late the caller is.
            if deadline is not None and last > max(deadline, now):
                late.append(last)
                return None
            turns.extend(first + index * interval for index in range(count))
            return replace(state, next_at=last + interval)

        self._swap(next_turns)
        if late:
            raise NoTurn(self._too_late(late[0]))
        return turns

    def _too_late(self, turn: float) -> str:
        return (
            f"the next turn to call Rekognition is {turn - time.time():.1f} s away "
            f"(REKOGNITION_MAX_CALLS_PER_SECOND={self.limit:g}, now {self.current():g}/s)"
        )

    def wait(self, budget: Budget | None = None) -> None:
        """Block until this caller's turn: one taken ahead for it if the budget holds one
        (no store call, a short sleep at most), else the next one before the budget's
        deadline; NoTurn past it."""
        turn = budget.prepaid() if budget is not None else None
        if turn is not None and time.time() - turn > 0.5 / self.current():
            # Taken ahead, but the call comes late (its client was being built, say):
            # sent now it would crowd the turns after it, so it takes a fresh one.
            turn = None
        if turn is None:
            deadline = None if budget is None else budget.deadline
            turn = self.take(None if deadline is None else wall_clock(deadline))
        delay = turn - time.time()
        if delay > 0:
            time.sleep(delay)

    def throttled(self) -> None:
        """AWS answered a call with throttling: lower the shared rate for a while."""

        def lower(state: _State, now: float) -> _State | None:
            if now - state.lowered_at < SHRINK_GAP_SECONDS:
                return None
            share = max(LOWEST, state.share_at(now) * SHRINK)
            # The next call waits at least one interval of the lowered rate.
            next_at = max(state.next_at, now + 1.0 / (self.limit * share))
            return _State(next_at=next_at, share=share, lowered_at=now)

        lowered = self._swap(lower)
        if lowered is not None:
            logger.warning(
                "Rekognition throttled: calls lowered to %.3g/s for the cluster",
                self.limit * lowered.share,
            )

    def seen_too_late(self, deadline: float) -> str:
        """Why no turn can come before deadline (time.monotonic()), judged from the shared
        state as this process last saw it (the real next turn is no earlier: turns only
        move forward); '' when one may. Costs no store call."""
        with self._lock:
            turn = _State.parse(self._seen).next_at
        if turn - time.time() <= deadline - time.monotonic():
            return ""
        return self._too_late(turn)

    def current(self) -> float:
        """The calls per second in force now, as this process last saw the shared state."""
        with self._lock:
            state = _State.parse(self._seen)
        return self.limit * state.share_at(time.time())


def wall_clock(at: float) -> float:
    """A time.monotonic() as the time.time() of the same moment."""
    return time.time() + (at - time.monotonic())


# What the calls a thread makes may spend on turns, set by whoever knows the request's budget.


class Budget:
    """How long a judgement's calls may wait for their turns (deadline, in
    time.monotonic(); None: as long as it takes), and the turns taken for them ahead,
    by a caller that waited for the first without holding a thread. Shared by the
    threads that call the scenes of one animation."""

    def __init__(self, deadline: float | None, turns: Iterable[float] = ()) -> None:
        self.deadline = deadline
        self._turns = collections.deque(sorted(turns))
        self._lock = threading.Lock()

    def prepaid(self) -> float | None:
        """The earliest turn taken ahead and not used yet (a time.time()); None: none left."""
        with self._lock:
            return self._turns.popleft() if self._turns else None


_budget: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "moderation_call_budget", default=None
)


@contextmanager
def spending(budget: Budget | None) -> Iterator[None]:
    """Calls made inside wait for their turns as budget allows."""
    token = _budget.set(budget)
    try:
        yield
    finally:
        _budget.reset(token)


def within(budget: Budget | None, func: Callable[..., T], *args: object) -> T:
    """func(*args) with the calls it makes bounded by budget (for executors)."""
    with spending(budget):
        return func(*args)


def current_budget() -> Budget | None:
    """The budget set for the calls of this thread (None: wait as long as it takes)."""
    return _budget.get()
