"""The STORAGE: Thumbor's store of originals, handing out and keeping approved ones only.

Thumbor reads STORAGE through more doors than the image route: the upload API
(``/image/<id>``), the watermark and frame filters, and its own fetch, none of which a
handler of ours stands in front of. Wrapping the storage module, as the loader is
wrapped, closes them all: ``get`` judges what it is about to hand out (a hash check once
the picture is known) and answers a miss for anything not approved, so Thumbor asks the
loader, which answers the refusal; ``put`` judges what it is about to keep, never keeps
the placeholder, and removes what it wrote when a rejection was saved meanwhile; a
picture still being judged while Thumbor renders it is written once it is approved.
MODERATION_SOURCE_STORAGE names the storage that keeps the bytes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from thumbor.loaders import LoaderResult
from thumbor.storages import BaseStorage

from thumbor_rekognition import embedded, provenance
from thumbor_rekognition._wrapping import Wrapping
from thumbor_rekognition.decision import Decision, Status
from thumbor_rekognition.gate import (
    NOT_AN_IMAGE,
    ModerationHandler,
    apply_decision,
    note_status,
    refuses,
)
from thumbor_rekognition.overlap import Overlap
from thumbor_rekognition.preparation import UnsupportedImage
from thumbor_rekognition.urls import normalise

logger = logging.getLogger(__name__)


class Storage(Wrapping, BaseStorage):  # type: ignore[misc]
    """MODERATION_SOURCE_STORAGE, behind the decision of each original it holds."""

    WRAPS = "source_storage"

    async def get(self, path: str) -> Any:
        try:
            buffer = await self.source.get(path)
        except FileNotFoundError:
            # Removed between the file storage's exists and its open (a rejection's purge,
            # an eviction by a concurrent request): a miss, as it would be a moment later.
            return None
        if buffer is None:
            return None
        data = bytes(buffer)
        if data == self._runtime.placeholder:
            # Left by an unmoderated Thumbor that pasted a refused picture's placeholder.
            return None
        # Kept before what rides along pictures was removed, perhaps: it is removed now.
        decision, served = await self._judge(path, data)
        if decision is None:
            return None
        if decision.status is Status.APPROVED:
            provenance.of(self.context).note(decision.key, decision.sha256)
            if provenance.is_main(self.context, decision.key):
                note_status(self.context, decision.status)
            return served
        if not refuses(self._runtime, decision):
            # Failing open: shown, but kept out of every cache.
            if provenance.is_main(self.context, decision.key):
                apply_decision(self.context, self._runtime, decision, None)
            elif getattr(self.context, "request", None) is not None:
                self.context.request.prevent_result_storage = True
            return served
        # Found rejected here (a rejection made elsewhere, thresholds changed since): the
        # quarantine keeps it, this storage does not.
        rejected = decision.status is Status.REJECTED
        if rejected and await self._runtime.moderator.keep_original(decision.sha256, data):
            await self._remove_quietly(path)
        return None

    async def put(self, path: str, file_bytes: bytes) -> str:
        await self._once_approved(path, functools.partial(self._put, path, file_bytes))
        return path

    async def _put(self, path: str, file_bytes: bytes) -> str:
        data = bytes(file_bytes)
        if data == self._runtime.placeholder:
            # What the loader answered for a refused picture: never kept under its URL.
            return path
        decision, served = await self._judge(path, data)
        if decision is None or decision.status is not Status.APPROVED:
            if decision is not None and not decision.needs_retry:
                await self._runtime.moderator.keep_original(decision.sha256, served)
            return path
        moderator = self._runtime.moderator
        await self.source.put(path, served)
        await moderator.record_original(decision.key, path)
        if not await moderator.still_approved(decision.key, decision.sha256):
            # A rejection was saved while this was written: its purge may have run first.
            await self._remove_quietly(path)
        return path

    def exists(self, path: str) -> Awaitable[bool]:
        if isinstance(self.context.request_handler, ModerationHandler):
            # The image route asks only whether its path names an upload id; the gate and
            # get judge the picture itself. The source's own answer, on every request.
            return _unless_removed(self.source.exists(path))
        return self._exists_judged(path)

    async def _exists_judged(self, path: str) -> bool:
        if not await _unless_removed(self.source.exists(path)):
            return False
        # The upload API reads what it was told exists: both answers must agree, so an
        # unknown picture is judged now.
        key = normalise(path)
        decision = self._runtime.moderator.remembered(key)
        if decision is None:
            data = await self.source.get(path)
            if data is None:
                return False
            decision, _ = await self._judge(path, bytes(data))
        return decision is not None and (
            decision.status is Status.APPROVED or not refuses(self._runtime, decision)
        )

    async def remove(self, path: str) -> None:
        await self.source.remove(path)

    async def put_crypto(self, path: str) -> Any:
        return await self._once_approved(path, functools.partial(self.source.put_crypto, path))

    async def get_crypto(self, path: str) -> Any:
        return await self.source.get_crypto(path)

    async def put_detector_data(self, path: str, data: Any) -> Any:
        return await self._once_approved(
            path, functools.partial(self.source.put_detector_data, path, data)
        )

    async def get_detector_data(self, path: str) -> Any:
        return await self.source.get_detector_data(path)

    async def _once_approved(self, path: str, write: Callable[[], Awaitable[Any]]) -> Any:
        """Make a write of the picture at path now, or, when it was loaded for a first
        view and is judged while Thumbor renders it, once it is approved (None then)."""
        overlap: Overlap | None = getattr(self.context.request_handler, "overlap", None)
        if overlap is None or normalise(path) != overlap.key:
            return await write()
        # Thumbor stores the original before it renders it: the rendering goes on, the
        # write waits for the approval.
        overlap.after_approval(path, write)
        return None

    async def _judge(self, path: str, data: bytes) -> tuple[Decision | None, bytes]:
        """The decision for these bytes at this path (None when they are no picture), and
        the bytes as they are judged and served: without what rides along (embedded.py)."""
        key = normalise(path)
        handler = getattr(self.context, "request_handler", None)
        moderator = self._runtime.moderator
        try:
            upright = not self._runtime.settings.respect_orientation
            cleaned = await moderator.run_blocking(embedded.cleaned, data, upright)
            decision = await moderator.moderate(
                key,
                unquote(path),
                cleaned.data,
                self.context.metrics,
                getattr(handler, "deadline", None),
                was=cleaned.was,
            )
            return decision, cleaned.data
        except UnsupportedImage as error:
            logger.warning("stored original %s is not an image: %s", path, error)
            if provenance.is_main(self.context, key) and handler is not None:
                # Thumbor asks the loader on a miss; the loader answers with this refusal.
                handler.moderation_refusal = LoaderResult(successful=False, error=NOT_AN_IMAGE)
            return None, data

    async def _remove_quietly(self, path: str) -> None:
        try:
            await self.source.remove(path)
        except NotImplementedError:
            # Storages without remove (mixed_storage): refused on every read all the same.
            pass
        except Exception as error:
            logger.error("stored original %s not removed: %s", path, error)


async def _unless_removed(found: Awaitable[bool]) -> bool:
    """A source storage's exists, False for a file removed while it looked: Thumbor's file
    storage reads the modification time of what it found, and a rejection's purge or a
    concurrent request's eviction can remove it in between."""
    try:
        return await found
    except FileNotFoundError:
        return False
