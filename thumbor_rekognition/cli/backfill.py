"""`backfill`: moderate a list of image URLs ahead of traffic."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from thumbor.loaders import LoaderResult
from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

from thumbor_rekognition.caches import storage_key
from thumbor_rekognition.cli.environment import (
    EXIT_FAILED,
    EXIT_OK,
    Environment,
    UsageError,
    read_file,
)
from thumbor_rekognition.cli.fingerprints import run_fingerprints
from thumbor_rekognition.decision import (
    Status,
)
from thumbor_rekognition.loader import as_loader_result
from thumbor_rekognition.preparation import UnsupportedImage
from thumbor_rekognition.urls import key_of, normalise

logger = logging.getLogger(__name__)


DEFAULT_CONCURRENCY = 8
# With REKOGNITION_MAX_CALLS_PER_SECOND, how long one URL of a backfill may wait for its
# turn to call: no request waits on a backfill, so it queues instead of giving up.
BACKFILL_TURN_WAIT_SECONDS = 3600.0

# Outcomes of backfill that are decisions; anything else is a failure.
DECIDED = tuple(status.value for status in Status)
BACKEND_ERROR = "backend error"
LOAD_FAILURES = {
    LoaderResult.ERROR_NOT_FOUND: "not found",
    LoaderResult.ERROR_TIMEOUT: "timeout",
    LoaderResult.ERROR_UPSTREAM: "upstream error",
}


@dataclass
class Backfill:
    """Outcomes of a backfill run, by URL."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    duplicates: int = 0
    backend_calls: int = 0

    @property
    def decided(self) -> bool:
        return not self.failures


def run_backfill(environment: Environment, arguments: argparse.Namespace) -> int:
    """Moderate a list of image URLs ahead of traffic."""
    if arguments.fingerprints:
        if arguments.urls_file:
            raise UsageError("backfill --fingerprints takes no URLS_FILE: it reads the store")
        return run_fingerprints(environment)
    if not arguments.urls_file:
        raise UsageError("backfill needs a URLS_FILE (or --fingerprints)")
    urls, duplicates = read_urls(arguments.urls_file)
    result = asyncio.run(_backfill(environment, urls, arguments.concurrency))
    result.duplicates = duplicates
    for url, outcome in result.failures:
        print(f"{outcome}: {url}", file=sys.stderr)
    print(
        f"urls: {len(urls)}"
        + (f" (repeated, skipped: {result.duplicates})" if result.duplicates else "")
    )
    for outcome in (*DECIDED, BACKEND_ERROR):
        print(f"{outcome}: {result.outcomes[outcome]}")
    for outcome, count in sorted(result.outcomes.items()):
        if outcome not in DECIDED and outcome != BACKEND_ERROR:
            print(f"{outcome}: {count}")
    print(f"backend calls: {result.backend_calls}")
    return EXIT_OK if result.decided else EXIT_FAILED


def read_urls(path: str) -> tuple[list[str], int]:
    """Image URLs of a file, one a line, without blanks, comments and repeats of a key."""
    try:
        text = sys.stdin.read() if path == "-" else read_file(path).decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{path} is not UTF-8 text: {error}") from None
    urls: list[str] = []
    keys: set[str] = set()
    duplicates = 0
    for line in text.splitlines():
        url = line.strip()
        if not url or url.startswith("#"):
            continue
        key = key_of(url)
        if key in keys:
            duplicates += 1
            continue
        keys.add(key)
        urls.append(url)
    return urls, duplicates


async def _backfill(environment: Environment, urls: list[str], concurrency: int) -> Backfill:
    moderator = environment.runtime.moderator
    calls_before = moderator.backend_calls
    result = Backfill()
    semaphore = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()
    with tqdm(total=len(urls), desc="backfill", unit="url", file=sys.stderr, disable=None) as bar:
        shown = _CallRateShown(environment, calls_before)

        async def one(url: str) -> None:
            try:
                outcome = await _moderate_url(environment, url)
            except Exception:
                logger.exception("moderating %s failed", url)
                outcome = "error"
            finally:
                semaphore.release()
            result.outcomes[outcome] += 1
            if outcome not in DECIDED:
                result.failures.append((url, outcome))
            shown.update(bar)
            bar.update(1)

        for url in urls:
            # A task is started only when a slot is free, so a file of a million URLs
            # never holds a million coroutines.
            await semaphore.acquire()
            task = asyncio.create_task(one(url))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)
    result.backend_calls = moderator.backend_calls - calls_before
    return result


class _CallRateShown:
    """The backend calls per second of a backfill, and the cluster's limit, on its bar."""

    def __init__(self, environment: Environment, calls_before: int) -> None:
        self.moderator = environment.runtime.moderator
        self.call_rate = getattr(self.moderator.backend, "call_rate", None)
        self.calls_before = calls_before
        self.started = time.monotonic()
        self.shown = 0.0

    def update(self, bar: Any) -> None:
        now = time.monotonic()
        if now - self.shown < 0.5:
            return
        self.shown = now
        calls = self.moderator.backend_calls - self.calls_before
        text = f"calls {calls / max(now - self.started, 0.001):.2f}/s"
        if self.call_rate is not None:
            limit, current = self.call_rate.limit, self.call_rate.current()
            text += f" (limit {limit:g}/s" + (
                f", lowered to {current:.2g}/s by throttling)" if current < limit else ")"
            )
        bar.set_postfix_str(text, refresh=False)


async def _moderate_url(environment: Environment, url: str) -> str:
    """Load one original as Thumbor's loader would and moderate it; the outcome."""
    runtime = environment.runtime
    quoted = storage_key(url)
    context = environment.request_context(quoted)
    loader = runtime.source_loader
    validate = getattr(loader, "validate", None)
    if callable(validate) and not validate(context, quoted):
        return "not allowed by the loader"
    try:
        result = await loader.load(context, quoted)
    except Exception as error:
        # A loader may raise anything (sockets, TLS, its own bugs): one URL fails.
        logger.warning("loading %s failed: %s: %s", url, type(error).__name__, error)
        return "load failed"
    result = as_loader_result(result)
    if not result.successful:
        return LOAD_FAILURES.get(result.error, "load failed")
    if not result.buffer:
        return "empty"
    deadline = None
    if runtime.settings.rekognition_max_calls_per_second:
        deadline = time.monotonic() + BACKFILL_TURN_WAIT_SECONDS
    try:
        decision = await runtime.moderator.moderate(
            normalise(quoted), unquote(quoted), result.buffer, context.metrics, deadline
        )
    except UnsupportedImage as error:
        logger.info("%s is not an image: %s", url, error)
        return "not an image"
    return BACKEND_ERROR if decision.needs_retry else decision.status.value
