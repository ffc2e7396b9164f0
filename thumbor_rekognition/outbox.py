"""Webhooks, CDN purges and S3 deletions, delivered at least once from the store's outbox.

Nothing here runs on the request path: a decision change adds its items to the outbox in
the same atomic store write as the change itself (the store calls ``Outbox.entries``), so
a change is saved and announced, or neither. Each Thumbor process delivers with a thread
per destination (the webhook, each CDN, each thumbor-aws bucket), so that one slow
receiver holds up only its own items; a thread delivers the items it claims at once,
each the next of its own picture. Items of one picture are delivered in order per
destination; a failing one is retried with exponential backoff until
MODERATION_OUTBOX_GIVE_UP_SECONDS, then kept as abandoned and counted in the stats.

Webhook requests are signed: ``X-Moderation-Signature: sha256=<hex>`` is the
HMAC-SHA256, keyed with MODERATION_WEBHOOK_SECRET, of ``<timestamp>.<body>`` where the
timestamp is the ``X-Moderation-Timestamp`` header (Unix seconds).

Deletions of thumbor-aws objects (aws_caches) are tried at once by the purge that calls
for them; only the keys that failed come here, to be retried in the same way.
"""

from __future__ import annotations

import concurrent.futures
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
# How often each process looks for items of topics it has no thread for.
OTHERS_SECONDS = 10.0


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
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        # A delivering thread per destination (topic), each woken by its own event.
        self._wakes: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        # Every decision change this store writes carries its entries, in the same write.
        store.announcer = self.entries

    @property
    def enabled(self) -> bool:
        return bool(self.settings.webhook_url or self.purgers)

    # Enqueuing: what a decision change calls for is written by the store with the change
    # (Store.announcer); the rest are blocking store writes, from the store's thread.

    def entries(
        self,
        previous: Decision | None,
        current: Decision | None,
        event: Event,
        recorded: list[str],
    ) -> list[tuple[str, str]]:
        """The outbox entries of a change: a webhook, and purges when a served picture
        stops being served; both name the paths it was served at."""
        decision = current or previous
        if decision is None or _unchanged(previous, current):
            return []
        key = decision.key
        was_served = previous is not None and previous.status.value == "approved"
        stopped = was_served and (current is None or current.status.value != "approved")
        paths = cdn.purge_paths(key, stores.result_paths(recorded)) if stopped else []
        entries: list[tuple[str, str]] = []
        if self.settings.webhook_url:
            body = _webhook_body(decision, previous, current, event, paths)
            entries.append((WEBHOOK, json.dumps(body)))
        if stopped:
            entries += self._purges(key, paths, "rejected" if current else "forgotten")
        return entries

    def wake(self) -> None:
        """Look for due items now rather than at the next poll."""
        for wake in list(self._wakes.values()):
            wake.set()

    def purge(self, key: str, paths: list[str], reason: str) -> None:
        """Queue one purge per configured CDN of the paths recorded for key."""
        self._enqueue_purges(key, cdn.purge_paths(key, paths), reason)

    def _enqueue_purges(self, key: str, paths: list[str], reason: str) -> None:
        for topic, payload in self._purges(key, paths, reason):
            self.store.enqueue(topic, key, payload)
        self.wake()

    def _purges(self, key: str, paths: list[str], reason: str) -> list[tuple[str, str]]:
        payload = json.dumps({"tag": cdn.cache_tag(key), "paths": paths, "reason": reason})
        return [(CDN_PREFIX + name, payload) for name in self.purgers]

    def remove_objects(self, key: str, bucket: aws_caches.Bucket, keys: list[str]) -> None:
        """Queue a deletion of objects of key's picture that failed when first tried."""
        payload = json.dumps({"bucket": bucket.name, "keys": keys})
        self.store.enqueue(S3_PREFIX + bucket.role, key, payload)
        self.wake()

    # Delivering.

    def destinations(self) -> list[str]:
        """The topics delivered to: the webhook, each CDN, each thumbor-aws bucket."""
        topics = [WEBHOOK] if self.settings.webhook_url else []
        topics += [CDN_PREFIX + name for name in self.purgers]
        return topics + [S3_PREFIX + role for role in self.buckets]

    def start(self) -> None:
        """Deliver from daemon threads of this process: one per destination, so that a
        slow or failing one holds up only its own items."""
        if self._threads or not self.destinations():
            return
        for topic in self.destinations():
            self._start_worker(topic)
        # Items of topics no longer configured are tried (and given up) in the same way.
        self._threads.append(
            threading.Thread(target=self._look_for_others, name="moderation-outbox", daemon=True)
        )
        self._threads[-1].start()

    def _start_worker(self, topic: str) -> None:
        with self._lock:
            if topic in self._wakes:
                return
            self._wakes[topic] = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(topic,), name=f"moderation-outbox-{topic}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self.wake()
        for thread in list(self._threads):
            thread.join(timeout=self.settings.outbox_timeout + 1)

    def _look_for_others(self) -> None:
        while not self._stopped.wait(OTHERS_SECONDS):
            try:
                counts = self.store.outbox_counts()
            except stores.StoreUnavailable:
                continue
            except Exception:
                logger.exception("outbox counts failed")
                continue
            for name, count in counts.items():
                topic, _, state = name.rpartition(".")
                if state == "pending" and count > 0:
                    self._start_worker(topic)

    def _run(self, topic: str) -> None:
        wake = self._wakes[topic]
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=CLAIM_BATCH, thread_name_prefix=f"moderation-outbox-{topic}"
        ) as pool:
            while not self._stopped.is_set():
                try:
                    delivered = self.deliver_due(topic=topic, pool=pool)
                except stores.StoreUnavailable as error:
                    logger.warning("outbox paused, store unavailable: %s", error)
                    delivered = 0
                except Exception:
                    logger.exception("outbox delivery loop failed")
                    delivered = 0
                if not delivered:
                    wake.wait(1.0)
                    wake.clear()

    def deliver_due(
        self,
        limit: int = CLAIM_BATCH,
        topic: str | None = None,
        pool: concurrent.futures.Executor | None = None,
    ) -> int:
        """Deliver the items (of a topic, or of any) that are due now, at once when a pool
        is given: each is the next of its own picture, so order per picture holds.
        Returns how many were claimed."""
        now = time.time()
        # Long enough for every claimed item to time out once; a process that dies
        # holding a claim delays its items by no more than this.
        lease = self.settings.outbox_timeout * limit + 5
        items = self.store.claim(now, lease, limit, topic)
        if pool is None or len(items) < 2:
            for item in items:
                self._deliver(item)
        else:
            for future in [pool.submit(self._deliver, item) for item in items]:
                future.result()
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


def _unchanged(previous: Decision | None, current: Decision | None) -> bool:
    """A save that changed nothing a receiver or a CDN is told about."""
    return (
        previous is not None
        and current is not None
        and (previous.status, previous.source, previous.sha256)
        == (current.status, current.source, current.sha256)
    )


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
