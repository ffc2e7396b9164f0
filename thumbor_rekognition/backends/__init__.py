"""The backend contract: a picture in, moderation labels out.

``MODERATION_BACKEND`` names a module with a ``Backend`` class taking the plugin's
settings. ``detect`` is blocking; the moderator runs it in the plugin's executor.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from thumbor_rekognition import generations
from thumbor_rekognition.decision import Analysis
from thumbor_rekognition.preparation import PreparedImage

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings
    from thumbor_rekognition.policy import Policy


class BackendError(Exception):
    """The backend gave no answer; the picture stays pending and is judged again later."""

    kind = "error"


class RetryableError(BackendError):
    """A passing fault: throttling, an internal error, a timeout, a dropped connection."""

    kind = "retryable"


class RateLimitedError(RetryableError):
    """No turn to call within the request's budget (REKOGNITION_MAX_CALLS_PER_SECOND)."""

    kind = "rate_limited"


class BadImageError(BackendError):
    """The backend refused the picture we prepared: a preparation bug, logged loudly."""

    kind = "bad_image"


class BackendConfigurationError(BackendError):
    """Credentials, permissions or endpoint are wrong: nothing works until an operator acts."""

    kind = "configuration"


class Backend:
    """Judge one prepared picture."""

    name = "backend"
    # The model generation ('6' or '7') whose label names the backend answers with; None
    # when it is not a Rekognition taxonomy.
    answers_in: str | None = None
    # Longest side the backend can use; pictures are prepared no larger than this.
    max_side: int | None = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def detect(self, image: PreparedImage, min_confidence: float) -> Analysis:
        """Labels at or above min_confidence (0..100); raises BackendError."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """Build clients or load models ahead of the first request."""

    def unseen_categories(self) -> frozenset[str]:
        """Category slugs of its own generation this backend can never report."""
        return frozenset()


def startup_warnings(backend: Backend, policy: Policy) -> list[str]:
    """What an operator should know about judging this backend's answers with this policy."""
    messages: list[str] = []
    unseen = backend.unseen_categories()
    if backend.answers_in and backend.answers_in != policy.generation:
        unseen = generations.unseen_after_translation(unseen, policy.generation)
    named = sorted(unseen & set(policy.rules))
    if named:
        messages.append(
            f"backend {backend.name} never reports these configured categories: {', '.join(named)}"
        )
    if backend.answers_in and backend.answers_in != policy.generation and policy.rules:
        lossy = generations.approximations(policy.generation)
        messages.append(
            f"backend {backend.name} answers in model {backend.answers_in}.x names and the "
            f"thresholds are written in {policy.generation}.x names; these labels have no "
            "single counterpart and are judged as: "
            + "; ".join(f"{name} -> {' and '.join(shown)}" for name, shown in lossy.items())
            + f" (AWS's mapping: {generations.SOURCE})"
        )
    return messages


def load_backend(settings: Settings) -> Backend:
    """Instantiate the Backend class of the module MODERATION_BACKEND names."""
    module = importlib.import_module(settings.backend)
    backend_class = getattr(module, "Backend", None)
    if not isinstance(backend_class, type) or not issubclass(backend_class, Backend):
        raise TypeError(f"MODERATION_BACKEND module {settings.backend} has no Backend class")
    backend: Backend = backend_class(settings)
    return backend
