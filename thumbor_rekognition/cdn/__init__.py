"""The CDN purger contract: drop every cached size of one picture from a CDN.

``MODERATION_CDN_PURGERS`` lists modules, each with a ``Purger`` class taking the
plugin's settings. ``purge`` is blocking and raises ``PurgeError`` when the CDN did not
take the purge; the outbox then retries it with backoff.

A purge names the request paths a picture was served at with a cacheable approval,
as the gate and the result storage recorded them. A picture can be asked for at any
number of sizes, so each process records at most PATHS_PER_PICTURE of them; a purge
of a picture that reached the bound names WILDCARD instead, every path there is.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
from typing import TYPE_CHECKING

from thumbor_rekognition import stores
from thumbor_rekognition.urls import MEMO_ENTRIES

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings
    from thumbor_rekognition.moderator import Moderator

logger = logging.getLogger(__name__)

# A site asks for a few sizes of a picture; hundreds mean sizes made up in URLs.
PATHS_PER_PICTURE = 300
# CloudFront takes '*' at the end of a path only, and Thumbor's URLs end with the picture:
# no narrower path covers every size of one picture.
WILDCARD = "/*"


class PurgeError(Exception):
    """The CDN did not accept a purge; it will be retried."""


class Purger:
    """Purge one picture: by its cache tag and by the paths it was served at."""

    name = "purger"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def purge(self, tag: str, key: str, paths: list[str]) -> None:
        raise NotImplementedError


@functools.lru_cache(maxsize=MEMO_ENTRIES)
def cache_tag(key: str) -> str:
    """The cache tag of a picture: stable across sizes, safe in any header."""
    return "img-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def load_purgers(settings: Settings) -> dict[str, Purger]:
    """The configured purgers by module path."""
    purgers: dict[str, Purger] = {}
    for name in settings.cdn_purgers:
        module = importlib.import_module(name)
        purger_class = getattr(module, "Purger", None)
        if not isinstance(purger_class, type) or not issubclass(purger_class, Purger):
            raise TypeError(f"MODERATION_CDN_PURGERS module {name} has no Purger class")
        purgers[name] = purger_class(settings)
    return purgers


async def record(moderator: Moderator, key: str, path: str) -> None:
    """Record a request path key's picture was served or stored at, for its purges.

    Up to PATHS_PER_PICTURE per picture in this process; the moderator skips repeats.
    """
    # The moderator's own memory of what it recorded: probed, not copied, on every hit.
    recorded = moderator._recorded.get(key)
    # Counted only when a new path comes, which costs a store write anyway.
    if (
        recorded is not None
        and path not in recorded
        and len(stores.result_paths(list(recorded))) >= PATHS_PER_PICTURE
    ):
        return
    await moderator.record_result(key, path)


def purge_paths(key: str, paths: list[str]) -> list[str]:
    """The paths a purge of key's picture names: those recorded, or past the bound WILDCARD."""
    if len(paths) < PATHS_PER_PICTURE:
        return paths
    logger.warning(
        "%s was served at %d paths or more, more than are recorded: purging %s",
        key,
        PATHS_PER_PICTURE,
        WILDCARD,
    )
    return [WILDCARD]
