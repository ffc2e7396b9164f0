"""The quarantine contract: the backup repository of originals that are not approved.

``MODERATION_QUARANTINE`` names a module with a ``Quarantine`` class taking the plugin's
settings. Originals are content-addressed by SHA-256, so one copy serves every URL the
picture appears at. Methods are blocking; callers run them in the plugin's executor.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class QuarantineError(Exception):
    """The quarantine could not keep or return an original."""


class Quarantine:
    """Keep originals by content hash and give them back."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    @classmethod
    def check_settings(cls, settings: Settings) -> None:
        """Raise ConfigurationError for settings this quarantine cannot work with, without
        connecting to anything: Thumbor's start-up asks, before it forks."""

    def put(self, sha256: str, data: bytes) -> None:
        """Keep an original (idempotent)."""
        raise NotImplementedError

    def get(self, sha256: str) -> bytes | None:
        """The original with this hash, or None if it was never kept."""
        raise NotImplementedError

    def delete(self, sha256: str) -> None:
        """Drop an original if it is kept."""
        raise NotImplementedError


def checked(sha256: str) -> str:
    """The hash itself, refused unless it is 64 lower-case hex digits (it becomes a path)."""
    if not _SHA256.fullmatch(sha256):
        raise QuarantineError(f"not a SHA-256 hex digest: {sha256!r}")
    return sha256


def load_quarantine(settings: Settings) -> Quarantine:
    """Instantiate the Quarantine class of the module MODERATION_QUARANTINE names."""
    return _quarantine_class(settings)(settings)


def check_settings(settings: Settings) -> None:
    """Raise ConfigurationError if the configured quarantine cannot work with these settings."""
    _quarantine_class(settings).check_settings(settings)


def _quarantine_class(settings: Settings) -> type[Quarantine]:
    module = importlib.import_module(settings.quarantine)
    quarantine_class = getattr(module, "Quarantine", None)
    if not isinstance(quarantine_class, type) or not issubclass(quarantine_class, Quarantine):
        raise TypeError(
            f"MODERATION_QUARANTINE module {settings.quarantine} has no Quarantine class"
        )
    return quarantine_class
