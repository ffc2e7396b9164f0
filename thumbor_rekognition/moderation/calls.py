"""A Moderator's state, and how it calls what blocks: the plugin's threads, the decision
store behind a circuit breaker, shared counters, preparation, and the decisions it
holds in memory."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from thumbor_rekognition import backends, ratelimit, stores
from thumbor_rekognition.config import MB, Settings
from thumbor_rekognition.decision import Decision, Source, Status
from thumbor_rekognition.duplicates import Duplicates
from thumbor_rekognition.moderation.admission import (
    BYTES_PER_PIXEL,
    TRIM_FROM,
    Backlog,
    DecodeBudget,
    give_back_memory,
)
from thumbor_rekognition.moderation.memory import Bounded, DecisionCache, Metrics, T
from thumbor_rekognition.moderation.verdicts import SYSTEM
from thumbor_rekognition.policy import Policy
from thumbor_rekognition.preparation import PreparedImage, prepare
from thumbor_rekognition.quarantine import Quarantine

if TYPE_CHECKING:
    from thumbor_rekognition.outbox import Outbox

logger = logging.getLogger("thumbor_rekognition.moderator")


class _StoreWaits:
    """What one image request has seen of the decision store."""

    failed = False


_request_store_waits: contextvars.ContextVar[_StoreWaits | None] = contextvars.ContextVar(
    "moderation_request_store_waits", default=None
)


class Calls:
    """A Moderator's state, and how it calls what blocks: threads, the store, memory."""

    def __init__(
        self,
        settings: Settings,
        store: stores.Store,
        backend: backends.Backend,
        executor: concurrent.futures.Executor,
        store_executor: concurrent.futures.Executor,
        quarantine: Quarantine | None = None,
        outbox: Outbox | None = None,
        calls_executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.settings = settings
        self.quarantine = quarantine
        self.outbox = outbox
        self.policy: Policy = settings.policy
        self.store = store
        self.backend = backend
        self.duplicates = Duplicates(store, settings.duplicate_similarity, SYSTEM)
        self._executor = executor
        self._store_executor = store_executor
        # Backend calls: apart, so that hashing, preparing and quarantining (what a
        # request of a picture already judged may need) never queue behind slow calls.
        self._calls_executor = calls_executor or executor
        # Backend calls sent to that pool and not answered yet.
        self.calls_out = 0
        self._by_key = DecisionCache(settings.cache_ttl, settings.cache_entries)
        # The decision this process holds in memory for a key: the per-request fast path.
        self.remembered: Callable[[str], Decision | None] = self._by_key.get
        self._by_hash = DecisionCache(settings.cache_ttl, settings.cache_entries)
        # Originals and decoded pixels held for judging new pictures, bounded.
        self.decode_budget = DecodeBudget(settings.decode_budget)
        # Pictures answered pending for want of a turn or of room, judged as turns come.
        self.backlog = Backlog(settings.backlog_size, settings.backlog_bytes)
        self._draining: asyncio.Future[None] | None = None
        self._flights: dict[str, asyncio.Future[Decision]] = {}
        # Content hash -> resolved once its flight's backend call is out: a caller with
        # other work to do (Thumbor's rendering) stops waiting there.
        self._called: dict[str, asyncio.Future[None]] = {}
        # Decision key -> paths recorded for it, dropped when its decision changes.
        self._recorded: dict[str, set[str]] = {}
        # Decisions the backend made that the store could not keep: reused, not paid again.
        self._unsaved: Bounded[Decision] = Bounded(10_000)
        self._holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._store_down_logged = 0.0
        # Whether the last store call failed; see _store.
        self._store_failed = False
        self._store_probing = False
        # Content hash -> why those bytes are not a picture.
        self._refused: Bounded[str] = Bounded(10_000)
        # Content hash -> when its judgement failed, and the failed decision, for the
        # request budget (MODERATION_TIMEOUT_SECONDS) after.
        self._failed: Bounded[tuple[float, Decision]] = Bounded(10_000)
        self.backend_calls = 0
        # When the last backend call failed, and why, until one succeeds (see health.py).
        self.backend_failure: tuple[float, str] | None = None

    def in_memory(self) -> dict[str, int]:
        """What this process holds now: judgements in flight, backend calls out, the
        decode budget held and waited for, the background queue (its bytes: those spooled
        and those kept in memory), its caches, and the failed judgements it remembers to
        answer the requests that waited for them."""
        return {
            "judgements_in_flight": len(self._flights),
            "backend_calls_out": self.calls_out,
            "decode_budget_held_bytes": self.decode_budget.held,
            "decode_budget_waiting": self.decode_budget.waiting,
            "backlog_pictures": len(self.backlog),
            "backlog_bytes": self.backlog.held,
            "backlog_in_memory_bytes": self.backlog.kept,
            "backlog_dropped": self.backlog.dropped,
            "decisions_cached": len(self._by_key),
            "hashes_cached": len(self._by_hash),
            "pictures_with_paths_recorded": len(self._recorded),
            "failures_remembered": len(self._failed),
        }

    def _call_done(self, _: object) -> None:
        self.calls_out -= 1

    async def _run(
        self, executor: concurrent.futures.Executor, func: Callable[..., T], *args: Any
    ) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, func, *args)

    async def run_blocking(self, func: Callable[..., T], *args: Any) -> T:
        """Run blocking work in the plugin's executor."""
        return await self._run(self._executor, func, *args)

    async def _store(self, func: Callable[..., T], *args: Any, trips: bool = True) -> T:
        # Once a call finds the store unreachable, one call at a time probes it while the
        # others fail at once, those already queued behind the hung ones included, and a
        # request that has waited for it once is not the one to probe it again. Without
        # this a request making several calls would wait a store timeout for each, and
        # calls queued behind a pool of hung threads would wait for those first.
        # Tornado runs each request in a task of its own, with a copy of the context: the
        # state made here on a request's first store call lasts for that request only.
        # A call with trips False (an aid the request can do without) fails fast while the
        # store is down but its own failure declares nothing: the calls that keep the
        # decision still try.
        waits = _request_store_waits.get()
        if waits is None:
            waits = _StoreWaits()
            _request_store_waits.set(waits)
        probe = False
        if self._store_failed:
            if self._store_probing or waits.failed or not trips:
                raise stores.StoreUnavailable("decision store unavailable (failing fast)")
            probe = self._store_probing = True
        try:
            return await self._run(
                self._store_executor, self._store_call, probe, trips, func, *args
            )
        except stores.StoreUnavailable:
            if trips:
                waits.failed = True
            raise
        finally:
            if probe:
                self._store_probing = False

    def _store_call(self, probe: bool, trips: bool, func: Callable[..., T], *args: Any) -> T:
        # Runs on a store thread, which takes the next queued call before the event loop
        # hears of a failure: the flag is read and set here for that reason.
        if self._store_failed and not probe:
            raise stores.StoreUnavailable("decision store unavailable (failing fast)")
        try:
            result = func(*args)
        except stores.StoreUnavailable:
            if trips:
                self._store_failed = True
            raise
        self._store_failed = False
        return result

    async def run_store(self, func: Callable[..., T], *args: Any) -> T:
        """Run a decision-store call on the store's own thread."""
        return await self._store(func, *args)

    def _store_down(self, error: Exception, metrics: Any) -> None:
        Metrics(metrics).incr("moderation.store.errors")
        now = time.monotonic()
        if now - self._store_down_logged > 10:
            self._store_down_logged = now
            logger.error("decision store unavailable (logged every 10 s at most): %s", error)

    async def count(self, name: str) -> None:
        """Add one to a counter every process shares (shown by stats); never raises."""
        try:
            await self._store(self.store.incr, name, 1)
        except stores.StoreUnavailable as error:
            logger.warning("counter %s not updated: %s", name, error)

    def prepare(self, buffer: bytes) -> PreparedImage:
        """Original bytes as this backend takes them (blocking: run it in the executor)."""
        settings = self.settings
        prepared = prepare(
            buffer,
            max_side=min(settings.analysis_max_side, self.backend.max_side or 10_000),
            max_pixels=settings.max_pixels,
            max_frames=settings.max_frames,
            oriented=settings.respect_orientation,
        )
        if prepared.width * prepared.height * BYTES_PER_PIXEL >= TRIM_FROM:
            # Its decoded pixels are freed: handed back, not kept by this thread's heap.
            give_back_memory()
        return prepared

    def _budget_full(self) -> str:
        budget = self.decode_budget
        return (
            f"MODERATION_DECODE_BUDGET_MB={budget.limit // MB} held by the pictures being "
            f"judged ({budget.held / MB:.0f} MB, {budget.waiting} waiting)"
        )

    def _call_rate(self) -> ratelimit.CallRate | None:
        call_rate = getattr(self.backend, "call_rate", None)
        return call_rate if isinstance(call_rate, ratelimit.CallRate) else None

    def _no_turn_before(self, deadline: float) -> str:
        """Why no backend call can start before deadline (time.monotonic()), as far as
        this process last saw the shared call rate; '' when one may."""
        call_rate = self._call_rate()
        if not self.policy.model or call_rate is None:
            return ""
        return call_rate.seen_too_late(deadline)

    async def _take_turns(self, count: int, deadline: float | None) -> list[float]:
        """Take `count` turns to call (REKOGNITION_MAX_CALLS_PER_SECOND) before deadline;
        their time.time()s, none without a call rate. RateLimitedError when they would
        come too late, RetryableError when the store cannot say."""
        call_rate = self._call_rate()
        if call_rate is None or count <= 0:
            return []
        wall = None if deadline is None else ratelimit.wall_clock(deadline)
        try:
            return await self._store(call_rate.take_many, count, wall)
        except ratelimit.NoTurn as error:
            raise backends.RateLimitedError(str(error)) from error
        except stores.StoreUnavailable as error:
            # No call without a turn: the picture waits, as it does for any outage.
            raise backends.RetryableError(f"call rate unknown: {error}") from error

    async def _turns(
        self, frames: int, deadline: float | None, taken: list[float]
    ) -> ratelimit.Budget:
        """The turns of a picture's calls, one per scene (those already taken, and the
        rest), with the first waited for here, in the event loop: no thread ever waits
        for a turn. The budget hands them to the calls."""
        turns = taken + await self._take_turns(frames - len(taken), deadline)
        if turns:
            await asyncio.sleep(max(0.0, turns[0] - time.time()))
        return ratelimit.Budget(deadline, turns)

    def _undecided(self, key: str, url: str, sha256: str, reason: str) -> Decision:
        """A pending decision, not stored: retried on the next request."""
        return Decision(
            key=key,
            url=url,
            sha256=sha256,
            status=Status.PENDING,
            source=Source.AUTO,
            backend=self.backend.name,
            error=reason,
        )

    def _remember(self, decision: Decision) -> None:
        if decision.needs_retry:
            self._by_key.discard(decision.key)
            return
        self._by_key.put(decision.key, decision)
        self._by_hash.put(decision.sha256, decision)

    def forget(self, key: str) -> None:
        """Drop a key from this process's memory, e.g. after an override."""
        self._by_key.discard(key)
        self._by_hash.clear()
        # A purge dropped its recorded paths: results written from now on are recorded anew.
        self._recorded.pop(key, None)
