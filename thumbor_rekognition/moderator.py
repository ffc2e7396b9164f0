"""Orchestration: from original bytes to a stored decision, paying the backend at most once.

Order of questions for a picture: is its decision in memory, in the store, or known
under another URL with the same bytes (SHA-256)? Does it resemble a rejected picture
(``duplicates``)? Only then is the backend asked, once per content however many requests
arrive together (single-flight). A backend failure gives a ``pending`` decision that the
next request retries.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import hashlib
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from thumbor_rekognition import backends, confidence, ratelimit, rules, stores
from thumbor_rekognition.config import Settings
from thumbor_rekognition.decision import UNJUDGED, Decision, Event, Reason, Source, Status
from thumbor_rekognition.duplicates import INDEXED_COPY, Duplicates, Resemblance
from thumbor_rekognition.fingerprint import Print
from thumbor_rekognition.policy import MANUAL, Policy
from thumbor_rekognition.preparation import PreparedImage, UnsupportedImage, prepare
from thumbor_rekognition.quarantine import Quarantine, QuarantineError

if TYPE_CHECKING:
    from thumbor_rekognition.outbox import Outbox

logger = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")
SYSTEM = "thumbor-moderation"


def unjudged_reason(count: int, limit: int) -> Reason:
    """Why an animation waits for a human: count distinct scenes past the frame limit."""
    return Reason(
        name="Unjudged scenes",
        parent="",
        confidence=float(count),
        threshold=float(limit),
        category=UNJUDGED,
    )


class _StoreWaits:
    """What one image request has seen of the decision store."""

    failed = False


_request_store_waits: contextvars.ContextVar[_StoreWaits | None] = contextvars.ContextVar(
    "moderation_request_store_waits", default=None
)


class _Metrics:
    """Thumbor's metrics object, or nothing when a caller has none."""

    def __init__(self, metrics: Any) -> None:
        self._metrics = metrics

    def incr(self, name: str, value: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.incr(name, value)

    def timing(self, name: str, milliseconds: float) -> None:
        if self._metrics is not None:
            self._metrics.timing(name, milliseconds)


class Bounded(Generic[V]):
    """A dict that forgets its least recently written entries past a size.

    A store's change listener may touch it from another thread, so no method assumes
    an entry it saw is still there.
    """

    get: Callable[[str], V | None]

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, V] = OrderedDict()
        # Read on every request: the dict's own method, without a Python frame around it.
        self.get = self._items.get

    def put(self, key: str, value: V) -> None:
        self._items[key] = value
        with contextlib.suppress(KeyError):
            self._items.move_to_end(key)
        while len(self._items) > self.size:
            with contextlib.suppress(KeyError):
                self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        self._items.pop(key, None)

    def snapshot(self) -> list[str]:
        """The keys held now (a copy: other threads may change them meanwhile)."""
        return list(self._items)

    def clear(self) -> None:
        self._items.clear()


class _Cache:
    """Decisions that expire after a TTL, in a bounded LRU.

    Expired entries stay until evicted: when the store is unreachable, the last known
    decision still answers.
    """

    def __init__(self, ttl: float, size: int = 100_000) -> None:
        self.ttl = ttl
        self._entries: Bounded[tuple[float, Decision]] = Bounded(size)

    def get(self, key: str) -> Decision | None:
        item = self._entries.get(key)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def stale(self, key: str) -> Decision | None:
        """The last decision held for a key, expired or not."""
        item = self._entries.get(key)
        return item[1] if item is not None else None

    def put(self, key: str, decision: Decision) -> None:
        if self.ttl > 0:
            self._entries.put(key, (time.monotonic() + self.ttl, decision))

    def discard(self, key: str) -> None:
        self._entries.discard(key)

    def clear(self) -> None:
        self._entries.clear()

    def expire(self) -> None:
        """Make every entry ask the store again, while keeping it as the stale answer."""
        for key in self._entries.snapshot():
            decision = self.stale(key)
            if decision is not None:
                self._entries.put(key, (0.0, decision))


def sha256_hex(data: bytes) -> str:
    """The content hash decisions are indexed by."""
    return hashlib.sha256(data).hexdigest()


class Moderator:
    """One per process: decisions for keys, backend calls for new content."""

    def __init__(
        self,
        settings: Settings,
        store: stores.Store,
        backend: backends.Backend,
        executor: concurrent.futures.Executor,
        store_executor: concurrent.futures.Executor,
        quarantine: Quarantine | None = None,
        outbox: Outbox | None = None,
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
        self._by_key = _Cache(settings.cache_ttl)
        # The decision this process holds in memory for a key: the per-request fast path.
        self.remembered: Callable[[str], Decision | None] = self._by_key.get
        self._by_hash = _Cache(settings.cache_ttl)
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
        # Content hash -> when its judgement failed, and the failed decision.
        self._failed: Bounded[tuple[float, Decision]] = Bounded(10_000)
        self.backend_calls = 0
        # When the last backend call failed, and why, until one succeeds (see health.py).
        self.backend_failure: tuple[float, str] | None = None

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

    def prepare(self, buffer: bytes) -> PreparedImage:
        """Original bytes as this backend takes them (blocking: run it in the executor)."""
        settings = self.settings
        return prepare(
            buffer,
            max_side=min(settings.analysis_max_side, self.backend.max_side or 10_000),
            max_pixels=settings.max_pixels,
            max_frames=settings.max_frames,
            oriented=settings.respect_orientation,
        )

    async def run_store(self, func: Callable[..., T], *args: Any) -> T:
        """Run a decision-store call on the store's own thread."""
        return await self._store(func, *args)

    async def lookup(self, key: str, metrics: Any = None) -> Decision | None:
        """The decision for a key under the current policy, or None if there is none."""
        cached = self._by_key.get(key)
        if cached is not None:
            return cached
        _Metrics(metrics).incr("moderation.cache.miss")
        try:
            decision = await self._store(self.store.get, key)
        except stores.StoreUnavailable as error:
            self._store_down(error, metrics)
            # Pictures judged before the outage keep their decision.
            return self._by_key.stale(key)
        if decision is None:
            return None
        decision = await self._reapply(decision)
        self._remember(decision)
        return decision

    async def moderate(
        self,
        key: str,
        url: str,
        buffer: bytes,
        metrics: Any = None,
        deadline: float | None = None,
        called: asyncio.Future[None] | None = None,
        was: str = "",
    ) -> Decision:
        """The decision for these bytes at this key, calling the backend only for new content.

        deadline (time.monotonic()) bounds the wait for a new judgement, by default
        MODERATION_TIMEOUT_SECONDS from now. called, if given, is resolved once the backend
        has the picture (prepared, so the bytes are a picture), whoever's flight called it.
        was, if given, is the hash of these bytes before embedded.cleaned removed what rode
        along: a decision of those bytes is one of these pixels, and stands for them.
        Raises preparation.UnsupportedImage when the bytes are not a picture.
        """
        if deadline is None:
            deadline = time.monotonic() + self.settings.request_budget
        # A caller may allow more than the budget (a backfill waiting for its turn to call).
        asked_at = min(time.monotonic(), deadline - self.settings.request_budget)
        sha256 = await self._run(self._executor, sha256_hex, buffer)
        refusal = self._refused.get(sha256)
        if refusal is not None:
            # Preparing a hostile file again would cost the same seconds again.
            raise UnsupportedImage(refusal)
        current = await self.lookup(key, metrics)
        if (
            current is not None
            and current.source is Source.MANUAL
            and not current.sha256
            and current.status is not Status.APPROVED
        ):
            # Rejected by hand before any request fetched it: the rejection takes these
            # bytes, wherever else they appear. A blind approval is bound by a judgement
            # instead (rules.settle), so that it cannot approve bytes rejected elsewhere.
            return await self.bind_rejection(current, sha256, buffer, metrics)
        if was and current is not None and current.sha256 == was:
            current = await self._rebind(current, sha256, metrics)
        if current is not None and current.sha256 == sha256 and self._stands(current):
            return current
        flight = self._flights.get(sha256)
        if flight is None:
            self._called[sha256] = asyncio.get_running_loop().create_future()
            # A task of its own: a caller that is cancelled neither cancels the others
            # waiting for this picture nor throws away an answer already paid for.
            flight = asyncio.ensure_future(
                self._decide(key, url, sha256, buffer, metrics, asked_at, deadline, was)
            )
            self._flights[sha256] = flight
            flight.add_done_callback(functools.partial(self._landed, sha256))
        else:
            _Metrics(metrics).incr("moderation.single_flight.joined")
        if called is not None and sha256 in self._called:
            self._called[sha256].add_done_callback(functools.partial(_resolve, called))
        try:
            decision = await asyncio.wait_for(
                asyncio.shield(flight), timeout=max(0.0, deadline - time.monotonic())
            )
        except asyncio.TimeoutError:
            # The judgement goes on and is stored for later requests; this one is pending.
            _Metrics(metrics).incr("moderation.budget.exceeded")
            return self._undecided(
                key, url, sha256, f"timeout: no decision within {self.settings.request_budget:g} s"
            )
        if decision.key != key:
            decision = await self._adopt(decision, key, url, metrics)
        return decision

    async def bind_rejection(
        self, blind: Decision, sha256: str, buffer: bytes, metrics: Any = None
    ) -> Decision:
        """Bind a blind manual rejection to the bytes of its URL's first fetch; keep them in
        the quarantine and the index, and reject them under every URL decided automatically."""
        key = blind.key
        proposal = self._undecided(key, blind.url, sha256, "first fetch")
        bound = await self._save(proposal, Event(None, None, SYSTEM, "first fetch"), metrics)
        if bound.needs_retry:
            # Not bound (the store failed): still refused, and bound on a later fetch.
            return blind.replace(sha256=sha256)
        if bound.status is not Status.REJECTED or bound.sha256 != sha256:
            return bound
        await self.keep_original(sha256, buffer, metrics)
        await self.fingerprint(sha256, buffer)
        try:
            others = await self._store(self.store.find_all_by_hash, sha256)
        except stores.StoreUnavailable as error:
            self._store_down(error, metrics)
            return bound
        for other in others:
            if other.key == key or other.source is Source.MANUAL:
                continue
            # Copied as a human's decision: the model's later judgements do not undo it.
            copy = bound.replace(key=other.key, url=other.url, updated_at=time.time())
            note = f"same picture (sha256 {sha256[:12]}) as {key}, rejected by hand"
            await self._save(copy, Event(Status.REJECTED, Source.MANUAL, SYSTEM, note), metrics)
        return bound

    async def _rebind(self, judged: Decision, sha256: str, metrics: Any) -> Decision | None:
        """A decision of bytes that embedded.cleaned has since changed, now naming the
        cleaned bytes: the same pixels, so the same decision, whoever made it."""
        try:
            # As stored now, not as cached: a human's later word is what is carried over.
            stored = await self._store(self.store.get, judged.key)
        except stores.StoreUnavailable as error:
            self._store_down(error, metrics)
            return judged.replace(sha256=sha256)
        if stored is None or stored.sha256 != judged.sha256:
            self.forget(judged.key)
            return await self.lookup(judged.key, metrics)
        note = f"same pixels as sha256 {stored.sha256[:12]}, without what rode along them"
        event = Event(stored.status, stored.source, SYSTEM, note)
        saved = await self._save(stored.replace(sha256=sha256), event, metrics)
        return await self._reapply(saved)

    def _landed(self, sha256: str, flight: asyncio.Future[Decision]) -> None:
        if self._flights.get(sha256) is flight:
            del self._flights[sha256]
            self._called.pop(sha256, None)
        if not flight.cancelled():
            # Marks a failure as seen even when every caller has gone.
            flight.exception()

    def _stands(self, decision: Decision) -> bool:
        """Whether a stored decision answers for its bytes without asking the backend."""
        return not decision.needs_retry and not self.needs_new_analysis(decision)

    def needs_new_analysis(self, decision: Decision) -> bool:
        """Whether the current thresholds cannot be applied to the stored labels."""
        if decision.source is not Source.AUTO or decision.policy == self.policy.fingerprint:
            return False
        if not decision.backend:
            # Left to a human by a chain without a model step: nothing was analysed, so a
            # policy with one must call the backend, never approve from no labels.
            return self.policy.model
        # Labels below the confidence a picture was analysed at were never returned, so a
        # policy that looks lower than that cannot be judged from what is stored.
        return self.policy.min_confidence < decision.min_confidence

    async def _decide(
        self,
        key: str,
        url: str,
        sha256: str,
        buffer: bytes,
        metrics: Any,
        asked_at: float,
        deadline: float,
        was: str = "",
    ) -> Decision:
        twin = await self._twin(sha256, metrics)
        if twin is None and was:
            twin = await self._twin(was, metrics)
            twin = twin.replace(sha256=sha256) if twin is not None else None
        if twin is not None:
            _Metrics(metrics).incr("moderation.dedupe.hash")
            return await self._adopt(twin, key, url, metrics)
        failed = self._failed.get(sha256)
        if failed is not None and failed[0] >= asked_at:
            # It failed while this request was already waiting (behind Thumbor's lock on
            # the URL, say): answer the same instead of paying for another attempt. A
            # request made after the failure tries again.
            return failed[1].replace(key=key, url=url)
        try:
            decision = await self._decide_new(key, url, sha256, buffer, metrics, deadline)
        except UnsupportedImage as error:
            self._refused.put(sha256, str(error))
            raise
        if decision.needs_retry:
            self._failed.put(sha256, (time.monotonic(), decision))
        return decision

    async def _decide_new(
        self, key: str, url: str, sha256: str, buffer: bytes, metrics: Any, deadline: float
    ) -> Decision:
        lease = f"judge:{sha256}"
        waiting_since = time.time()
        # Prepared while the store is asked who judges it: the call goes out as soon as
        # the answer is this process. Thrown away if another one judged it meanwhile.
        preparing = asyncio.get_running_loop().run_in_executor(self._executor, self.prepare, buffer)
        preparing.add_done_callback(_seen)
        outcome = await self._take_lease(lease, sha256, metrics)
        if isinstance(outcome, Decision):
            return await self._adopt(outcome, key, url, metrics)
        if outcome is not None:
            return self._undecided(key, url, sha256, outcome)
        try:
            return await self._judge(
                key, url, sha256, buffer, preparing, waiting_since, metrics, deadline
            )
        finally:
            with contextlib.suppress(stores.StoreUnavailable):
                await self._store(self.store.release_lease, lease, self._holder)

    async def _take_lease(self, lease: str, sha256: str, metrics: Any) -> Decision | str | None:
        """Wait for the right to judge these bytes: None once held, a decision another
        process made meanwhile, or the reason the store cannot coordinate."""
        delay = 0.02
        while True:
            try:
                taken = await self._store(
                    self.store.acquire_lease, lease, self._holder, self.settings.lease_seconds
                )
            except stores.StoreUnavailable as error:
                self._store_down(error, metrics)
                return f"store: {error}"
            if taken:
                return None
            _Metrics(metrics).incr("moderation.single_flight.waited")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)
            twin = await self._twin(sha256, metrics)
            if twin is not None:
                return twin

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

    async def _judge(
        self,
        key: str,
        url: str,
        sha256: str,
        buffer: bytes,
        preparing: asyncio.Future[PreparedImage],
        waiting_since: float,
        metrics: Any,
        deadline: float,
    ) -> Decision:
        # Another process may have finished between the content lookup and the lease.
        twin = await self._twin(sha256, metrics)
        if twin is not None:
            return await self._adopt(twin, key, url, metrics)
        with contextlib.suppress(stores.StoreUnavailable):
            latest = await self._store(self.store.get, key)
            failed_meanwhile = (
                latest is not None
                and latest.sha256 == sha256
                and latest.needs_retry
                and latest.updated_at >= waiting_since
            )
            if failed_meanwhile:
                # The process this one waited for just failed: retried on a later request.
                return latest  # type: ignore[return-value]
        prepared = await preparing
        prints = prepared.fingerprints
        resembled = await self._resembled(prints, metrics)
        copied = None if resembled is not None else await self._copied(prints, sha256, metrics)
        if resembled is not None:
            decision = self._duplicate(key, url, sha256, prepared, resembled)
        elif copied is not None:
            decision = self._duplicate(key, url, sha256, prepared, copied).replace(
                reasons=(self._copy_reason(copied),)
            )
        elif not self.policy.model:
            decision = self._for_a_human(key, url, sha256, prepared)
        else:
            decision = await self._analyse(key, url, sha256, prepared, metrics, deadline)
        if prints and not decision.needs_retry:
            await self._keep_fingerprints(sha256, prints)
        if decision.status is not Status.APPROVED:
            await self.keep_original(sha256, buffer, metrics)
        return await self._save(decision, _event_for(decision), metrics)

    async def _resembled(self, prints: dict[int, Print], metrics: Any) -> Resemblance | None:
        """The rejected picture these fingerprints resemble, if any; None also when the
        store cannot say (the backend judges then, as it would without the index)."""
        if not prints or not self.duplicates.enabled:
            return None
        return await self._look_up(metrics, self.duplicates.find, prints)

    async def _copied(
        self, prints: dict[int, Print], sha256: str, metrics: Any
    ) -> Resemblance | None:
        """The judged picture these fingerprints copy, under Cloudinary's duplicate step."""
        minimum = self.settings.indexed_copy_similarity
        if not prints or minimum <= 0:
            return None
        return await self._look_up(metrics, self.duplicates.find_indexed, prints, minimum, sha256)

    def _copy_reason(self, copied: Resemblance) -> Reason:
        return Reason(
            name="near-copy of a picture already judged (duplicate step)",
            parent="",
            confidence=round(copied.similarity * 100, 2),
            threshold=self.settings.indexed_copy_similarity,
            category=INDEXED_COPY,
        )

    async def _look_up(self, metrics: Any, find: Callable[..., T], *args: Any) -> T | None:
        recorder = _Metrics(metrics)
        started = time.perf_counter()
        try:
            # The index only ever spares a backend call: a lookup that fails (a throttled
            # or oversized band item, say) must not stop this request keeping its decision.
            resembled = await self._store(find, *args, trips=False)
        except stores.StoreUnavailable as error:
            self._store_down(error, metrics)
            return None
        except Exception:
            # The index can only reject: whatever went wrong in it, the backend judges.
            logger.exception("near-duplicate lookup failed; the backend judges the picture")
            return None
        finally:
            recorder.timing("moderation.duplicate.latency", (time.perf_counter() - started) * 1000)
        if resembled is not None:
            recorder.incr("moderation.duplicate.matched")
        return resembled

    def _duplicate(
        self, key: str, url: str, sha256: str, prepared: PreparedImage, resembled: Resemblance
    ) -> Decision:
        """A rejection for resembling a rejected picture, made without a backend call."""
        return self._undecided(key, url, sha256, "").replace(
            status=Status.REJECTED,
            source=Source.DUPLICATE,
            backend="",
            width=prepared.width,
            height=prepared.height,
            duplicate_of=resembled.key,
            similarity=round(resembled.similarity, 4),
        )

    def _for_a_human(self, key: str, url: str, sha256: str, prepared: PreparedImage) -> Decision:
        """Pending for a human, without a backend call: the chain has no model step."""
        verdict = self.policy.judge(())
        return self._undecided(key, url, sha256, "").replace(
            status=verdict.status,
            reasons=verdict.reasons,
            backend="",
            policy=self.policy.fingerprint,
            width=prepared.width,
            height=prepared.height,
        )

    async def _keep_fingerprints(self, sha256: str, prints: dict[int, Print]) -> None:
        try:
            await self._store(self.duplicates.keep, sha256, prints)
        except stores.StoreUnavailable as error:
            # Only matching copies of this picture, once rejected, is lost.
            logger.error("fingerprints of %s not kept: %s", sha256, error)
        except Exception:
            logger.exception("fingerprints of %s not kept", sha256)

    async def fingerprint(self, sha256: str, buffer: bytes) -> None:
        """Keep the fingerprints of an original that none were kept for (one decided by hand
        before any request judged it, or judged before fingerprints were kept). Never
        raises: the decision it comes with stands without them."""
        try:
            if await self._store(self.store.fingerprints, sha256):
                return
            prepared: PreparedImage = await self._run(self._executor, self.prepare, buffer)
        except (stores.StoreUnavailable, UnsupportedImage) as error:
            logger.error("fingerprints of %s not kept: %s", sha256, error)
            return
        except Exception:
            logger.exception("fingerprints of %s not kept", sha256)
            return
        if prepared.fingerprints:
            await self._keep_fingerprints(sha256, prepared.fingerprints)

    async def keep_original(self, sha256: str, buffer: bytes, metrics: Any = None) -> bool:
        """Copy an original that is not approved into the quarantine; False if that failed."""
        if self.quarantine is None:
            return False
        try:
            await self._run(self._executor, self.quarantine.put, sha256, buffer)
        except QuarantineError as error:
            # The picture is refused all the same; only restoring it on approval is lost.
            logger.error("original %s not quarantined: %s", sha256, error)
            _Metrics(metrics).incr("moderation.quarantine.errors")
            return False
        return True

    async def kept_original(self, sha256: str) -> bytes | None:
        """The quarantined original with this hash, or None (also when unreadable)."""
        if not sha256 or self.quarantine is None:
            return None
        try:
            return await self._run(self._executor, self.quarantine.get, sha256)
        except QuarantineError as error:
            logger.error("quarantined original %s unreadable: %s", sha256, error)
            return None

    async def record_result(self, key: str, path: str) -> None:
        """Remember that a result-storage entry at this request path derives from key."""
        if path in self._recorded.get(key, ()):
            return
        try:
            await self._store(self.store.add_results, key, [path])
        except stores.StoreUnavailable as error:
            logger.error("result %s of %s not recorded, purge will miss it: %s", path, key, error)
            return
        if len(self._recorded) > 100_000:
            self._recorded.clear()
        self._recorded.setdefault(key, set()).add(path)

    async def record_original(self, key: str, path: str) -> None:
        """Remember a STORAGE path holding key's original (one per spelling of its URL)."""
        await self.record_result(key, stores.STORAGE_PATH_MARK + path)

    async def still_approved(self, key: str, sha256: str) -> bool:
        """Whether the store, read now, still approves these bytes at this key.

        Asked after writing a cache entry: a rejection saved while it was written wins.
        """
        try:
            current = await self._store(self.store.get, key)
        except stores.StoreUnavailable:
            return False
        return (
            current is not None and current.status is Status.APPROVED and current.sha256 == sha256
        )

    async def approved_hash(self, sha256: str) -> bool:
        """Whether the picture with these bytes is approved (memory first, then the store)."""
        known = self._by_hash.get(sha256)
        if known is None:
            try:
                known = await self._store(self.store.find_by_hash, sha256)
            except stores.StoreUnavailable:
                known = self._by_hash.stale(sha256)
            if known is None:
                return False
            known = await self._reapply(known)
            self._by_hash.put(sha256, known)
        return known.status is Status.APPROVED

    async def _twin(self, sha256: str, metrics: Any) -> Decision | None:
        twin = self._unsaved.get(sha256) or self._by_hash.get(sha256)
        if twin is None:
            try:
                twin = await self._store(self.store.find_by_hash, sha256)
            except stores.StoreUnavailable as error:
                self._store_down(error, metrics)
                return None
        if twin is None or not self._stands(twin):
            return None
        return await self._reapply(twin)

    async def _analyse(
        self,
        key: str,
        url: str,
        sha256: str,
        prepared: PreparedImage,
        metrics: Any,
        deadline: float | None = None,
    ) -> Decision:
        recorder = _Metrics(metrics)
        min_confidence = self.policy.min_confidence
        started = time.perf_counter()
        recorder.incr("moderation.backend.calls")
        self.backend_calls += 1
        # Sent first, counted while it is out: nothing stands between a prepared picture
        # and its call.
        # The backend's calls wait for their turn (REKOGNITION_MAX_CALLS_PER_SECOND) until
        # the deadline of the request that asked first, not longer.
        call = asyncio.get_running_loop().run_in_executor(
            self._executor,
            ratelimit.within,
            deadline,
            self.backend.detect,
            prepared,
            min_confidence,
        )
        called = self._called.get(sha256)
        if called is not None:
            _resolve(called)
        await self.count("backend.calls")
        base = self._undecided(key, url, sha256, "").replace(
            policy=self.policy.fingerprint,
            min_confidence=min_confidence,
            width=prepared.width,
            height=prepared.height,
        )
        try:
            analysis = await call
        except backends.BackendError as error:
            recorder.incr("moderation.backend.errors")
            recorder.incr(f"moderation.backend.errors.{error.kind}")
            log = logger.error if error.kind in ("configuration", "bad_image") else logger.warning
            log("%s backend failed for %s (%s): %s", self.backend.name, key, error.kind, error)
            if error.kind != "bad_image":
                self.backend_failure = (time.time(), f"{error.kind}: {error}")
            return base.replace(error=f"{error.kind}: {error}")
        finally:
            recorder.timing("moderation.backend.latency", (time.perf_counter() - started) * 1000)
        self.backend_failure = None
        verdict = self.policy.judge(analysis.labels, analysis.content_types)
        unjudged = (
            (unjudged_reason(prepared.unjudged_scenes, self.settings.max_frames),)
            if prepared.unjudged_scenes
            else ()
        )
        status, reasons = _waiting_for_scenes(verdict.status, verdict.reasons, unjudged)
        return base.replace(
            status=status,
            labels=analysis.labels,
            content_types=analysis.content_types,
            reasons=reasons,
            model_version=analysis.model_version,
            project_version=analysis.project_version,
            min_confidence=analysis.min_confidence,
        )

    async def _adopt(self, twin: Decision, key: str, url: str, metrics: Any) -> Decision:
        if twin.needs_retry:
            return twin.replace(key=key, url=url)
        now = time.time()
        decision = twin.replace(key=key, url=url, created_at=now, updated_at=now)
        event = Event(
            status=decision.status,
            source=decision.source,
            actor=SYSTEM,
            note=f"same picture (sha256 {twin.sha256[:12]}) as {twin.key}",
        )
        return await self._save(decision, event, metrics)

    async def _save(self, decision: Decision, event: Event, metrics: Any) -> Decision:
        _Metrics(metrics).incr(f"moderation.decision.{decision.status.value}")
        previous = await self._previous(decision.key)
        try:
            saved = await self._store(self.store.save, decision, event)
        except stores.StoreUnavailable as error:
            self._store_down(error, metrics)
            if not decision.needs_retry:
                self._unsaved.put(decision.sha256, decision)
            if decision.status is Status.REJECTED:
                # Refused all the same, even failing open: a refusal needs no keeping.
                return decision
            # Only an approval that is kept is answered as one: it must survive a restart.
            return decision.replace(status=Status.PENDING, error=f"store: {error}")
        self._unsaved.discard(decision.sha256)
        self._remember(saved)
        await self.announce(previous, saved, rules.noted(saved, decision, event))
        return saved

    async def _previous(self, key: str) -> Decision | None:
        if self.outbox is None or not self.outbox.enabled:
            return None
        with contextlib.suppress(stores.StoreUnavailable):
            return await self._store(self.store.get, key)
        return self._by_key.stale(key)

    async def announce(
        self, previous: Decision | None, current: Decision | None, event: Event
    ) -> None:
        """Keep the index of rejected pictures in step with a decision change, and queue
        the webhook and CDN purges the change calls for; never raises."""
        unchanged = (
            previous is not None
            and current is not None
            and (previous.status, previous.source, previous.sha256)
            == (current.status, current.source, current.sha256)
        )
        if unchanged:
            return
        await self.reindex(previous, current)
        if self.outbox is None or not self.outbox.enabled:
            return
        try:
            await self._store(self.outbox.decision_changed, previous, current, event)
        except stores.StoreUnavailable as error:
            logger.error("notification of %s not queued: %s", (current or previous), error)

    async def reindex(self, previous: Decision | None, current: Decision | None) -> None:
        """Follow a decision change in the index of fingerprints; when its picture is no
        longer rejected, forget the decisions of its duplicates; when it is rejected by
        itself, reject its approved near-copies. Never raises."""
        changed = current or previous
        try:
            lifted = await self._store(self.duplicates.follow, previous, current)
        except stores.StoreUnavailable as error:
            logger.error("index of rejected pictures not updated for %s: %s", changed, error)
            return
        except Exception:
            # The decision is saved: the index must never undo or delay it.
            logger.exception("index of rejected pictures not updated for %s", changed)
            return
        for item in lifted:
            self.forget(item.decision.key)
            logger.info("%s: %s", item.decision.key, item.event.note)
            await self.announce(item.decision, None, item.event)
        if current is not None and rules.rejects_by_itself(current):
            await self._catch(current)

    async def _catch(self, rejected: Decision) -> None:
        """Reject the approved near-copies of a picture just rejected, and announce each
        as any rejection of a served picture is (webhook, CDN purges). Never raises."""
        try:
            caught = await self._store(self.duplicates.catch, rejected)
        except stores.StoreUnavailable as error:
            logger.error("near-copies of %s not looked for: %s", rejected.key, error)
            return
        except Exception:
            logger.exception("near-copies of %s not looked for", rejected.key)
            return
        for item in caught:
            # The gate refuses it from now on, before any cache, and moves a stored
            # original to the quarantine on its next request.
            self.forget(item.decision.key)
            logger.info("%s: %s", item.decision.key, item.event.note)
            await self.announce(item.previous, item.decision, item.event)

    def _store_down(self, error: Exception, metrics: Any) -> None:
        _Metrics(metrics).incr("moderation.store.errors")
        now = time.monotonic()
        if now - self._store_down_logged > 10:
            self._store_down_logged = now
            logger.error("decision store unavailable (logged every 10 s at most): %s", error)

    async def _reapply(self, decision: Decision) -> Decision:
        """Judge stored labels again when the thresholds changed since the decision."""
        if (
            decision.source is not Source.AUTO
            or decision.needs_retry
            or decision.policy == self.policy.fingerprint
            or self.needs_new_analysis(decision)
        ):
            return decision
        updated = self.rejudged(decision)
        event = Event(
            updated.status, Source.AUTO, SYSTEM, "thresholds changed; labels judged again"
        )
        try:
            saved = await self._store(self.store.save, updated, event)
        except stores.StoreUnavailable as error:
            logger.error("re-judged decision for %s not stored: %s", decision.key, error)
            return updated
        await self.announce(decision, saved, event)
        return saved

    def rejudged(self, decision: Decision) -> Decision:
        """A decision judged again from its stored labels under the current thresholds."""
        verdict = self.policy.judge(decision.labels, decision.content_types)
        unjudged = tuple(reason for reason in decision.reasons if reason.category == UNJUDGED)
        status, reasons = _waiting_for_scenes(verdict.status, verdict.reasons, unjudged)
        return decision.replace(
            status=status,
            reasons=reasons,
            policy=self.policy.fingerprint,
            updated_at=time.time(),
        )

    async def count(self, name: str) -> None:
        """Add one to a counter every process shares (shown by stats); never raises."""
        try:
            await self._store(self.store.incr, name, 1)
        except stores.StoreUnavailable as error:
            logger.warning("counter %s not updated: %s", name, error)

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

    def changed(self, key: str | None) -> None:
        """A store's notification that a decision changed elsewhere (None: maybe any).

        None also means the store is reachable again: analyses it could not keep are
        stored now, from the notifying thread, so other nodes stop waiting for them.
        """
        if key is not None:
            self.forget(key)
            return
        # Read again, but still the answer if the store goes away again right now.
        self._by_key.expire()
        self._by_hash.clear()
        self._recorded.clear()
        self._store_failed = False
        for sha256 in self._unsaved.snapshot():
            decision = self._unsaved.get(sha256)
            if decision is None:
                continue
            try:
                self.store.save(decision, _event_for(decision))
            except stores.StoreUnavailable:
                return
            self._unsaved.discard(sha256)


def _seen(future: asyncio.Future[Any]) -> None:
    """Mark a future's failure as retrieved, for a result nobody may wait for."""
    if not future.cancelled():
        future.exception()


def _resolve(future: asyncio.Future[None], *_: Any) -> None:
    if not future.done():
        future.set_result(None)


def _waiting_for_scenes(
    status: Status, reasons: tuple[Reason, ...], unjudged: tuple[Reason, ...]
) -> tuple[Status, tuple[Reason, ...]]:
    """The verdict, or pending for a human when the model passed a picture (approved, or
    pending only for 'aws_rek|manual') while scenes of it went unjudged."""
    manual = tuple(reason for reason in reasons if reason.category == MANUAL)
    passed = status is Status.APPROVED or (status is Status.PENDING and manual == reasons)
    if unjudged and passed:
        return Status.PENDING, (*unjudged, *manual)
    return status, reasons


def _event_for(decision: Decision) -> Event:
    if decision.status is Status.PENDING and decision.error:
        note = f"no decision: {decision.error}"
    elif decision.source is Source.DUPLICATE:
        note = (
            f"resembles {decision.duplicate_of} (similarity {decision.similarity:.3f}), "
            "rejected without a backend call"
        )
    elif decision.reasons and decision.reasons[0].category == UNJUDGED:
        unjudged = decision.reasons[0]
        note = (
            f"{unjudged.confidence:g} distinct scenes not judged "
            f"(MODERATION_MAX_FRAMES={unjudged.threshold:g}): waiting for a human"
        )
    elif decision.reasons:
        reasons = ", ".join(
            f"{reason.name} {confidence.shown(reason.confidence)} > {reason.threshold:g}"
            if decision.status is Status.REJECTED
            else f"{reason.name} {confidence.shown(reason.confidence)} near {reason.threshold:g}"
            for reason in decision.reasons
        )
        note = f"{_model(decision)}: {reasons}"
    else:
        note = f"{_model(decision)}: nothing above thresholds"
    return Event(decision.status, decision.source, SYSTEM, note)


def _model(decision: Decision) -> str:
    """The backend and model version that judged, with the adapter the answer named."""
    adapter = f" (adapter {decision.project_version})" if decision.project_version else ""
    return f"{decision.backend} {decision.model_version}{adapter}"
