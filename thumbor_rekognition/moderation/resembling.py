"""Resemblance: looking a new picture up in the index of fingerprints before the
backend is paid (copies of rejected pictures, Cloudinary's duplicate step), and
keeping its fingerprints after."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from thumbor_rekognition import stores
from thumbor_rekognition.decision import Decision, Reason, Source, Status
from thumbor_rekognition.duplicates import INDEXED_COPY, Resemblance
from thumbor_rekognition.fingerprint import Print
from thumbor_rekognition.moderation.announcements import Announcements
from thumbor_rekognition.moderation.memory import Metrics, T
from thumbor_rekognition.preparation import PreparedImage, UnsupportedImage

logger = logging.getLogger("thumbor_rekognition.moderator")


class Resembling(Announcements):
    """Looking new pictures up in the index of fingerprints, and keeping theirs."""

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
        recorder = Metrics(metrics)
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
        before any request judged it, or judged before the index held PDQ hashes). Never
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
