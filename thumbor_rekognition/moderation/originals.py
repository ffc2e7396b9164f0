"""Originals and what was served from them: the quarantine of pictures that are not
approved, the paths recorded for purges, and the re-read after a cache write."""

from __future__ import annotations

import logging
from typing import Any

from thumbor_rekognition import stores
from thumbor_rekognition.decision import Status
from thumbor_rekognition.moderation.calls import Calls
from thumbor_rekognition.moderation.memory import Metrics
from thumbor_rekognition.quarantine import QuarantineError

logger = logging.getLogger("thumbor_rekognition.moderator")


class Originals(Calls):
    """The quarantine of originals not approved, and the paths served from them."""

    async def keep_original(self, sha256: str, buffer: bytes, metrics: Any = None) -> bool:
        """Copy an original that is not approved into the quarantine; False if that failed."""
        if self.quarantine is None:
            return False
        try:
            await self._run(self._executor, self.quarantine.put, sha256, buffer)
        except QuarantineError as error:
            # The picture is refused all the same; only restoring it on approval is lost.
            logger.error("original %s not quarantined: %s", sha256, error)
            Metrics(metrics).incr("moderation.quarantine.errors")
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
        if len(self._recorded) > self.settings.cache_entries:
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
