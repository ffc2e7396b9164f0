"""Judging a picture at upload time, before anyone views it, as its first view would.

The check route (check.py) and the S3 consumer (cli/watch_sqs.py) hand the bytes of a
new picture here with the URL Thumbor will be asked for. They are cleaned and judged as
the LOADER cleans and judges them (same key, same bytes, same moderator, so the same
decision store, call rate, quarantine and webhooks), and the decision is stored bound to
both: the first view finds it and makes no backend call.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote

from thumbor.context import Context, RequestParameters
from thumbor.loaders import LoaderResult

from thumbor_rekognition import embedded
from thumbor_rekognition.caches import storage_key
from thumbor_rekognition.decision import Decision
from thumbor_rekognition.loader import as_loader_result
from thumbor_rekognition.moderation.judging import QUEUED
from thumbor_rekognition.runtime import Runtime
from thumbor_rekognition.urls import normalise

logger = logging.getLogger(__name__)

# Why a URL gave no picture: the source loader refused it, found nothing, timed out, failed.
REFUSED, NOT_FOUND, TIMEOUT, FAILED = "refused", "not found", "timeout", "failed"
LOAD_FAILURES = {
    LoaderResult.ERROR_NOT_FOUND: NOT_FOUND,
    LoaderResult.ERROR_TIMEOUT: TIMEOUT,
}


class NotLoaded(Exception):
    """The source loader could not give the picture at a URL: why (kind), in words."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


async def judge(
    runtime: Runtime,
    url: str,
    data: bytes,
    metrics: Any = None,
    deadline: float | None = None,
    patient: bool = False,
) -> Decision:
    """The decision for these bytes served under this URL (as a person writes it, not
    URL-encoded), stored unless it is pending for a retry.

    A new picture waits for its turn of the call rate as a first view does (then answered
    pending and judged in the background), or, patient, until deadline.
    Raises preparation.UnsupportedImage when the bytes are not a picture the plugin judges.
    """
    quoted = storage_key(url)
    moderator = runtime.moderator
    # Cleaned as the LOADER cleans them, so the first view brings the same content hash.
    upright = not runtime.settings.respect_orientation
    cleaned = await moderator.run_blocking(embedded.cleaned, data, upright)
    return await moderator.moderate(
        normalise(quoted),
        unquote(quoted),
        cleaned.data,
        metrics,
        deadline,
        was=cleaned.was,
        patient=patient,
    )


def is_busy(decision: Decision) -> bool:
    """Whether a pending decision waits for a turn of the call rate or for room to decode
    the picture (queued, judged in the background), not for a failure."""
    return decision.needs_retry and decision.error.startswith(QUEUED)


async def load(runtime: Runtime, context: Any, url: str) -> bytes:
    """The picture at a URL, fetched with MODERATION_SOURCE_LOADER as a first view would.

    context is Thumbor's; the loader gets a request context of its own, without the
    handler of the request that asked, so that no header of it (a bearer token) is ever
    forwarded to the origin. Raises NotLoaded.
    """
    quoted = storage_key(url)
    request = Context(
        server=context.server, config=context.config, importer=context.modules.importer
    )
    request.request = RequestParameters(image=quoted)
    loader = runtime.source_loader
    validate = getattr(loader, "validate", None)
    if callable(validate) and not validate(request, quoted):
        raise NotLoaded(REFUSED, "the source loader does not accept this url")
    try:
        result = as_loader_result(await loader.load(request, quoted))
    except Exception as error:
        # A loader may raise anything (sockets, TLS, its own bugs): this URL fails.
        logger.warning("loading %s failed: %s: %s", url, type(error).__name__, error)
        raise NotLoaded(FAILED, "the source loader failed") from None
    if not result.successful:
        kind = LOAD_FAILURES.get(result.error, FAILED)
        raise NotLoaded(kind, f"the source loader answered {kind} ({result.error})")
    if not result.buffer:
        raise NotLoaded(FAILED, "the source loader gave an empty body")
    return bytes(result.buffer)
