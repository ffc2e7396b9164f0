"""Orchestration: from original bytes to a stored decision, paying the backend at most once.

Order of questions for a picture: is its decision in memory, in the store, or known
under another URL with the same bytes (SHA-256)? Does it resemble a rejected picture
(``duplicates``)? Only then is the backend asked, once per content however many requests
arrive together (single-flight). A backend failure gives a ``pending`` decision that the
next request retries.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from thumbor_rekognition.decision import Decision, Source, Status
from thumbor_rekognition.moderation.judging import QUEUED, Judging, resolve
from thumbor_rekognition.moderation.memory import Metrics, sha256_hex
from thumbor_rekognition.preparation import UnsupportedImage

logger = logging.getLogger("thumbor_rekognition.moderator")

# How far ahead a queued picture may take its turn to call: past it, it waits for a request.
BACKLOG_TURN_WAIT_SECONDS = 600.0


class Moderator(Judging):
    """One per process: decisions for keys, backend calls for new content."""

    async def moderate(
        self,
        key: str,
        url: str,
        buffer: bytes,
        metrics: Any = None,
        deadline: float | None = None,
        called: asyncio.Future[None] | None = None,
        was: str = "",
        patient: bool = False,
        admitted: bool = False,
    ) -> Decision:
        """The decision for these bytes at this key, calling the backend only for new content.

        deadline (time.monotonic()) bounds the wait for a new judgement, by default
        MODERATION_TIMEOUT_SECONDS from now. called, if given, is resolved once the backend
        has the picture (prepared, so the bytes are a picture), whoever's flight called it.
        was, if given, is the hash of these bytes before embedded.cleaned removed what rode
        along: a decision of those bytes is one of these pixels, and stands for them.
        A new picture waits for its turn to call (REKOGNITION_MAX_CALLS_PER_SECOND) and for
        room to decode it (MODERATION_DECODE_BUDGET_MB) MODERATION_TURN_WAIT_SECONDS at
        most, then is answered pending and queued (see drain); patient, until deadline.
        admitted: the caller holds room in the decode budget for these bytes already
        (see room_for_original), until it is done with them.
        Raises preparation.UnsupportedImage when the bytes are not a picture.
        """
        # The bank files are watched from the first request on (a no-op without banks).
        self.watch_banks()
        now = time.monotonic()
        if deadline is None:
            deadline = now + self.settings.request_budget
        # A caller may allow more than the budget (a backfill waiting for its turn to call).
        asked_at = min(now, deadline - self.settings.request_budget)
        turn_by = deadline if patient else min(deadline, now + self.settings.turn_wait)
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
        if current is not None and current.sha256 == sha256 and self.stands(current):
            return current
        flight = self._flights.get(sha256)
        if flight is None:
            self._called[sha256] = asyncio.get_running_loop().create_future()
            # A task of its own: a caller that is cancelled neither cancels the others
            # waiting for this picture nor throws away an answer already paid for.
            flight = asyncio.ensure_future(
                self._decide(key, url, sha256, buffer, metrics, asked_at, turn_by, was, admitted)
            )
            self._flights[sha256] = flight
            flight.add_done_callback(functools.partial(self._landed, sha256))
            if not patient:
                flight.add_done_callback(
                    functools.partial(self._queue_if_busy, sha256, key, url, buffer)
                )
        else:
            Metrics(metrics).incr("moderation.single_flight.joined")
        if called is not None and sha256 in self._called:
            self._called[sha256].add_done_callback(functools.partial(resolve, called))
        try:
            decision = await asyncio.wait_for(
                asyncio.shield(flight), timeout=max(0.0, deadline - time.monotonic())
            )
        except asyncio.TimeoutError:
            # The judgement goes on and is stored for later requests; this one is pending.
            Metrics(metrics).incr("moderation.budget.exceeded")
            return self._undecided(
                key, url, sha256, f"timeout: no decision within {self.settings.request_budget:g} s"
            )
        if decision.key != key:
            decision = await self._adopt(decision, key, url, metrics)
        return decision

    def _queue_if_busy(
        self, sha256: str, key: str, url: str, buffer: bytes, flight: asyncio.Future[Decision]
    ) -> None:
        """Queue a picture answered pending for want of a turn to call or of room to
        decode it, to be judged in the background."""
        if flight.cancelled() or flight.exception() is not None:
            return
        if not flight.result().error.startswith(QUEUED):
            return
        if not self.backlog.offer(sha256, key, url, buffer):
            return
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self.drain())

    async def drain(self) -> None:
        """Judge the queued pictures, oldest first, one at a time: each waits for its turn
        of the shared call rate (without a thread) and stores its decision, which the
        next request of the picture finds. One that another process or a later request
        judged meanwhile costs no call; one whose original cannot be read back as it was
        queued is judged on its next request."""
        while (queued := self.backlog.take()) is not None:
            sha256, item = queued
            try:
                buffer = await self._run(self._executor, self.backlog.read, sha256, item)
            finally:
                self.backlog.release(item)
            if buffer is None:
                continue
            try:
                await self.moderate(
                    item.key,
                    item.url,
                    buffer,
                    deadline=time.monotonic() + BACKLOG_TURN_WAIT_SECONDS,
                    patient=True,
                )
            except UnsupportedImage:
                continue
            except Exception:  # one picture's failure must not stop the rest
                logger.exception("queued picture %s not judged", item.key)
