"""The LOADER: fetch an original with MODERATION_SOURCE_LOADER and moderate it first.

This is the first-fetch hook, the only place that sees original bytes before Thumbor
stores them. A rejected picture is answered without fetching it again; an approved one
is returned as loaded; anything else is kept out of STORAGE and RESULT_STORAGE. A new
main picture on the image route is returned once the backend has it, and the gate awaits
its decision while Thumbor renders it (see overlap.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import unquote

from thumbor.loaders import LoaderResult

from thumbor_rekognition import embedded, provenance
from thumbor_rekognition.decision import Decision, Status
from thumbor_rekognition.gate import (
    FORBIDDEN,
    NOT_AN_IMAGE,
    STATUS_HEADER,
    ModerationHandler,
    apply_decision,
    keep_out_of_caches,
    note_status,
    refuses,
)
from thumbor_rekognition.overlap import Overlap
from thumbor_rekognition.preparation import UnsupportedImage
from thumbor_rekognition.runtime import Runtime, runtime_for
from thumbor_rekognition.urls import normalise

logger = logging.getLogger(__name__)

UNAVAILABLE = 503

# Lets the handler list check at start-up that LOADER moderates.
MODERATING_LOADER = True

GATE = "thumbor_rekognition.handler_list"
_warned_without_gate = -60.0


def validate(context: Any, path: str) -> bool:
    """Delegate URL validation (allowed sources, path traversal) to the source loader."""
    source = runtime_for(context.config).source_loader
    check = getattr(source, "validate", None)
    return bool(check(context, path)) if callable(check) else True


async def load(context: Any, path: str) -> LoaderResult:
    """Load an original and answer it, or a refusal, according to its decision."""
    runtime = runtime_for(context.config)
    handler = getattr(context, "request_handler", None)
    key = normalise(path)
    main = provenance.is_main(context, key)
    refusal = getattr(handler, "moderation_refusal", None)
    if refusal is not None and main:
        return refusal
    if _without_gate(context):
        return LoaderResult(successful=False, error=UNAVAILABLE, extras={"reason": "no gate"})
    known = await runtime.moderator.lookup(key, context.metrics)
    if (
        known is not None
        and known.status is not Status.APPROVED
        and runtime.moderator.refuses_unfetched(known)
    ):
        # Refused pictures are answered without fetching the original again; one rejected
        # by hand before any fetch is fetched once, to bind the rejection to its bytes, and
        # one never analysed is fetched once a policy has a model step.
        refusal = _refuse(context, runtime, known, main)
        if refusal is not None:
            return refusal

    room = await _room_for_original(runtime, handler, known)
    if room == NO_ROOM:
        # No room to hold one more original for judging in time: not loaded.
        answer = _refuse(
            context, runtime, runtime.moderator.no_room(key, unquote(path), context.metrics), main
        )
        if answer is not None:
            return answer
        # Failing open: loaded, and judged as any other caller's picture is.
        room = None

    result = as_loader_result(await runtime.source_loader.load(context, path))
    if result.successful and not result.buffer:
        return LoaderResult(successful=False, error=NOT_AN_IMAGE, extras={"reason": "empty"})
    if not result.successful:
        kept = await _quarantined(runtime, known)
        if kept is None:
            return result
        # Approved since it was quarantined, and gone from its origin: the kept copy
        # is the original (same bytes), so it is served and stored again.
        result = LoaderResult(buffer=kept)
    if room is not None:
        _settle(runtime, handler, room, result.buffer)
    if _from_moderated_thumbor(result):
        # A rendering by a moderated Thumbor (this one, say): judging it as a new picture
        # would give it a decision of its own that rejecting its source would not reach.
        logger.warning("original %s comes from a moderated Thumbor; refused", key)
        return LoaderResult(
            successful=False, error=FORBIDDEN, extras={"reason": "moderated rendering"}
        )

    try:
        result, was = await _cleaned(runtime, key, result)
        decision = await _judge(
            context,
            runtime,
            handler,
            key,
            path,
            result.buffer,
            main,
            was,
            admitted=room is not None,
        )
    except UnsupportedImage as error:
        logger.warning("original %s is not an image the plugin can judge: %s", key, error)
        return LoaderResult(successful=False, error=NOT_AN_IMAGE, extras={"reason": str(error)})
    if decision is None:
        # The backend has it: Thumbor renders it meanwhile, and the gate lets nothing of
        # it out (response, result, stored original) before it is approved.
        return result
    if decision.status is Status.APPROVED:
        provenance.of(context).note(key, decision.sha256)
        if main:
            note_status(context, decision.status)
        return result
    answer = _refuse(context, runtime, decision, main)
    if answer is None:
        # Failing open: shown, kept out of every cache.
        if main:
            keep_out_of_caches(context)
        else:
            context.request.prevent_result_storage = True
        return result
    return answer


# What _room_for_original answers when no room came in time.
NO_ROOM = -1


async def _room_for_original(runtime: Runtime, handler: Any, known: Decision | None) -> int | None:
    """Room in the decode budget for an original about to be loaded and judged, held by
    the request until it ends (Thumbor decodes the picture too): what is held for it
    until it is settled at its cost; NO_ROOM when no room came in time; None for one
    that is not judged (known approved) or not loaded by the image route, which judging
    counts when it decodes it."""
    moderator = runtime.moderator
    if not isinstance(handler, ModerationHandler) or (
        known is not None and known.status is Status.APPROVED and moderator.stands(known)
    ):
        return None
    if handler.budget_held:
        # A picture pasted into the request's main one: counted, never waited for, as
        # the request would otherwise wait for room it holds itself.
        return 0
    room = await moderator.room_for_original(handler.deadline)
    if room is None:
        return NO_ROOM
    handler.budget_held += room
    return room


def _settle(runtime: Runtime, handler: Any, room: int, buffer: bytes) -> None:
    """Count a loaded original at what it costs, from now until the request ends: first
    views after it wait for room before they load theirs."""
    cost = runtime.moderator.cost_of(buffer)
    runtime.moderator.decode_budget.settle(room, cost)
    handler.budget_held += cost - room


async def _cleaned(runtime: Runtime, key: str, result: LoaderResult) -> tuple[LoaderResult, str]:
    """The loaded original as it is judged and served (see embedded.py), and the hash of
    the bytes as loaded when cleaning changed them."""
    upright = not runtime.settings.respect_orientation
    cleaned = await runtime.moderator.run_blocking(embedded.cleaned, bytes(result.buffer), upright)
    if not cleaned.was:
        return result, ""
    logger.info("original %s: removed %s", key, ", ".join(cleaned.removed) or "nothing shown")
    kept = LoaderResult(buffer=cleaned.data, metadata=result.metadata, extras=result.extras)
    return kept, cleaned.was


async def _judge(
    context: Any,
    runtime: Runtime,
    handler: Any,
    key: str,
    path: str,
    buffer: bytes,
    main: bool,
    was: str,
    admitted: bool = False,
) -> Decision | None:
    """The decision for a loaded original; None when the gate awaits it while Thumbor
    renders the picture (the main picture of the image route, once the backend has it)."""
    moderator = runtime.moderator
    deadline = getattr(handler, "deadline", None)
    if not main or not isinstance(handler, ModerationHandler) or handler.overlap is not None:
        # A picture pasted into another is judged before it is used (the main one too,
        # when a filter pastes it into itself while it renders).
        return await moderator.moderate(
            key, unquote(path), buffer, context.metrics, deadline, was=was, admitted=admitted
        )
    called: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    judgement = asyncio.ensure_future(
        moderator.moderate(
            key,
            unquote(path),
            buffer,
            context.metrics,
            deadline,
            called=called,
            was=was,
            admitted=admitted,
        )
    )
    # Preparing the picture comes first: what the plugin cannot judge (hostile files
    # included) is refused before Thumbor decodes it.
    await asyncio.wait((judgement, called), return_when=asyncio.FIRST_COMPLETED)
    if judgement.done():
        # Known without a new call (the same bytes under another URL, say).
        return judgement.result()
    handler.render_while_judged(Overlap(key, judgement, context.request))
    return None


def _refuse(context: Any, runtime: Runtime, decision: Decision, main: bool) -> LoaderResult | None:
    """The answer for a picture that is not approved, or None to show it (failing open)."""
    if main:
        return apply_decision(context, runtime, decision, None)
    if not refuses(runtime, decision):
        return None
    # A picture pasted into another (watermark, frame): the placeholder stands in for it,
    # the request that asked for the other keeps its size, and its result is not kept.
    provenance.of(context).refused = True
    context.request.prevent_result_storage = True
    return LoaderResult(buffer=runtime.placeholder)


def _from_moderated_thumbor(result: LoaderResult) -> bool:
    headers = result.metadata or {}
    return any(str(name).lower() == STATUS_HEADER.lower() for name in headers)


def as_loader_result(result: Any) -> LoaderResult:
    """What a source loader returned, as a LoaderResult."""
    if isinstance(result, LoaderResult):
        return result
    # Loaders written before LoaderResult existed return the bytes themselves.
    if result is None:
        return LoaderResult(successful=False, error=LoaderResult.ERROR_NOT_FOUND)
    return LoaderResult(buffer=result)


async def _quarantined(runtime: Runtime, known: Decision | None) -> bytes | None:
    if known is None or known.status is not Status.APPROVED:
        return None
    return await runtime.moderator.kept_original(known.sha256)


def _without_gate(context: Any) -> bool:
    """Whether Thumbor runs this loader without the gate (logged once a minute)."""
    global _warned_without_gate
    if GATE in context.config.HANDLER_LISTS:
        return False
    now = time.monotonic()
    if now - _warned_without_gate > 60:
        _warned_without_gate = now
        # Thumbor gives a loader no start-up hook: this is the earliest it can be said.
        logger.critical(
            "thumbor_rekognition.loader runs without its gate, so pictures rejected after "
            "they were cached would still be served: every image is refused (503) until "
            "'%s' is added to HANDLER_LISTS.",
            GATE,
        )
    return True
