"""The CDN purger contract: drop every cached size of one picture from a CDN.

``MODERATION_CDN_PURGERS`` lists modules, each with a ``Purger`` class taking the
plugin's settings. ``purge`` is blocking and raises ``PurgeError`` when the CDN did not
take the purge; the outbox then retries it with backoff.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings


class PurgeError(Exception):
    """The CDN did not accept a purge; it will be retried."""


class Purger:
    """Purge one picture: by its cache tag and by the result paths recorded for it."""

    name = "purger"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def purge(self, tag: str, key: str, paths: list[str]) -> None:
        raise NotImplementedError


@functools.lru_cache(maxsize=65536)
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
