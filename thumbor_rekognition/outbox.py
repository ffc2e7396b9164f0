"""Webhooks, CDN purges and S3 deletions, delivered at least once from the store's outbox.

Nothing here runs on the request path: a decision change only adds items to the outbox
(one store write), and a thread in each Thumbor process delivers them. Items of one
picture are delivered in order; a failing one is retried with exponential backoff until
MODERATION_OUTBOX_GIVE_UP_SECONDS, then kept as abandoned and counted in the stats.

Webhook requests are signed: ``X-Moderation-Signature: sha256=<hex>`` is the
HMAC-SHA256, keyed with MODERATION_WEBHOOK_SECRET, of ``<timestamp>.<body>`` where the
timestamp is the ``X-Moderation-Timestamp`` header (Unix seconds).

Deletions of thumbor-aws objects (aws_caches) are tried at once by the purge that calls
for them; only the keys that failed come here, to be retried in the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from thumbor_rekognition import aws_caches, cdn, confidence, stores
from thumbor_rekognition.decision import Decision, Event

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

logger = logging.getLogger(__name__)

WEBHOOK = "webhook"
CDN_PREFIX = "cdn:"
S3_PREFIX = "s3:"
CLAIM_BATCH = 5
MAX_BACKOFF_SECONDS = 900.0


class DeliveryError(Exception):
    """A delivery failed; the item is retried."""


class Outbox:
    """Enqueues what a decision change calls for, and delivers it in a background thread."""

    def __init__(
        self,
        settings: Settings,
        store: stores.Store,
        buckets: Mapping[str, aws_caches.Bucket] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.purgers = cdn.load_purgers(settings)
        # thumbor-aws buckets by role, whose failed deletions are retried here.
        self.buckets = dict(buckets or {})
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.settings.webhook_url or self.purgers)

    # Enqueuing: blocking store writes, called from the store's thread.

    def decision_changed(
        self, previous: Decision | None, current: Decision | None, event: Event
    ) -> None:
        """Queue a webhook for a change, and purges when a served picture stops being served;
        both name the paths it was served at."""
        decision = current or previous
        if decision is None:
            return
        key = decision.key
        was_served = previous is not None and previous.status.value == "approved"
        stopped = was_served and (current is None or current.status.value != "approved")
        paths: list[str] = []
        if stopped and (self.settings.webhook_url or self.purgers):
            paths = cdn.purge_paths(key, stores.result_paths(self.store.results(key)))
        if self.settings.webhook_url:
            body = _webhook_body(decision, previous, current, event, paths)
            self.store.enqueue(WEBHOOK, key, json.dumps(body))
            self._wake.set()
        if self.purgers and stopped:
            self._enqueue_purges(key, paths, "rejected" if current else "forgotten")

    def purge(self, key: str, paths: list[str], reason: str) -> None:
        """Queue one purge per configured CDN of the paths recorded for key."""
        self._enqueue_purges(key, cdn.purge_paths(key, paths), reason)

    def _enqueue_purges(self, key: str, paths: list[str], reason: str) -> None:
        payload = json.dumps({"tag": cdn.cache_tag(key), "paths": paths, "reason": reason})
        for name in self.purgers:
            self.store.enqueue(CDN_PREFIX + name, key, payload)
        self._wake.set()

    def remove_objects(self, key: str, bucket: aws_caches.Bucket, keys: list[str]) -> None:
        """Queue a deletion of objects of key's picture that failed when first tried."""
        payload = json.dumps({"bucket": bucket.name, "keys": keys})
        self.store.enqueue(S3_PREFIX + bucket.role, key, payload)
        self._wake.set()

    # Delivering.

    def start(self) -> None:
        """Deliver in a daemon thread of this process."""
        if (self.enabled or self.buckets) and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="moderation-outbox", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.outbox_timeout * CLAIM_BATCH + 1)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                delivered = self.deliver_due()
            except stores.StoreUnavailable as error:
                logger.warning("outbox paused, store unavailable: %s", error)
                delivered = 0
            except Exception:
                logger.exception("outbox delivery loop failed")
                delivered = 0
            if not delivered:
                self._wake.wait(1.0)
                self._wake.clear()

    def deliver_due(self, limit: int = CLAIM_BATCH) -> int:
        """Deliver the items that are due now; how many were claimed."""
        now = time.time()
        # Long enough for every claimed item to time out once; a process that dies
        # holding a claim delays its items by no more than this.
        lease = self.settings.outbox_timeout * limit + 5
        items = self.store.claim(now, lease, limit)
        for item in items:
            self._deliver(item)
        return len(items)

    def _deliver(self, item: stores.OutboxItem) -> None:
        try:
            if item.topic == WEBHOOK:
                self._post_webhook(item)
            elif item.topic.startswith(CDN_PREFIX):
                self._purge(item)
            elif item.topic.startswith(S3_PREFIX):
                self._remove_objects(item)
            else:
                raise DeliveryError(f"unknown outbox topic {item.topic!r}")
        except (DeliveryError, cdn.PurgeError, aws_caches.DeleteError) as error:
            self._failed(item, str(error))
            return
        self.store.complete(item)

    def _failed(self, item: stores.OutboxItem, error: str) -> None:
        age = time.time() - item.created_at
        if age > self.settings.outbox_give_up:
            logger.error(
                "giving up %s for %s after %d attempts: %s",
                item.topic,
                item.key,
                item.attempts,
                error,
            )
            self.store.abandon(item, error)
            return
        # Exponential backoff with jitter: 1 s, 2 s, 4 s ... up to 15 minutes.
        delay = min(MAX_BACKOFF_SECONDS, 2.0 ** min(item.attempts - 1, 20))
        delay *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security
        logger.warning(
            "%s for %s failed (attempt %d), retry in %.0f s: %s",
            item.topic,
            item.key,
            item.attempts,
            delay,
            error,
        )
        self.store.reschedule(item, time.time() + delay, error)

    def _purge(self, item: stores.OutboxItem) -> None:
        name = item.topic[len(CDN_PREFIX) :]
        purger = self.purgers.get(name)
        if purger is None:
            raise DeliveryError(f"purger {name} is no longer configured")
        payload = json.loads(item.payload)
        purger.purge(str(payload["tag"]), item.key, [str(path) for path in payload["paths"]])

    def _remove_objects(self, item: stores.OutboxItem) -> None:
        role = item.topic[len(S3_PREFIX) :]
        bucket = self.buckets.get(role)
        if bucket is None:
            raise DeliveryError(f"the {role} is no longer thumbor-aws's")
        payload = json.loads(item.payload)
        # The bucket the objects were written to, with the credentials configured now.
        bucket.delete([str(key) for key in payload["keys"]], str(payload["bucket"]))

    def _post_webhook(self, item: stores.OutboxItem) -> None:
        url = self.settings.webhook_url
        if not url:
            raise DeliveryError("MODERATION_WEBHOOK_URL is no longer set")
        body = item.payload.encode("utf-8")
        event = str(json.loads(body).get("event", "decision.changed"))
        request = urllib.request.Request(  # noqa: S310 - the operator's own http(s) URL
            url, data=body, method="POST", headers=self.webhook_headers(body, item.id, event)
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.outbox_timeout) as reply:  # noqa: S310
                reply.read(65536)
        except urllib.error.HTTPError as error:
            raise DeliveryError(f"webhook answered HTTP {error.code}") from error
        except (urllib.error.URLError, OSError) as error:
            raise DeliveryError(f"webhook call failed: {error}") from error

    def webhook_headers(
        self,
        body: bytes,
        delivery: str,
        event: str = "decision.changed",
        timestamp: int | None = None,
    ) -> dict[str, str]:
        """Headers of a webhook call, signed when a secret is configured."""
        timestamp = int(time.time()) if timestamp is None else timestamp
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "thumbor-moderation",
            "X-Moderation-Event": event,
            "X-Moderation-Delivery": delivery,
            "X-Moderation-Timestamp": str(timestamp),
        }
        secret = self.settings.webhook_secret
        if secret is not None:
            headers["X-Moderation-Signature"] = "sha256=" + sign(secret.value, timestamp, body)
        return headers

    def counts(self) -> dict[str, Any]:
        """Waiting and abandoned items per topic, for the admin stats."""
        return self.store.outbox_counts()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 hex digest of '<timestamp>.<body>'."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _webhook_body(
    decision: Decision,
    previous: Decision | None,
    current: Decision | None,
    event: Event,
    paths: list[str],
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event": "decision.changed" if current else "decision.forgotten",
        "image_url": decision.url,
        "key": decision.key,
        "status": current.status.value if current else None,
        "previous_status": previous.status.value if previous else None,
        "source": current.source.value if current else None,
        "labels": [confidence.label_view(label) for label in decision.labels],
        "reasons": [confidence.reason_view(reason) for reason in decision.reasons],
        "backend": decision.backend,
        "model_version": decision.model_version,
        "project_version": decision.project_version,
        "duplicate_of": decision.duplicate_of,
        "similarity": decision.similarity,
        "content_hash": decision.sha256,
        "error": decision.error,
        "created_at": decision.created_at,
        "updated_at": current.updated_at if current else event.at,
        "actor": event.actor,
        "note": event.note,
        # The request paths a cache may still hold, when the picture stopped being served.
        "paths": paths,
    }
    return body
