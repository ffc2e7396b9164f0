"""The admin API and review page, under MODERATION_ADMIN_PREFIX, behind a bearer token.

Routes exist only when MODERATION_ADMIN_TOKEN is set; without it every path under the
prefix answers 404 saying so, except {prefix}/health, which needs no token (it is for
load balancers and readiness probes, and says nothing about any picture). Every route
that reads or changes data needs ``Authorization: Bearer <token>`` (compared in constant
time); the review page's empty shell loads without it and asks for the token once,
keeping it in the tab's session storage and sending it as a header, never in a URL.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import time
from importlib import resources
from typing import Any

import tornado.template
import tornado.web

from thumbor_rekognition import health, review_queue, stores
from thumbor_rekognition.caches import ThumborCaches
from thumbor_rekognition.decision import Status
from thumbor_rekognition.review import BINDS_TO_FIRST_FETCH, NeverFetched, Review, decision_view
from thumbor_rekognition.runtime import Runtime

logger = logging.getLogger(__name__)

ACTOR = "admin-api"
# One bulk decision names at most this many URLs; a review page shows at most as many.
BULK_LIMIT = 100
MAX_QUEUE_PAGE = 100
_FILTERS = ("source", "category", "since", "until", "q")
# What a manual decision may set.
DECIDED = {status.value: status for status in (Status.APPROVED, Status.REJECTED)}
_templates = tornado.template.Loader(
    str(resources.files("thumbor_rekognition").joinpath("assets")), autoescape="xhtml_escape"
)


class ApiError(Exception):
    """An error answered as JSON with an HTTP status."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


STORE_DOWN = ApiError(503, "decision store unavailable, try again shortly")


@tornado.web.stream_request_body
class _AdminHandler(tornado.web.RequestHandler):
    """Token check, bounded bodies, JSON answers, and errors that never show a traceback."""

    requires_token = True

    def initialize(self, review: Review, runtime: Runtime) -> None:
        self.review = review
        self.runtime = runtime

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")

    def prepare(self) -> None:
        # Streamed, so that neither an unauthorised nor an oversized body is ever read whole.
        self._body: list[bytes] = []
        self._body_size = 0
        if self.requires_token and not self._authorised():
            raise ApiError(401, "missing or wrong bearer token")
        declared = self.request.headers.get("Content-Length", "0")
        if not declared.isdigit() or int(declared) > self.max_body():
            raise ApiError(413, "request body too large")

    def data_received(self, chunk: bytes) -> None:
        # Raising here would drop the connection unanswered: count, discard, answer later.
        self._body_size += len(chunk)
        if self._body_size <= self.max_body():
            self._body.append(chunk)

    def max_body(self) -> int:
        """The largest body this route reads."""
        return self.runtime.settings.admin_max_body

    def _authorised(self) -> bool:
        token = self.runtime.settings.admin_token
        header = self.request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if token is None or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), token.value.encode())

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(data, separators=(",", ":")))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if status_code == 401:
            # send_error() clears headers set earlier; every 401 names its scheme.
            self.set_header("WWW-Authenticate", 'Bearer realm="moderation"')
        if status_code == 503:
            self.set_header("Retry-After", "5")
        if isinstance(error, ApiError):
            self.write_json({"error": error.message, **error.details}, error.status)
            return
        if isinstance(error, tornado.web.HTTPError):
            message = error.log_message or self._reason
            self.write_json({"error": message}, status_code)
            return
        self.write_json({"error": "internal error, see the server log"}, 500)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, stores.StoreUnavailable):
            kwargs["exc_info"] = (ApiError, STORE_DOWN, None)
            error = STORE_DOWN
        if isinstance(error, ApiError):
            status_code = error.status
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, stores.StoreUnavailable):
            logger.error("admin %s %s -> 503: %s", self.request.method, self.request.path, value)
            return
        if isinstance(value, ApiError):
            # The token must never reach a log line: only the status and the reason do.
            logger.info(
                "admin %s %s -> %d %s",
                self.request.method,
                self.request.path,
                value.status,
                value.message,
            )
            return
        super().log_exception(typ, value, tb)

    def url_argument(self) -> str:
        url = self.get_query_argument("url", "").strip()
        if not url:
            raise ApiError(400, "query argument 'url' is required")
        if len(url) > 4096:
            raise ApiError(400, "query argument 'url' is too long")
        return url

    def json_body(self) -> dict[str, Any]:
        if self._body_size > self.max_body():
            raise ApiError(413, "request body too large")
        try:
            body = json.loads(b"".join(self._body) or b"{}")
        except (ValueError, RecursionError):
            # JSONDecodeError, bad UTF-8, integers past Python's digit limit, deep nesting.
            raise ApiError(400, "request body is not JSON this API can read") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body


class ImagesHandler(_AdminHandler):
    """GET {prefix}/images?status=&limit=&cursor=: decisions, a page at a time; with
    queue= (and source, category, since, until, q, order), a review queue, filtered.
    POST {prefix}/images: one decision for many URLs."""

    async def get(self) -> None:
        limit = _integer(self.get_query_argument("limit", "100"), "limit")
        cursor = self.get_query_argument("cursor", "") or None
        queue = self.get_query_argument("queue", "")
        if not queue:
            status = _status(self.get_query_argument("status", ""), allow_empty=True)
            decisions, next_cursor = await self.review.page(status, limit, cursor)
            self.write_json(
                {"images": [decision_view(d) for d in decisions], "next_cursor": next_cursor}
            )
            return
        if queue not in review_queue.QUEUES:
            raise ApiError(400, f"queue must be one of: {', '.join(review_queue.QUEUES)}")
        order = self.get_query_argument("order", "oldest" if queue == "pending" else "key")
        if order not in ("oldest", "key"):
            raise ApiError(400, "order must be 'oldest' or 'key'")
        arguments = {name: self.get_query_argument(name, "") for name in _FILTERS}
        try:
            chosen = review_queue.filters(arguments)
            page = await self.review.queue(
                queue, chosen, min(limit, MAX_QUEUE_PAGE), cursor, order == "oldest"
            )
        except review_queue.BadFilter as error:
            raise ApiError(400, str(error)) from None
        self.write_json(
            {
                "images": [decision_view(d) for d in page.decisions],
                "next_cursor": page.next_cursor,
                "order": page.order,
                "scanned": page.scanned,
                "counts": await self.review.queue_counts(),
            }
        )

    async def post(self) -> None:
        body = self.json_body()
        urls = body.get("urls")
        if not isinstance(urls, list) or not urls:
            raise ApiError(400, "urls must be a non-empty list of image URLs")
        if len(urls) > BULK_LIMIT:
            raise ApiError(400, f"at most {BULK_LIMIT} urls in one request")
        if not all(isinstance(url, str) and url.strip() and len(url) <= 4096 for url in urls):
            raise ApiError(400, "every url must be a non-empty string of at most 4096 characters")
        status, note, actor = _decision_fields(body)
        results = []
        saved_at = time.monotonic()
        for url in dict.fromkeys(url.strip() for url in urls):
            results.append(await self._decide_one(url, status, note, actor))
        await self.review.settled(saved_at)
        failed = sum(1 for result in results if not result["ok"])
        self.write_json({"results": results, "decided": len(results) - failed, "failed": failed})

    async def _decide_one(self, url: str, status: Status, note: str, actor: str) -> dict[str, Any]:
        """One URL of a bulk decision, through the same rules as PUT /image."""
        try:
            decided = await self.review.decide(url, status, note, actor, settle=False)
        except NeverFetched as error:
            return {
                "url": url,
                "ok": False,
                "code": 404,
                "error": "no request has fetched this URL (a typo?)",
                "nearest": error.nearest,
            }
        except stores.StoreUnavailable:
            return {"url": url, "ok": False, "code": 503, "error": STORE_DOWN.message}
        return {"url": url, "ok": True, "status": status.value, "updated": len(decided)}


class ImageHandler(_AdminHandler):
    """GET, PUT and DELETE {prefix}/image?url=: one decision."""

    async def get(self) -> None:
        found = await self.review.show(self.url_argument())
        if found is None:
            raise ApiError(404, "no decision for this image")
        self.write_json(decision_view(*found))

    async def put(self) -> None:
        url = self.url_argument()
        body = self.json_body()
        status, note, actor = _decision_fields(body)
        unseen = body.get("unseen", False)
        if not isinstance(unseen, bool):
            raise ApiError(400, "unseen must be true or false")
        try:
            decided = await self.review.decide(url, status, note, actor, unseen)
        except NeverFetched as error:
            raise ApiError(
                404,
                "no request has fetched this URL (a typo?); to decide before its first "
                'fetch, send "unseen": true: the decision binds to the bytes of that fetch',
                nearest=error.nearest,
            ) from None
        answer: dict[str, Any] = {"updated": [decision_view(d) for d in decided]}
        # Kept without bytes: the first fetch of its URL binds it.
        answer["unseen"] = any(not decision.sha256 for decision in decided)
        if answer["unseen"]:
            answer["message"] = BINDS_TO_FIRST_FETCH
        self.write_json(answer)

    async def delete(self) -> None:
        if not await self.review.forget(self.url_argument(), ACTOR):
            raise ApiError(404, "no decision for this image")
        self.set_status(204)
        self.finish()


class PurgeHandler(_AdminHandler):
    """POST {prefix}/purge?url=: drop the original from STORAGE and its results."""

    async def post(self) -> None:
        purged = await self.review.purge(self.url_argument())
        self.write_json(purged.to_dict())


class OriginalHandler(_AdminHandler):
    """GET {prefix}/original?url=: the quarantined (or stored) original, for reviewers."""

    async def get(self) -> None:
        data = await self.review.original(self.url_argument())
        if data is None:
            raise ApiError(404, "no original kept for this image")
        self.set_header("Content-Type", _mime(data))
        # A reviewer's browser must render it as an image, never as a page.
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        self.set_header("Content-Disposition", "inline")
        self.finish(data)


class StatsHandler(_AdminHandler):
    """GET {prefix}/stats: counts by status and source, backend calls."""

    async def get(self) -> None:
        self.write_json(await self.review.stats())


class HealthHandler(_AdminHandler):
    """GET and HEAD {prefix}/health, without a token: 200 while new pictures can be judged,
    503 when they cannot, with the status of the store, backend, quarantine and outbox."""

    requires_token = False

    async def get(self) -> None:
        judging, report = await health.health(self.runtime.moderator)
        self.write_json(report, 200 if judging else 503)

    async def head(self) -> None:
        judging, _ = await health.health(self.runtime.moderator)
        self.set_status(200 if judging else 503)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish()


class PageHandler(_AdminHandler):
    """GET {prefix}/: the review page; it reads everything through the API, with the token."""

    requires_token = False

    async def get(self) -> None:
        # Only the page's own script runs: escaping is not the only defence against markup
        # in image URLs or labels.
        nonce = secrets.token_urlsafe(16)
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
            f"script-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'",
        )
        self.set_header("X-Frame-Options", "DENY")
        settings = self.runtime.settings
        html = _templates.load("review.html").generate(
            prefix=settings.admin_prefix,
            nonce=nonce,
            blur_approved=settings.review_blur_approved,
            bulk_limit=BULK_LIMIT,
            page_size=MAX_QUEUE_PAGE,
        )
        self.finish(html)


class DisabledHandler(_AdminHandler):
    """Any path under the prefix while no token is set: says which key turns the API on."""

    requires_token = False

    def prepare(self) -> None:
        # Else the gate's route takes the path and Thumbor answers an empty 400.
        raise ApiError(404, DISABLED)


DISABLED = (
    "the admin API is off: set MODERATION_ADMIN_TOKEN to turn it on "
    "(the thumbor-moderation command works without it)"
)


def _decision_fields(body: dict[str, Any]) -> tuple[Status, str, str]:
    """The status, note and actor of a manual decision's body, or ApiError 400."""
    given = body.get("status")
    status = DECIDED.get(given) if isinstance(given, str) else None
    if status is None:
        raise ApiError(400, "status must be 'approved' or 'rejected'")
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > 2000:
        raise ApiError(400, "note must be a string of at most 2000 characters")
    actor = body.get("actor", ACTOR)
    if not isinstance(actor, str) or not actor or len(actor) > 200:
        raise ApiError(400, "actor must be a non-empty string of at most 200 characters")
    return status, note, actor


def _status(value: str, allow_empty: bool) -> Status | None:
    if not value and allow_empty:
        return None
    try:
        return Status(value)
    except ValueError:
        raise ApiError(400, "status must be one of: approved, rejected, pending") from None


def _integer(value: str, name: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", value):
        raise ApiError(400, f"{name} must be a positive integer")
    return max(1, int(value))


def _mime(data: bytes) -> str:
    signatures = {
        b"\xff\xd8\xff": "image/jpeg",
        b"\x89PNG": "image/png",
        b"GIF8": "image/gif",
        b"RIFF": "image/webp",
    }
    for signature, mime in signatures.items():
        if data.startswith(signature):
            return mime
    return "application/octet-stream"


def get_handlers(context: Any, runtime: Runtime) -> list[tuple[Any, ...]]:
    """The admin routes, or one that says they are off when no token is configured."""
    settings = runtime.settings
    prefix = re.escape(settings.admin_prefix)
    arguments = {"review": Review(runtime, ThumborCaches(context)), "runtime": runtime}
    checks = (rf"{prefix}/health", HealthHandler, arguments)
    if settings.admin_token is None:
        logger.warning("%s/: %s", settings.admin_prefix, DISABLED)
        return [checks, (rf"{prefix}(?:/.*)?", DisabledHandler, arguments)]
    return [
        checks,
        (rf"{prefix}/?", PageHandler, arguments),
        (rf"{prefix}/images", ImagesHandler, arguments),
        (rf"{prefix}/image", ImageHandler, arguments),
        (rf"{prefix}/purge", PurgeHandler, arguments),
        (rf"{prefix}/original", OriginalHandler, arguments),
        (rf"{prefix}/stats", StatsHandler, arguments),
    ]
