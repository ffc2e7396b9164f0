"""Thumbor's STORAGE and RESULT_STORAGE reached from outside an image request.

Overrides need them: approving a picture puts its quarantined original back into
STORAGE; rejecting one removes the original and every result derived from it. Result
storage has no delete and no index, so the gate records the result paths of each
picture as they are written, and deleting them is specific to each result storage:
Thumbor's file result storage is supported here, thumbor-aws's in aws_caches (its objects
are deleted in batches), others keep their entries (the gate refuses them anyway; only
disk is lost) unless they have a ``remove(path)`` method.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any
from urllib.parse import quote, unquote

from thumbor.context import Context, RequestParameters

from thumbor_rekognition import aws_caches

logger = logging.getLogger(__name__)

FILE_RESULT_STORAGE = "thumbor.result_storages.file_storage"


def storage_key(url: str) -> str:
    """The STORAGE key Thumbor uses for an image URL (not URL-encoded, as decisions keep it)."""
    return quote(url.encode("utf-8"))


class ThumborCaches:
    """STORAGE and RESULT_STORAGE of one Thumbor configuration."""

    def __init__(self, context: Any) -> None:
        self._server = context.server
        self._config = context.config
        self._importer = context.modules.importer

    def _context(self) -> Any:
        context = Context(server=self._server, config=self._config, importer=self._importer)
        context.request = RequestParameters()
        return context

    def _storage(self) -> Any:
        # The storage that keeps the bytes: the plugin's own storage judges what it hands
        # out, and administrators read and remove originals whatever their decision.
        storage = self._context().modules.storage
        return getattr(storage, "source", storage)

    async def original(self, url: str) -> bytes | None:
        """The original Thumbor keeps in STORAGE for an image URL, if any."""
        data = await self._storage().get(storage_key(url))
        return bytes(data) if data is not None else None

    async def restore(self, url: str, data: bytes) -> None:
        """Put an original back into STORAGE so Thumbor serves it without its origin."""
        await self._storage().put(storage_key(url), data)

    async def remove_original(self, url: str) -> bool:
        """Drop an original from STORAGE by its image URL; True if one was there."""
        return await self.remove_stored(storage_key(url))

    async def remove_stored(self, path: str) -> bool:
        """Drop an original from STORAGE by its storage path; True if one was there.

        Storages that cannot delete (mixed_storage) keep it, and the plugin's STORAGE
        refuses it on every read.
        """
        storage = self._storage()
        if not await storage.exists(path):
            return False
        try:
            await storage.remove(path)
        except NotImplementedError:
            logger.warning("STORAGE %s cannot delete %s", self._config.STORAGE, path)
            return False
        return True

    async def remove_results(self, paths: list[str]) -> int:
        """Drop results from RESULT_STORAGE by request path; how many were removed."""
        if not paths or not self._config.RESULT_STORAGE:
            return 0
        result_storage = self._context().modules.result_storage
        source = getattr(result_storage, "source", result_storage)
        removed = 0
        for path in paths:
            removed += await remove_result(self._config, source, path)
        return removed


async def remove_result(config: Any, result_storage: Any, path: str) -> int:
    """Drop one result by request path from a result storage; 1 if it was removed."""
    if result_storage is None:
        return 0
    if type(result_storage).__module__ == FILE_RESULT_STORAGE:
        return _remove_result_file(config, path)
    if aws_caches.is_thumbor_aws(type(result_storage), aws_caches.RESULT_STORAGE):
        # No remove(path): its callers delete the objects in batches (aws_caches.remove).
        return 0
    remove = getattr(result_storage, "remove", None)
    if not callable(remove):
        logger.warning(
            "RESULT_STORAGE %s cannot delete %s (the plugin refuses it anyway)",
            type(result_storage).__module__,
            path,
        )
        return 0
    await remove(path)
    return 1


def _remove_result_file(config: Any, path: str) -> int:
    # Mirrors thumbor.result_storages.file_storage.normalize_path, for both the plain
    # and the AUTO_WEBP folder.
    digest = hashlib.sha1(unquote(path).encode("utf-8")).hexdigest()  # noqa: S324
    root = str(config.RESULT_STORAGE_FILE_STORAGE_ROOT_PATH).rstrip("/")
    removed = 0
    for prefix in ("default", "auto_webp"):
        try:
            os.remove(f"{root}/{prefix}/{digest[:2]}/{digest[2:4]}/{digest[4:]}")
            removed = 1
        except FileNotFoundError:
            pass
    return removed
