"""The gate: Thumbor's imaging handler, asked for the decision before any cache answers.

Thumbor serves result-storage hits and storage hits without calling the loader, so a
loader alone would keep serving a picture rejected after it was cached. This handler
takes Thumbor's image route (handler lists are matched first) and, after the signature
check, refuses rejected pictures before result storage or storage is read, with the
placeholder or a 403 and short cache headers. What it lets through is still judged by
the moderating STORAGE and RESULT_STORAGE, which also close Thumbor's other doors.

Every path it answers with a cacheable approval is recorded for the picture, stored as a
result or not (unsafe URLs, no result storage): a CDN may keep any of them, and a
rejection purges them all.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from thumbor.filters import PHASE_PRE_LOAD
from thumbor.handlers.imaging import ImagingHandler
from thumbor.loaders import LoaderResult
from thumbor.storages.no_storage import Storage as NoStorage

from thumbor_rekognition import cdn, provenance, rules
from thumbor_rekognition.cdn import cache_tag
from thumbor_rekognition.decision import Decision, Status
from thumbor_rekognition.overlap import Overlap
from thumbor_rekognition.preparation import UnsupportedImage
from thumbor_rekognition.runtime import Runtime, runtime_for
from thumbor_rekognition.urls import normalise

logger = logging.getLogger(__name__)

STATUS_HEADER = "X-Moderation-Status"
OK = 200
NOT_AN_IMAGE = 400
FORBIDDEN = 403
# A loader error that is no error: the placeholder at the size asked for is rendered
# already (ModerationHandler.rendered_placeholder), and Thumbor's _error answers it.
PLACEHOLDER_RENDERED = 200
INTERNAL_ERROR = 500
HEADER_VALUES = {status: status.value for status in Status}
APPROVED = Status.APPROVED
# Thumbor's own steps, called without building a super() object on every request.
_initialize = ImagingHandler.initialize
_execute_image_operations = ImagingHandler.execute_image_operations
_finish = ImagingHandler.finish


class ModerationHandler(ImagingHandler):  # type: ignore[misc]
    """Thumbor's ImagingHandler with the moderation decision checked first."""

    # Tornado builds a handler per request: class attributes are each request's defaults.
    moderation_status: Status | None = None
    moderation_refusal: LoaderResult | None = None
    placeholder_key: str | None = None
    # The placeholder already rendered at this request's size, when the loader answers it.
    rendered_placeholder: tuple[Any, str] | None = None
    # A first view's judgement, running while Thumbor renders the picture.
    overlap: Overlap | None = None
    _key = ""
    # The request path and the pictures of an approved response a CDN may keep.
    _served: tuple[str, list[str]] | None = None

    _deadline: float | None = None
    # Room this request holds in the decode budget for the originals it loaded to judge
    # (see loader.py), given back when it ends.
    budget_held = 0

    def initialize(self, context: Any, runtime: Runtime | None = None) -> None:
        _initialize(self, context)
        self._runtime: Runtime = runtime or runtime_for(context.config)

    @property
    def deadline(self) -> float:
        """When every wait for a judgement in this request ends: one budget from arrival."""
        deadline = self._deadline
        if deadline is None:
            # Only a request that waits for a judgement asks: a cached hit never does.
            arrived = time.monotonic() - self.request.request_time()
            deadline = self._deadline = arrived + self._runtime.settings.request_budget
        return deadline

    def validate(self, path: str) -> bool:
        # Thumbor asks LOADER, which asks the source loader: skipped when that checks nothing.
        return not self._runtime.source_validates or bool(super().validate(path))

    async def execute_image_operations(self) -> None:
        # The path of every cached approved hit: keep it to a dict probe and nothing else.
        context = self.context
        key = self._key = normalise(context.request.image_url)
        moderator = self._runtime.moderator
        decision = moderator.remembered(key) or await moderator.lookup(key, context.metrics)
        if decision is not None:
            status = decision.status
            if status is APPROVED:
                self.moderation_status = status
                # The moderating RESULT_STORAGE checks a result's hashes against it.
                context.moderation_main_decision = decision
            elif not decision.needs_retry:
                self.moderation_status = status
                if refuses(self._runtime, decision) and moderator.refuses_unfetched(decision):
                    await self._evict_original(decision)
                    if await self._refuse(decision):
                        return
                else:
                    # Failing open, rejected by hand before any fetch, or left to a human
                    # by a policy without a model step: the loader fetches the original,
                    # which binds the rejection to its bytes or has it judged, and refuses
                    # it unless approved.
                    keep_out_of_caches(self.context)
                    self.context.modules.result_storage = None
        # Not judged yet: the moderating STORAGE judges a stored original before handing it
        # out, and the moderating RESULT_STORAGE answers no result without an approval.
        try:
            await _execute_image_operations(self)
        finally:
            if self.budget_held:
                moderator.decode_budget.release(self.budget_held)
                self.budget_held = 0
        served = self._served
        if served is not None:
            # After the answer: the viewer does not wait for the record.
            path, keys = served
            for served_key in keys:
                await cdn.record(moderator, served_key, path)

    async def _refuse(self, decision: Decision) -> bool:
        """Answer the 403, or the placeholder when already rendered at this size; False
        when the placeholder is still to be rendered (the request is set up for it)."""
        if self._runtime.settings.rejected_response == "forbidden":
            self._error(FORBIDDEN)
            return True
        self._substitute_placeholder(decision)
        rendered = self._runtime.placeholders.get(self.placeholder_key)
        if rendered is None:
            return False
        await self._write_results_to_client(*rendered)
        return True

    async def _evict_original(self, decision: Decision) -> None:
        # A picture rejected before STORAGE was read (elsewhere, or by thresholds changed
        # since) may still be stored: reading it through the moderating STORAGE moves it
        # to the quarantine. Once per picture and process; rejections by hand purge it.
        storage = self.context.modules.storage
        evicted = self._runtime.evicted
        mark = f"{decision.sha256}:{decision.key}"
        if decision.status is Status.REJECTED and evicted.get(mark) is None:
            if getattr(storage, "MODERATING", False):
                await storage.get(self.context.request.image_url)
            evicted.put(mark, True)

    def _substitute_placeholder(self, decision: Decision) -> None:
        keep_out_of_caches(self.context)
        self.context.modules.result_storage = None
        self.context.modules.storage = _Fixed(self._runtime.placeholder)
        fit_placeholder(self.context, decision)

    async def _store_results(self, result_storage: Any, metrics: Any, results: bytes) -> None:
        if self.moderation_status is not Status.APPROVED:
            return
        await super()._store_results(result_storage, metrics, results)

    async def _write_placeholder(self, results: Any, content_type: str) -> None:
        # A placeholder depends only on the transformation asked for: render it once.
        self._runtime.placeholders.put(self.placeholder_key, (results, content_type))
        await super()._write_results_to_client(results, content_type)

    def render_while_judged(self, overlap: Overlap) -> None:
        """Let Thumbor render the picture while it is judged; nothing leaves before approval."""
        self.overlap = overlap
        # On this request only: every other one finishes as Thumbor's own handler does.
        finish: Any = functools.partial(self._finish_when_judged, overlap)
        write: Any = functools.partial(self._write_when_judged, overlap)
        self.finish_request, self._write_results_to_client = finish, write

    async def _finish_when_judged(self, overlap: Overlap, result_from_storage: Any = None) -> None:
        del self.finish_request
        try:
            await super().finish_request(result_from_storage)
        except _Refused as refused:
            # Thumbor has encoded the picture and written nothing: the refusal answers.
            await self._refuse_rendered(overlap, refused.decision, refused.error)

    async def _write_when_judged(self, overlap: Overlap, results: Any, content_type: str) -> None:
        del self._write_results_to_client
        try:
            decision = await self._judgement_of(overlap)
        except UnsupportedImage as error:
            logger.warning(
                "original %s is not an image the plugin can judge: %s", overlap.key, error
            )
            raise _Refused(None, NOT_AN_IMAGE) from None
        except Exception as error:
            logger.error("judgement of %s failed: %s", overlap.key, error)
            raise _Refused(None, INTERNAL_ERROR) from None
        self.moderation_status = decision.status
        if decision.status is Status.APPROVED:
            # Results are tied to the main picture from its approval on, not before.
            provenance.of(self.context).note(overlap.key, decision.sha256)
            await overlap.written()
        elif refuses(self._runtime, decision):
            raise _Refused(decision)
        else:
            # Failing open: shown, kept out of every cache.
            keep_out_of_caches(self.context)
        await super()._write_results_to_client(results, content_type)

    async def _judgement_of(self, overlap: Overlap) -> Decision:
        judgement = overlap.judgement
        if judgement.done():
            return judgement.result()
        # Rendered before the decision came: how long the rendering waits for it.
        metrics = self.context.metrics
        metrics.incr("moderation.first_view.waiting")
        started = time.perf_counter()
        try:
            return await judgement
        finally:
            metrics.timing("moderation.first_view.wait", (time.perf_counter() - started) * 1000)

    async def _refuse_rendered(
        self, overlap: Overlap, decision: Decision | None, error: int
    ) -> None:
        """Answer a refusal in place of a picture Thumbor has already rendered."""
        if decision is None:
            self._error(error)
            return
        overlap.restore(self.context.request)
        keep_out_of_caches(self.context)
        if await self._refuse(decision):
            return
        # Rendered afresh from where the loader answered: new engines (the first
        # rendering's frames and sizes stay with the old ones), and only the filters that
        # run after loading (those before it have set up the request kept by the overlap).
        modules = self.context.modules
        modules.engine = type(modules.engine)(self.context)
        if modules.gif_engine is not None:
            modules.gif_engine = type(modules.gif_engine)(self.context)
        runner = self.context.filters_factory.create_instances(
            self.context, self.context.request.filters
        )
        runner.filter_instances.pop(PHASE_PRE_LOAD, None)
        self.filters_runner = runner
        await self.get_image()

    def _error(self, status: int, msg: str | None = None) -> None:
        rendered = self.rendered_placeholder
        if status != PLACEHOLDER_RENDERED or rendered is None:
            super()._error(status, msg)
            return
        # Thumbor's writer, which never waits: run to its end here.
        writing = ImagingHandler._write_results_to_client(self, *rendered)
        try:
            writing.send(None)
        except StopIteration:
            return
        writing.close()
        raise RuntimeError("writing a rendered placeholder waited for something")

    def finish(self, chunk: Any = None) -> Any:
        # Headers are added here rather than when the decision is read: measured, that is
        # cheaper for Tornado, and a response's status may change once (a stored original
        # found to differ from what its URL was known for).
        status = self.moderation_status
        if status is not None:
            # Into Tornado's headers directly: the values are this module's own constants,
            # which set_header would check for line breaks on every response.
            self._headers[STATUS_HEADER] = HEADER_VALUES[status]
            if status is not APPROVED:
                set_short_cache(self, self._runtime.settings.rejected_max_age)
            else:
                if self._runtime.settings.cache_tag_header:
                    # Every size of one picture shares it: a CDN purges them all in one call.
                    self.set_header(self._runtime.settings.cache_tag_header, cache_tag(self._key))
                if self._status_code == OK and _cacheable(self._headers.get("Cache-Control")):
                    self._served = (self.request.path, self._pictures())
        return _finish(self, chunk)

    def _pictures(self) -> list[str]:
        """The decision keys of the pictures in this response, the main one alone when
        it came from result storage (which recorded the others when it kept it)."""
        used: provenance.Provenance | None = getattr(self.context, "moderation_provenance", None)
        if used is None or not used.sources:
            return [self._key]
        return list(used.sources)


def refuses(runtime: Runtime, decision: Decision) -> bool:
    """Whether viewers get the rejected response: rejected, or pending and failing closed
    (or held back because its bytes are rejected elsewhere)."""
    if decision.status is Status.REJECTED:
        return True
    if decision.status is not Status.PENDING:
        return False
    # Bytes rejected under another URL are refused here too, whatever failing open says.
    return runtime.settings.on_error == "reject" or rules.is_contested(decision)


def apply_decision(
    context: Any, runtime: Runtime, decision: Decision, result: LoaderResult | None
) -> LoaderResult | None:
    """What to answer for a decision: the loaded result, a refusal, or None to go on."""
    note_status(context, decision.status)
    if decision.status is Status.APPROVED:
        return result
    keep_out_of_caches(context)
    if not refuses(runtime, decision):
        return result
    if runtime.settings.rejected_response == "forbidden":
        return LoaderResult(successful=False, error=FORBIDDEN)
    fit_placeholder(context, decision)
    handler = getattr(context, "request_handler", None)
    if isinstance(handler, ModerationHandler) and handler.placeholder_key is not None:
        rendered = runtime.placeholders.get(handler.placeholder_key)
        if rendered is not None:
            # Already rendered at this size: answered as it is, without decoding and
            # rendering the placeholder again (what a spike of new pictures, each answered
            # pending, would otherwise cost every one of them).
            handler.rendered_placeholder = rendered
            return LoaderResult(successful=False, error=PLACEHOLDER_RENDERED)
    return LoaderResult(buffer=runtime.placeholder)


def note_status(context: Any, status: Status) -> None:
    """Tell the gate, when it handles this request, which status to announce."""
    handler = getattr(context, "request_handler", None)
    if isinstance(handler, ModerationHandler):
        handler.moderation_status = status


def keep_out_of_caches(context: Any) -> None:
    """Neither the original nor the result of this request may be stored."""
    context.modules.storage = NoStorage(context)
    context.request.prevent_result_storage = True


def fit_placeholder(context: Any, decision: Decision) -> None:
    """Render the placeholder in the box the original would take at the requested size."""
    request = context.request
    request.smart = False
    if decision.width and decision.height:
        request.width, request.height = _original_box(
            request.width, request.height, decision.width, decision.height
        )
    handler = getattr(context, "request_handler", None)
    if isinstance(handler, ModerationHandler):
        handler.placeholder_key = _rendering(request, handler)
        # Only a placeholder's rendering is kept: approved responses skip this step.
        handler._write_results_to_client = handler._write_placeholder


def _original_box(
    width: int | str, height: int | str, original_width: int, original_height: int
) -> tuple[int, int]:
    """The requested size with `orig` and a missing side filled in from the original."""
    # Thumbor would fill them in from the placeholder's own size (4:3) instead.
    width = original_width if width == "orig" else int(width)
    height = original_height if height == "orig" else int(height)
    if not width and not height:
        return original_width, original_height
    # Thumbor's rounding (Engine.get_proportional_*), so the sizes agree to the pixel.
    if not height:
        return width, int(round(float(width) * original_height / original_width, 0))
    if not width:
        return int(round(float(height) * original_width / original_height, 0)), height
    return width, height


def _rendering(request: Any, handler: ModerationHandler) -> str:
    """Everything a rendered placeholder depends on: the transformation, and for meta
    (which names the picture and may be JSONP) the image URL and the callback."""
    headers = handler.request.headers
    callback = (
        handler.context.config.META_CALLBACK_NAME
        or handler.request.arguments.get("callback", [None])[0]
    )
    fields = (
        request.width,
        request.height,
        request.fit_in,
        request.full,
        request.adaptive,
        request.stretch,
        request.horizontal_flip,
        request.vertical_flip,
        request.halign,
        request.valign,
        request.trim,
        request.meta,
        request.debug,
        request.crop,
        request.filters,
        request.accepts_webp,
        headers.get("Accept", ""),
        # meta names the picture, and JSONP wraps it in the request's own callback.
        request.image_url if request.meta else None,
        callback if request.meta else None,
    )
    return repr(fields)


@functools.lru_cache(maxsize=64)
def _cacheable(cache_control: str | None) -> bool:
    """Whether a Cache-Control value lets a shared cache keep the response a while."""
    if cache_control is None:
        return False
    directives: dict[str, str] = {}
    for directive in cache_control.lower().split(","):
        name, _, value = directive.strip().partition("=")
        directives[name] = value.strip('" ')
    if "no-store" in directives or "private" in directives:
        return False
    age = directives.get("s-maxage", directives.get("max-age", ""))
    return age.isdigit() and int(age) > 0


def set_short_cache(handler: Any, max_age: int) -> None:
    """Cache headers for responses that are not an approved image."""
    handler.clear_header("Expires")
    if max_age > 0:
        handler.set_header("Cache-Control", f"max-age={max_age},public")
    else:
        handler.set_header("Cache-Control", "no-store")


class _Refused(Exception):
    """Raised out of Thumbor's finish_request when a rendered picture is not approved."""

    def __init__(self, decision: Decision | None, error: int = FORBIDDEN) -> None:
        super().__init__(error)
        self.decision = decision
        self.error = error


class _Fixed(NoStorage):  # type: ignore[misc]
    """Storage that holds only the placeholder and keeps nothing."""

    def __init__(self, placeholder: bytes) -> None:
        self._placeholder = placeholder

    async def get(self, path: str) -> bytes:
        return self._placeholder

    async def exists(self, path: str) -> bool:
        return True
