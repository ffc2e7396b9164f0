"""The RESULT_STORAGE: rendered results, each tied to the pictures it was made from.

A result is trusted by content, not by URL: it is written with the content hash of
every original it was made from (the main picture first, then any pasted in by the
watermark or frame filters), and served only while each of those hashes is approved
and the main one is still what its URL shows. A rejection therefore refuses every
result that contains the picture, whichever URL made it, and one whose URL now shows
other content is a miss. Each result path is also recorded under every picture's
decision key, so that purging any of them deletes it. MODERATION_SOURCE_RESULT_STORAGE
names the result storage that keeps the bytes.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from typing import Any

from thumbor.result_storages import BaseStorage, ResultStorageResult

from thumbor_rekognition import aws_caches, cdn, provenance
from thumbor_rekognition._wrapping import Wrapping
from thumbor_rekognition.caches import remove_result
from thumbor_rekognition.decision import Decision, Status

logger = logging.getLogger(__name__)

# The context attribute under which the gate leaves the main picture's decision.
MAIN_DECISION = "moderation_main_decision"
# Ends every kept result; an entry without it was not written by this module. The last
# byte is 2 since originals are cleaned first (embedded.py): a result kept before may
# carry what rode along its original, so it is a miss and rendered again.
MAGIC = b"\n\x89thumbor-moderation\x02"
DIGEST = hashlib.sha256().digest_size
# The length of what ends a result made of one picture: its hash, the count, the magic.
ONE_PICTURE_TRAILER = DIGEST + 1 + len(MAGIC)


def pack(hashes: list[str], body: bytes) -> bytes:
    """A result as kept: the image bytes, the raw content hashes, their count, the magic.

    After the image, not before it: what reads the start of the file (Thumbor's type
    sniffing, which otherwise runs an SVG regex over unknown bytes) sees the image.
    """
    return body + b"".join(bytes.fromhex(h) for h in hashes) + bytes([len(hashes)]) + MAGIC


def unpack(data: bytes) -> tuple[list[bytes], bytes] | None:
    """The raw content hashes and the image bytes of a kept result, or None."""
    if not data.endswith(MAGIC):
        return None
    end = len(data) - len(MAGIC) - 1
    count = data[end] if end >= 0 else 0
    start = end - count * DIGEST
    if count == 0 or start < 0:
        return None
    if count == 1:
        return [data[start:end]], data[:start]
    return [data[at : at + DIGEST] for at in range(start, end, DIGEST)], data[:start]


@functools.lru_cache(maxsize=4096)
def _trailer(digest: bytes) -> bytes:
    """What ends a result made of one picture only."""
    return digest + b"\x01" + MAGIC


class Storage(Wrapping, BaseStorage):  # type: ignore[misc]
    """MODERATION_SOURCE_RESULT_STORAGE, serving results only while their pictures are approved."""

    WRAPS = "source_result_storage"

    async def get(self) -> Any:
        source = self.source
        if source is None:
            return None
        try:
            result = await source.get()
        except FileNotFoundError:
            # Purged between the file result storage's exists and its open (a rejection
            # of one of its pictures): a miss, as it would be a moment later.
            return None
        if result is None:
            return None
        stored = isinstance(result, ResultStorageResult)
        data = result.buffer if stored else result
        main = getattr(self.context, MAIN_DECISION, None)
        # The gate has just read the main picture's decision (approved): a result made of
        # that picture alone, nearly all of them, ends with its one hash.
        # Without it (no decision known for the URL), every result takes the full check.
        if main is not None and data.endswith(_trailer(main.digest)):
            body = data[:-ONE_PICTURE_TRAILER]
        else:
            kept = unpack(data)
            if kept is None or not await self._approved(kept[0], main):
                return None
            body = kept[1]
        if not stored:
            return body
        # The source counted the hashes in the length it described.
        result.buffer = body
        result.metadata["ContentLength"] = len(body)
        return result

    async def put(self, image_bytes: bytes) -> None:
        if self.source is None:
            return
        used = provenance.of(self.context)
        hashes = used.hashes()
        if used.refused or not hashes:
            # Made with a refused picture, or from originals nobody noted: not kept.
            return
        await self.source.put(pack(hashes, bytes(image_bytes)))
        moderator = self._runtime.moderator
        path = self.context.request.url
        for key in used.sources:
            await cdn.record(moderator, key, path)
        for key, sha256 in used.sources.items():
            if not await moderator.still_approved(key, sha256):
                # A rejection saved while this was written: its purge may have run first.
                await self._remove_quietly(key, path)
                return

    async def last_updated(self) -> Any:
        if self.source is None:
            return None
        # Thumbor's file result storage still has the synchronous form.
        value = self.source.last_updated()
        return await value if inspect.isawaitable(value) else value

    async def _approved(self, hashes: list[bytes], main: Decision | None) -> bool:
        """Whether every picture of a result is approved, the main one as its URL shows
        now (main: its decision as the gate read it, None to ask)."""
        moderator = self._runtime.moderator
        if main is None:
            main = await moderator.lookup(provenance.of(self.context).main)
        if main is None or main.status is not Status.APPROVED or main.digest != hashes[0]:
            # The URL shows other content now (or its decision is not known): re-render.
            return False
        for digest in hashes[1:]:
            if not await moderator.approved_hash(digest.hex()):
                return False
        return True

    async def _remove_quietly(self, key: str, path: str) -> None:
        try:
            await remove_result(self.context.config, self.source, path)
            await aws_caches.remove(self._runtime, key, aws_caches.RESULT_STORAGE, [path])
        except Exception as error:
            logger.error("result %s not removed: %s", path, error)
