"""Judging new bytes: single flight per content, the lease that makes one process of
the cluster judge, the backend call, re-applying thresholds to stored labels, and
binding decisions made before a first fetch to the bytes it returns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from thumbor_rekognition import backends, ratelimit, rules, stores
from thumbor_rekognition.decision import UNJUDGED, Decision, Event, Source, Status
from thumbor_rekognition.moderation.admission import decoded_cost
from thumbor_rekognition.moderation.banking import Banking, pdq_of
from thumbor_rekognition.moderation.memory import Metrics
from thumbor_rekognition.moderation.verdicts import (
    SYSTEM,
    event_for,
    unjudged_reason,
    waiting_for_scenes,
)
from thumbor_rekognition.preparation import PreparedImage, UnsupportedImage

logger = logging.getLogger("thumbor_rekognition.moderator")

# Why a picture is pending when no turn to call or no room to decode it came in time:
# queued, and judged in the background (Moderator.drain).
BUSY = "busy"
QUEUED = (f"{backends.RateLimitedError.kind}:", f"{BUSY}:")


def _seen(future: asyncio.Future[Any]) -> None:
    """Mark a future's failure as retrieved, for a result nobody may wait for."""
    if not future.cancelled():
        future.exception()


def resolve(future: asyncio.Future[None], *_: Any) -> None:
    if not future.done():
        future.set_result(None)


class Judging(Banking):
    """Judging new bytes once per content in the cluster, and re-judging stored labels."""

    async def lookup(self, key: str, metrics: Any = None) -> Decision | None:
        """The decision for a key under the current policy, or None if there is none."""
        cached = self._by_key.get(key)
        if cached is not None:
            return cached
        Metrics(metrics).incr("moderation.cache.miss")
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

    def _landed(self, sha256: str, flight: asyncio.Future[Decision]) -> None:
        if self._flights.get(sha256) is flight:
            del self._flights[sha256]
            self._called.pop(sha256, None)
        if not flight.cancelled():
            # Marks a failure as seen even when every caller has gone.
            flight.exception()

    def stands(self, decision: Decision) -> bool:
        """Whether a stored decision answers for its bytes without asking the backend."""
        return not decision.needs_retry and not self.needs_new_analysis(decision)

    def refuses_unfetched(self, decision: Decision) -> bool:
        """Whether a stored decision that is not an approval answers for its picture
        without fetching the original: not a failure to retry, not made by hand before
        any fetch (bound to the bytes of the next one), not left unanalysed by a policy
        that now has a model step."""
        return (
            not decision.needs_retry
            and not rules.unbound(decision)
            and not self.needs_new_analysis(decision)
        )

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
        admitted: bool = False,
    ) -> Decision:
        twin = await self._twin(sha256, metrics)
        if twin is None and was:
            twin = await self._twin(was, metrics)
            twin = twin.replace(sha256=sha256) if twin is not None else None
        if twin is not None:
            Metrics(metrics).incr("moderation.dedupe.hash")
            return await self._adopt(twin, key, url, metrics)
        failed = self._failed.get(sha256)
        if failed is not None and failed[0] >= asked_at:
            # It failed while this request was already waiting (behind Thumbor's lock on
            # the URL, say): answer the same instead of paying for another attempt. A
            # request made after the failure tries again.
            return failed[1].replace(key=key, url=url)
        try:
            decision = await self._decide_new(key, url, sha256, buffer, metrics, deadline, admitted)
        except UnsupportedImage as error:
            self._refused.put(sha256, str(error))
            raise
        if decision.needs_retry:
            now = time.monotonic()
            self._failed.put(sha256, (now, decision))
            # Only requests already waiting when it failed are answered from here, and
            # none waits past its budget: older failures are forgotten, not kept until
            # evicted (one for every picture answered 'pending' in a spike).
            forgotten = now - self.settings.request_budget
            self._failed.drop_oldest_while(lambda item: item[0] < forgotten)
        return decision

    async def _decide_new(
        self,
        key: str,
        url: str,
        sha256: str,
        buffer: bytes,
        metrics: Any,
        deadline: float,
        admitted: bool = False,
    ) -> Decision:
        late = self._no_turn_before(deadline)
        if late:
            # Known at once: the call rate is spent past this request's budget. Answered
            # pending without decoding the picture or holding it while it waits; a
            # later request judges it.
            Metrics(metrics).incr("moderation.backend.errors.rate_limited")
            return self._undecided(key, url, sha256, f"rate_limited: {late}")
        # Counted already when the request that asked holds room for its original.
        cost = 0 if admitted else self.cost_of(buffer)
        if cost and not await self.decode_budget.acquire(cost, deadline):
            Metrics(metrics).incr("moderation.decode_budget.full")
            return self._undecided(key, url, sha256, f"{BUSY}: {self._budget_full()}")
        try:
            # Taken before decoding: a picture that gets no turn costs no preparation.
            # (Lost when the picture turns out to need no call: a copy, say.)
            first_turn = await self._take_turns(1, deadline) if self.policy.model else []
        except backends.BackendError as error:
            self.decode_budget.release(cost)
            Metrics(metrics).incr(f"moderation.backend.errors.{error.kind}")
            return self._undecided(key, url, sha256, f"{error.kind}: {error}")
        lease = f"judge:{sha256}"
        waiting_since = time.time()
        # Prepared while the store is asked who judges it: the call goes out as soon as
        # the answer is this process. Thrown away if another one judged it meanwhile.
        preparing = asyncio.get_running_loop().run_in_executor(self._executor, self.prepare, buffer)
        preparing.add_done_callback(_seen)
        # The decoded pixels are gone once prepared: what is left is small.
        preparing.add_done_callback(lambda _: self.decode_budget.release(cost))
        outcome = await self._take_lease(lease, sha256, metrics)
        if isinstance(outcome, Decision):
            return await self._adopt(outcome, key, url, metrics)
        if outcome is not None:
            return self._undecided(key, url, sha256, outcome)
        try:
            return await self._judge(
                key, url, sha256, buffer, preparing, waiting_since, metrics, deadline, first_turn
            )
        finally:
            with contextlib.suppress(stores.StoreUnavailable):
                await self._store(self.store.release_lease, lease, self._holder)

    def cost_of(self, buffer: bytes) -> int:
        """What judging these bytes holds in memory (see admission.decoded_cost)."""
        return decoded_cost(buffer, self.settings.max_frames, self.settings.analysis_max_side)

    async def room_for_original(self, deadline: float) -> int | None:
        """Room in the decode budget for an original still to be loaded, waited for
        MODERATION_TURN_WAIT_SECONDS at most (deadline, time.monotonic(), if sooner):
        what is held for it, to settle once it is loaded; None when no room came."""
        expected = self.decode_budget.expected
        turn_by = min(deadline, time.monotonic() + self.settings.turn_wait)
        return expected if await self.decode_budget.acquire(expected, turn_by) else None

    def no_room(self, key: str, url: str, metrics: Any) -> Decision:
        """Pending, for a first view that got no room to load its original in time: it
        is judged on a later request."""
        Metrics(metrics).incr("moderation.decode_budget.full")
        return self._undecided(key, url, "", f"{BUSY}: {self._budget_full()}")

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
            Metrics(metrics).incr("moderation.single_flight.waited")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)
            twin = await self._twin(sha256, metrics)
            if twin is not None:
                return twin

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
        first_turn: list[float],
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
        banked = await self._banked(key, url, sha256, prepared, metrics)
        resembled = None
        if banked is None:
            resembled = await self._resembled(prints, metrics)
        copied = None
        if banked is None and resembled is None:
            copied = await self._copied(prints, sha256, metrics)
        if banked is not None:
            decision = banked
        elif resembled is not None:
            decision = self._duplicate(key, url, sha256, prepared, resembled)
        elif copied is not None:
            decision = self._duplicate(key, url, sha256, prepared, copied).replace(
                reasons=(self._copy_reason(copied),)
            )
        elif not self.policy.model:
            decision = self._for_a_human(key, url, sha256, prepared)
        else:
            decision = await self._analyse(
                key, url, sha256, prepared, metrics, deadline, first_turn
            )
        decision = decision.replace(pdq=pdq_of(prepared))
        if prints and not decision.needs_retry:
            await self._keep_fingerprints(sha256, prints)
        if decision.status is not Status.APPROVED:
            await self.keep_original(sha256, buffer, metrics)
        return await self._save(decision, event_for(decision), metrics)

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

    async def _twin(self, sha256: str, metrics: Any) -> Decision | None:
        twin = self._unsaved.get(sha256) or self._by_hash.get(sha256)
        if twin is None:
            try:
                twin = await self._store(self.store.find_by_hash, sha256)
            except stores.StoreUnavailable as error:
                self._store_down(error, metrics)
                return None
        if twin is None or not self.stands(twin):
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
        taken: list[float] | None = None,
    ) -> Decision:
        recorder = Metrics(metrics)
        min_confidence = self.policy.min_confidence
        base = self._undecided(key, url, sha256, "").replace(
            policy=self.policy.fingerprint,
            min_confidence=min_confidence,
            width=prepared.width,
            height=prepared.height,
        )
        started = time.perf_counter()
        try:
            # The turns of REKOGNITION_MAX_CALLS_PER_SECOND, taken until the deadline of the
            # request that asked first and waited for here, in the event loop.
            budget = await self._turns(len(prepared.frames), deadline, taken or [])
            recorder.incr("moderation.backend.calls")
            self.backend_calls += 1
            # Sent first, counted while it is out: nothing stands between a prepared
            # picture and its call.
            call = asyncio.get_running_loop().run_in_executor(
                self._calls_executor,
                ratelimit.within,
                budget,
                self.backend.detect,
                prepared,
                min_confidence,
            )
            self.calls_out += 1
            call.add_done_callback(self._call_done)
            called = self._called.get(sha256)
            if called is not None:
                resolve(called)
            await self.count("backend.calls")
            analysis = await call
        except backends.BackendError as error:
            recorder.incr("moderation.backend.errors")
            recorder.incr(f"moderation.backend.errors.{error.kind}")
            if isinstance(error, backends.RateLimitedError):
                # The call rate is spent, the backend is fine: pending, and queued.
                return base.replace(error=f"{error.kind}: {error}")
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
        status, reasons = waiting_for_scenes(verdict.status, verdict.reasons, unjudged)
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
        status, reasons = waiting_for_scenes(verdict.status, verdict.reasons, unjudged)
        return decision.replace(
            status=status,
            reasons=reasons,
            policy=self.policy.fingerprint,
            updated_at=time.time(),
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
