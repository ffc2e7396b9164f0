"""POST {prefix}/check?url=: a site's upload backend asks for the judgement of a new
picture before saving it, and the first view of it is then a cached hit.

The body is the picture's bytes, and ``url`` the image URL Thumbor will be asked for
(as written, not URL-encoded); without a body the picture is fetched at that URL with
MODERATION_SOURCE_LOADER. The answer is the decision as ``GET {prefix}/image`` shows it:
200 once decided (approved, rejected, or pending for a human), 429 when the call rate
has no turn within MODERATION_TURN_WAIT_SECONDS (the picture is queued and judged in the
background), 503 when the backend or the store failed or the
budget ran out (pending each time, judged again when asked again). A body that is not a
picture is a 400 naming why, a body over MODERATION_CHECK_MAX_BODY_BYTES a 413, as on
the image route.

It takes MODERATION_ADMIN_TOKEN or MODERATION_CHECK_TOKEN, a token an upload backend can
hold without being able to approve, reject, purge or read anything: every other route
accepts the admin token only.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from typing import Any

from thumbor_rekognition import upload
from thumbor_rekognition.admin import ApiError, _AdminHandler
from thumbor_rekognition.caches import ThumborCaches
from thumbor_rekognition.config import Secret
from thumbor_rekognition.preparation import UnsupportedImage
from thumbor_rekognition.review import Review, decision_view
from thumbor_rekognition.runtime import Runtime

logger = logging.getLogger(__name__)

TOO_MANY_REQUESTS = 429
UNAVAILABLE = 503
# Seconds a client waits before asking again for a picture left pending.
RETRY_AFTER = "1"
# What a URL the source loader gave no picture for answers, by why.
FETCH_STATUS = {upload.REFUSED: 400, upload.NOT_FOUND: 404, upload.TIMEOUT: 504}


class CheckHandler(_AdminHandler):
    """POST {prefix}/check?url=: judge and store a picture before its first view."""

    def initialize(self, review: Review, runtime: Runtime, context: Any = None) -> None:
        super().initialize(review, runtime)
        self.thumbor_context = context

    def max_body(self) -> int:
        return self.runtime.settings.check_max_body

    def _authorised(self) -> bool:
        return super()._authorised() or _bearer(
            self.request.headers, self.runtime.settings.check_token
        )

    async def post(self) -> None:
        url = self.url_argument()
        if self._body_size > self.max_body():
            raise ApiError(413, "picture too large", max_bytes=self.max_body())
        data = b"".join(self._body)
        if not data and "Content-Type" in self.request.headers:
            # A picture was announced and none came (a stream read to its end before it
            # was sent, say): judging the URL's origin instead would answer another question.
            raise ApiError(
                400,
                "request body is empty; send the picture, or no body and no "
                "Content-Type to have it fetched at url",
            )
        arrived = time.monotonic() - self.request.request_time()
        deadline = arrived + self.runtime.settings.request_budget
        metrics = getattr(self.thumbor_context, "metrics", None)
        if not data:
            data = await self._fetched(url)
        try:
            decision = await upload.judge(self.runtime, url, data, metrics, deadline)
        except UnsupportedImage as error:
            raise ApiError(400, f"not a picture the plugin can judge: {error}") from None
        view = decision_view(decision)
        if not decision.needs_retry:
            self.write_json(view)
            return
        # Pending, to be judged again when asked again (a judgement still running when the
        # budget ended is stored when it lands, and answers the next check at once).
        self.set_header("Retry-After", RETRY_AFTER)
        busy = upload.is_busy(decision)
        self.write_json(view, TOO_MANY_REQUESTS if busy else UNAVAILABLE)

    async def _fetched(self, url: str) -> bytes:
        try:
            return await upload.load(self.runtime, self.thumbor_context, url)
        except upload.NotLoaded as error:
            status = FETCH_STATUS.get(error.kind, 502)
            raise ApiError(status, f"cannot fetch the picture at url: {error.reason}") from None


def _bearer(headers: Any, token: Secret | None) -> bool:
    """Whether the request carries this bearer token (compared in constant time)."""
    scheme, _, given = headers.get("Authorization", "").partition(" ")
    if token is None or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.value.encode())


def get_handlers(context: Any, runtime: Runtime) -> list[tuple[Any, ...]]:
    """The check route, when a token that may use it is configured."""
    settings = runtime.settings
    if settings.admin_token is None and settings.check_token is None:
        return []
    prefix = re.escape(settings.admin_prefix)
    arguments = {
        "review": Review(runtime, ThumborCaches(context)),
        "runtime": runtime,
        "context": context,
    }
    return [(rf"{prefix}/check", CheckHandler, arguments)]
