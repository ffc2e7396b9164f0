"""Saving a decision through the store's compare-and-set (rules.settle decides what
stands) and announcing every change: the index of fingerprints follows it, the
duplicates it lifts or catches are announced in turn; webhooks and CDN purges are
written to the outbox by the store, in the same atomic write as the change."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from thumbor_rekognition import rules, stores
from thumbor_rekognition.decision import Decision, Event, Status
from thumbor_rekognition.moderation.memory import Metrics
from thumbor_rekognition.moderation.originals import Originals
from thumbor_rekognition.moderation.verdicts import event_for

logger = logging.getLogger("thumbor_rekognition.moderator")


class Announcements(Originals):
    """Saving decisions through the store and announcing every change they make."""

    async def _save(self, decision: Decision, event: Event, metrics: Any) -> Decision:
        Metrics(metrics).incr(f"moderation.decision.{decision.status.value}")
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
        """Keep the index of rejected pictures in step with a decision change; never
        raises. Its webhook and CDN purges are in the outbox already: the store wrote
        them with the change (Store.announcer)."""
        unchanged = (
            previous is not None
            and current is not None
            and (previous.status, previous.source, previous.sha256)
            == (current.status, current.source, current.sha256)
        )
        if unchanged:
            return
        if self.outbox is not None:
            self.outbox.wake()
        await self.reindex(previous, current)

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
                self.store.save(decision, event_for(decision))
            except stores.StoreUnavailable:
                return
            self._unsaved.discard(sha256)
