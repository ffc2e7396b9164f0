"""Whether this process can judge new pictures: the decision store, the backend, the
quarantine and the outbox, for load balancers and readiness probes.

Thumbor's own /healthcheck answers WORKING as long as the process serves HTTP; this
answers 503 when a picture no one has seen yet would stay pending: the decision store
cannot be reached, or the backend's last call failed recently. A quarantine or an outbox
in trouble is reported without failing the check: pictures are still judged, and what
they hold up (restoring an approved original, webhooks, CDN purges) is retried.
"""

from __future__ import annotations

import time
from typing import Any

from thumbor_rekognition import stores
from thumbor_rekognition.moderator import Moderator
from thumbor_rekognition.quarantine import QuarantineError

# How long after a failed backend call the backend counts as failing, when no call has
# succeeded since: long enough to span a few requests, short enough that a probe taking
# every node out for one outage puts them back soon after it ends.
BACKEND_FAILURE_WINDOW_SECONDS = 60.0
# A decision key no picture has: reading it costs one store round trip.
PROBE_KEY = "moderation-health-probe"
# A content hash no picture has: reading it costs one quarantine round trip.
PROBE_HASH = "0" * 64


async def health(moderator: Moderator) -> tuple[bool, dict[str, Any]]:
    """Whether new pictures can be judged, and the status of each part."""
    store = await _store(moderator)
    backend = _backend(moderator)
    parts = {
        "store": store,
        "backend": backend,
        "quarantine": await _quarantine(moderator),
        "outbox": await _outbox(moderator) if store["status"] == "ok" else _unknown(),
    }
    judging = store["status"] == "ok" and backend["status"] == "ok"
    degraded = any(part["status"] not in ("ok", "off") for part in parts.values())
    status = "down" if not judging else "degraded" if degraded else "ok"
    return judging, {"status": status, "can_judge_new_pictures": judging, **parts}


async def _store(moderator: Moderator) -> dict[str, Any]:
    name = type(moderator.store).__module__
    started = time.perf_counter()
    try:
        await moderator.run_store(moderator.store.get, PROBE_KEY)
    except stores.StoreUnavailable as error:
        return {"status": "down", "module": name, "error": str(error)}
    milliseconds = round((time.perf_counter() - started) * 1000, 1)
    return {"status": "ok", "module": name, "latency_ms": milliseconds}


def _backend(moderator: Moderator) -> dict[str, Any]:
    answer: dict[str, Any] = {"name": moderator.backend.name, "calls": moderator.backend_calls}
    failure = moderator.backend_failure
    if failure is not None and time.time() - failure[0] < BACKEND_FAILURE_WINDOW_SECONDS:
        return {"status": "failing", **answer, "error": failure[1], "failed_at": failure[0]}
    return {"status": "ok", **answer}


async def _quarantine(moderator: Moderator) -> dict[str, Any]:
    quarantine = moderator.quarantine
    if quarantine is None:
        return {"status": "off"}
    name = type(quarantine).__module__
    try:
        await moderator.run_blocking(quarantine.get, PROBE_HASH)
    except QuarantineError as error:
        return {"status": "down", "module": name, "error": str(error)}
    return {"status": "ok", "module": name}


async def _outbox(moderator: Moderator) -> dict[str, Any]:
    outbox = moderator.outbox
    if outbox is None or not (outbox.enabled or outbox.buckets):
        return {"status": "off"}
    try:
        counts: dict[str, int] = await moderator.run_store(moderator.store.outbox_counts)
    except stores.StoreUnavailable as error:
        return {"status": "down", "error": str(error)}
    waiting = sum(count for name, count in counts.items() if name.endswith(".pending"))
    abandoned = sum(count for name, count in counts.items() if name.endswith(".abandoned"))
    # Items given up on are changes no webhook or CDN heard of: someone should look.
    status = "ok" if not abandoned else "degraded"
    return {"status": status, "waiting": waiting, "abandoned": abandoned}


def _unknown() -> dict[str, Any]:
    return {"status": "unknown", "error": "kept in the decision store, which is down"}
