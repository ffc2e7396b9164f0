"""A first view: the backend judges the original while Thumbor renders it.

The loader hands Thumbor the original as soon as the backend has it, and Thumbor
decodes, transforms and encodes meanwhile. Nothing of the picture leaves before it is
approved: the gate awaits the judgement before it writes the response or the result,
and the writes to STORAGE that Thumbor makes meanwhile wait here for the approval.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from thumbor_rekognition.decision import Decision, Status

logger = logging.getLogger(__name__)


class Overlap:
    """The main picture's judgement running beside Thumbor's rendering of it."""

    def __init__(self, key: str, judgement: asyncio.Future[Decision], request: Any) -> None:
        self.key = key
        self.judgement = judgement
        # The request as the loader saw it, for rendering the placeholder if it is refused.
        self.request_as_loaded = _parameters(request)
        self._writes: list[asyncio.Future[None]] = []
        # Read here whatever happens to the request: an error is never left unretrieved.
        judgement.add_done_callback(_retrieve)

    def after_approval(self, path: str, write: Callable[[], Awaitable[Any]]) -> None:
        """Make a write of the picture once it is approved, and never otherwise."""
        self._writes.append(asyncio.ensure_future(self._when_approved(path, write)))

    async def _when_approved(self, path: str, write: Callable[[], Awaitable[Any]]) -> None:
        try:
            decision = await asyncio.shield(self.judgement)
        except Exception:
            return
        if decision.status is not Status.APPROVED:
            return
        try:
            await write()
        except Exception as error:
            # The viewer still gets the picture; a later request stores it again.
            logger.error("original %s not stored: %s", path, error)

    async def written(self) -> None:
        """Wait for every write made after the approval."""
        while self._writes:
            await self._writes.pop(0)

    def restore(self, request: Any) -> None:
        """Put the request back as the loader saw it, before Thumbor rendered the picture."""
        vars(request).clear()
        vars(request).update(_parameters_from(self.request_as_loaded))


def _parameters(request: Any) -> dict[str, Any]:
    return _parameters_from(vars(request))


def _parameters_from(parameters: dict[str, Any]) -> dict[str, Any]:
    copied = dict(parameters)
    # Thumbor moves the crop box and the focal points in place while it renders.
    for name in ("crop", "focal_points"):
        if name in copied:
            copied[name] = copy.deepcopy(copied[name])
    return copied


def _retrieve(judgement: asyncio.Future[Decision]) -> None:
    if not judgement.cancelled():
        judgement.exception()
