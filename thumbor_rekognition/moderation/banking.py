"""Known pictures: a new picture's PDQ hashes looked up in the hash banks and in HMA
before the backend is paid, and pictures already approved rejected when a reject bank
grows to list them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any

from thumbor_rekognition import banks, hma, rules, stores
from thumbor_rekognition.decision import Decision, Event, Pdq, Reason, Source, Status
from thumbor_rekognition.moderation.memory import Metrics
from thumbor_rekognition.moderation.resembling import Resembling
from thumbor_rekognition.moderation.verdicts import SYSTEM
from thumbor_rekognition.pdq import BITS, MATCH_DISTANCE
from thumbor_rekognition.preparation import PreparedImage

logger = logging.getLogger("thumbor_rekognition.moderator")

# The category of the reason of a decision made by a hash bank or by HMA.
BANK = "hash_bank"
# Decisions read at once when pictures already approved are searched for a bank's hashes.
_PAGE = 500


def bank_reason(bank: str, entry: str, distance: int, maximum: int) -> Reason:
    """Why a bank decided: the bank's name, its entry, and how alike (1 - distance/256)."""
    return Reason(
        name=bank,
        parent=entry,
        confidence=round((1 - distance / BITS) * 100, 2),
        threshold=round(1 - maximum / BITS, 4),
        category=BANK,
    )


def pdq_of(prepared: PreparedImage) -> tuple[Pdq, ...]:
    """Each judged frame's PDQ hash and quality, as decisions keep them (no hash below
    quality 50: not worth matching)."""
    return tuple(
        Pdq(frame.pdq.hex() if frame.pdq.usable else "", frame.pdq.quality, index)
        for index, frame in enumerate(prepared.frames)
        if frame.pdq is not None
    )


class Banking(Resembling):
    """Hash banks and HMA, asked before the backend."""

    _banks_watch: asyncio.Task[None] | None = None

    @functools.cached_property
    def hash_banks(self) -> banks.HashBanks:
        settings = self.settings
        return banks.HashBanks(
            settings.hash_banks, settings.hash_bank_distance, settings.hash_bank_reload_seconds
        )

    @functools.cached_property
    def hma_client(self) -> hma.Client | None:
        settings = self.settings
        if not settings.hma_url:
            return None
        return hma.Client(settings.hma_url, settings.hma_timeout, settings.hma_headers)

    async def _banked(
        self, key: str, url: str, sha256: str, prepared: PreparedImage, metrics: Any
    ) -> Decision | None:
        """The decision a hash bank or HMA makes about a new picture, None when neither
        knows it."""
        hashes = prepared.pdq
        if not hashes:
            return None
        self.watch_banks()
        recorder = Metrics(metrics)
        decision: Decision | None = None
        if self.hash_banks.enabled:
            match = await self._run(self._executor, self.hash_banks.match, hashes.values())
            status = Status.REJECTED if match and match.action == banks.REJECT else Status.APPROVED
            # An animation is approved by what all of its scenes show: one known frame
            # approves nothing.
            if match is not None and (status is Status.REJECTED or len(prepared.frames) == 1):
                recorder.incr(f"moderation.bank.{status.value}")
                decision = self._by_bank(key, url, sha256, prepared, status).replace(
                    reasons=(
                        bank_reason(
                            match.bank, match.entry.text(), match.distance, self.hash_banks.distance
                        ),
                    )
                )
                if status is Status.REJECTED:
                    return decision
        found = await self._hma_lookup(hashes.values(), metrics)
        if found is not None:
            recorder.incr("moderation.hma.rejected")
            entry = f"HMA content {found.content_id}" if found.content_id else "HMA"
            distance = int(found.distance) if found.distance.isdigit() else 0
            return self._by_bank(key, url, sha256, prepared, Status.REJECTED).replace(
                reasons=(bank_reason(f"hma:{found.bank}", entry, distance, MATCH_DISTANCE),)
            )
        return decision

    def _by_bank(
        self, key: str, url: str, sha256: str, prepared: PreparedImage, status: Status
    ) -> Decision:
        return self._undecided(key, url, sha256, "").replace(
            status=status,
            source=Source.BANK,
            backend="",
            width=prepared.width,
            height=prepared.height,
        )

    async def _hma_lookup(self, hashes: Any, metrics: Any) -> hma.Match | None:
        """The first HMA bank a frame matches; None also when HMA cannot say (then the
        backend judges, and the failure is counted)."""
        if self.hma_client is None:
            return None
        recorder = Metrics(metrics)
        started = time.perf_counter()
        try:
            for hashed in hashes:
                found = await self.hma_client.lookup(hashed.hex())
                if found:
                    return found[0]
        except Exception as error:
            # HMA only ever adds rejections of known pictures: without it, the backend
            # judges the picture as it would with no HMA configured.
            recorder.incr("moderation.hma.unreachable")
            logger.warning("HMA lookup failed, the backend judges the picture: %s", error)
            await self.count("hma.unreachable")
        finally:
            recorder.timing("moderation.hma.latency", (time.perf_counter() - started) * 1000)
        return None

    def watch_banks(self) -> None:
        """Start, once per process, looking at the bank files every reload interval."""
        if not self.hash_banks.enabled or self._banks_watch is not None:
            return
        self._banks_watch = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            try:
                await self.sweep_banks()
            except Exception:
                logger.exception("hash banks not looked at")
            await asyncio.sleep(self.hash_banks.reload_seconds)

    async def sweep_banks(self) -> int:
        """Read the bank files that changed, and reject the approved pictures a reject
        bank's hashes now list (once in the cluster per version of a bank); how many."""
        await self._run(self._executor, self.hash_banks.refresh)
        caught = 0
        for config in self.settings.hash_banks:
            if not config.enabled or config.action != banks.REJECT:
                continue
            digest = self.hash_banks.digest(config.name)
            if not digest:
                continue
            caught += await self._sweep_bank(config.name, digest)
        return caught

    async def _sweep_bank(self, name: str, digest: str) -> int:
        shared = f"hash-bank:{name}"
        lease = f"hash-bank-sweep:{name}"
        try:
            # Asked with the digest itself: changes nothing unless it is already there.
            if await self._store(self.store.compare_and_set, shared, digest, digest) == digest:
                return 0
            if not await self._store(
                self.store.acquire_lease, lease, self._holder, self.settings.lease_seconds
            ):
                return 0
        except stores.StoreUnavailable as error:
            logger.warning("hash bank %s: pictures already judged not searched: %s", name, error)
            return 0
        try:
            caught = await self._reject_listed(name)
            seen = await self._store(self.store.compare_and_set, shared, None, digest)
            if seen not in (None, digest):
                await self._store(self.store.compare_and_set, shared, seen, digest)
            return caught
        finally:
            with contextlib.suppress(stores.StoreUnavailable):
                await self._store(self.store.release_lease, lease, self._holder)

    async def _reject_listed(self, name: str) -> int:
        caught = 0
        cursor: str | None = None
        while True:
            page, cursor = await self._store(self.store.page, Status.APPROVED, _PAGE, cursor)
            for decision in page:
                found = self._listed(decision, name)
                if found is not None:
                    caught += await self._reject_by_bank(decision, name, *found)
            if cursor is None:
                return caught

    async def reject_if_listed(self, decision: Decision) -> bool:
        """Reject an approved decision whose PDQ hash a reject bank lists, as a grown bank
        does (a decision given its hash only now); whether it was."""
        if decision.status is not Status.APPROVED:
            return False
        await self._run(self._executor, self.hash_banks.refresh)
        for config in self.settings.hash_banks:
            if config.enabled and config.action == banks.REJECT:
                found = self._listed(decision, config.name)
                if found is not None:
                    return bool(await self._reject_by_bank(decision, config.name, *found))
        return False

    def _listed(self, decision: Decision, bank: str) -> tuple[str, int] | None:
        for hashed in decision.pdq:
            if not hashed.hash:
                continue
            nearest = self.hash_banks.listed(bank, int(hashed.hash, 16))
            if nearest is not None:
                return nearest[0].text(), nearest[1]
        return None

    async def _reject_by_bank(
        self, approved: Decision, bank: str, entry: str, distance: int
    ) -> int:
        proposal = approved.replace(
            status=Status.REJECTED,
            source=Source.BANK,
            backend="",
            reasons=(bank_reason(bank, entry, distance, self.hash_banks.distance),),
            error="",
            updated_at=time.time(),
        )
        if rules.settle(approved, proposal) == approved:
            # A human's approval stands.
            return 0
        event = Event(
            Status.REJECTED,
            Source.BANK,
            SYSTEM,
            f"listed in hash bank {bank} ({entry}, {distance} bits apart) after it was approved",
        )
        saved = await self._store(self.store.save, proposal, event)
        if saved.status is approved.status:
            return 0
        self.forget(saved.key)
        logger.info("%s: %s", saved.key, event.note)
        await self.announce(approved, saved, rules.noted(saved, proposal, event))
        return 1
