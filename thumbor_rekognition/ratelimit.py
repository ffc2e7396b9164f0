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

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
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
        turns: list[float] = []
        late: list[float] = []

        def next_turn(state: _State, now: float) -> _State | None:
            turns.clear()
            late.clear()
            turn = max(state.next_at, now)
            if deadline is not None and turn > deadline:
                late.append(turn)
                return None
            turns.append(turn)
            interval = 1.0 / (self.limit * state.share_at(now))
            return replace(state, next_at=turn + interval)

        self._swap(next_turn)
        if late:
            raise NoTurn(self._too_late(late[0]))
        return turns[0]

    def _too_late(self, turn: float) -> str:
        return (
            f"the next turn to call Rekognition is {turn - time.time():.1f} s away "
            f"(REKOGNITION_MAX_CALLS_PER_SECOND={self.limit:g}, now {self.current():g}/s)"
        )

    def wait(self, deadline: float | None = None) -> None:
        """Block until this caller's turn (deadline in time.monotonic()); NoTurn past it."""
        wall_deadline = None if deadline is None else time.time() + (deadline - time.monotonic())
        turn = self.take(wall_deadline)
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


# The deadline of the calls a thread makes, set by whoever knows the request's budget.

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "moderation_call_deadline", default=None
)


@contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Calls made inside wait for their turn until at (time.monotonic()) at most."""
    token = _deadline.set(at)
    try:
        yield
    finally:
        _deadline.reset(token)


def within(at: float | None, func: Callable[..., T], *args: object) -> T:
    """func(*args) with the calls it makes bounded by deadline at (for executors)."""
    with deadline(at):
        return func(*args)


def current_deadline() -> float | None:
    """The deadline set for the calls of this thread (None: wait as long as it takes)."""
    return _deadline.get()
