"""``thumbor-moderation``: check a file, list, inspect, override, re-evaluate and backfill,
and find the rejected pictures nearest to one.

Every command reads the same thumbor.conf as the Thumbor servers it administers and
goes through the same pieces they use (the runtime's moderator, the decision store, the
quarantine, Thumbor's STORAGE and RESULT_STORAGE), so that what it changes is what the
servers enforce, within MODERATION_CACHE_TTL_SECONDS.

Exit codes: 0 done, 1 the operation failed (an unknown URL, an image that could not be
judged), 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

from derpconf.config import ConfigurationError as DerpConfigurationError
from thumbor.config import Config
from thumbor.context import Context, RequestParameters, ServerParameters
from thumbor.importer import Importer
from thumbor.loaders import LoaderResult
from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

import thumbor_rekognition
from thumbor_rekognition.backends import BackendError
from thumbor_rekognition.caches import ThumborCaches, storage_key
from thumbor_rekognition.config import (  # also defines the plugin's keys
    ConfigurationError,
    check_backend_extra,
    unknown_keys,
)
from thumbor_rekognition.decision import (
    ContentType,
    Decision,
    Event,
    Label,
    Reason,
    Source,
    Status,
)
from thumbor_rekognition.duplicates import Resemblance
from thumbor_rekognition.fingerprint import Print
from thumbor_rekognition.generations import Judged
from thumbor_rekognition.loader import as_loader_result
from thumbor_rekognition.moderator import sha256_hex
from thumbor_rekognition.preparation import UnsupportedImage
from thumbor_rekognition.quarantine import QuarantineError
from thumbor_rekognition.review import MAX_PAGE, Review, decision_view
from thumbor_rekognition.runtime import Runtime, runtime_for
from thumbor_rekognition.stores import StoreUnavailable
from thumbor_rekognition.urls import key_of, normalise

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

CONF_NAME = "thumbor.conf"
REEVALUATE_ACTOR = "cli:reevaluate"
DEFAULT_CONCURRENCY = 8
# With REKOGNITION_MAX_CALLS_PER_SECOND, how long one URL of a backfill may wait for its
# turn to call: no request waits on a backfill, so it queues instead of giving up.
BACKFILL_TURN_WAIT_SECONDS = 3600.0

# `similar`: how far from a picture to look, and how many pictures to list.
SIMILAR_MINIMUM = 0.8
SIMILAR_FLOOR = 0.75
SIMILAR_LIMIT = 10
PYCURL_ADVICE = "pycurl usage is advised"

# Outcomes of backfill that are decisions; anything else is a failure.
DECIDED = tuple(status.value for status in Status)
BACKEND_ERROR = "backend error"
LOAD_FAILURES = {
    LoaderResult.ERROR_NOT_FOUND: "not found",
    LoaderResult.ERROR_TIMEOUT: "timeout",
    LoaderResult.ERROR_UPSTREAM: "upstream error",
}


class Failure(Exception):
    """An operation that did not succeed: its message is printed, the exit code is 1."""


class UsageError(Exception):
    """A command line that cannot be acted on: its message is printed, the exit code is 2."""


def conf_lookup_paths() -> list[str]:
    """Where thumbor.conf is looked for without --conf, as Thumbor itself does."""
    return [os.curdir, os.path.expanduser("~"), "/etc/"]


class Environment:
    """One Thumbor configuration, as the plugin's servers see it."""

    def __init__(self, conf: str | None) -> None:
        self.config = _load_config(conf)
        self.importer = Importer(self.config)
        try:
            self.importer.import_modules()
        except (ImportError, AttributeError, DerpConfigurationError) as error:
            raise ConfigurationError(f"Thumbor cannot import its modules: {error}") from None
        server = ServerParameters(
            port=0,
            ip="127.0.0.1",
            config_path=getattr(self.config, "config_file", None),
            keyfile=None,
            log_level="warning",
            app_class="thumbor.app.ThumborServiceApp",
        )
        server.security_key = self.config.SECURITY_KEY
        self.context = Context(server=server, config=self.config, importer=self.importer)
        self.runtime: Runtime = runtime_for(self.config)
        try:
            # Built now so that a backend or store module without its class is a
            # configuration error, not a failure halfway through a command.
            self.runtime.moderator  # noqa: B018
        except TypeError as error:
            raise ConfigurationError(str(error)) from None
        self.review = Review(self.runtime, ThumborCaches(self.context))

    def request_context(self, quoted_url: str) -> Any:
        """A context like the one a loader gets during an image request."""
        context = Context(server=self.context.server, config=self.config, importer=self.importer)
        context.request = RequestParameters(image=quoted_url)
        return context

    def close(self) -> None:
        self.runtime.moderator.store.close()


def _load_config(conf: str | None) -> Any:
    if conf is None:
        path = Config.get_conf_file(CONF_NAME, conf_lookup_paths())
        if path is None:
            logger.warning(
                "no %s in %s: using Thumbor's and the plugin's defaults",
                CONF_NAME,
                ", ".join(conf_lookup_paths()),
            )
    else:
        path = os.path.expanduser(conf)
        if not os.path.exists(path):
            raise ConfigurationError(f"No configuration file at {conf}.")
    try:
        return Config.load(path)
    except DerpConfigurationError as error:
        raise ConfigurationError(str(error)) from None
    except Exception as error:
        # thumbor.conf is executed Python: any error in it is a configuration error.
        raise ConfigurationError(f"Cannot read {path}: {type(error).__name__}: {error}") from None


# Commands


def run_check(environment: Environment, arguments: argparse.Namespace) -> int:
    """Judge one file with the configured backend and thresholds; store nothing."""
    for message in unknown_keys(environment.config):
        logger.warning("%s", message)
    check_backend_extra(environment.runtime.settings.backend)
    data = _read_file(arguments.file)
    moderator = environment.runtime.moderator
    backend, policy = moderator.backend, moderator.policy
    try:
        prepared = moderator.prepare(data)
    except UnsupportedImage as error:
        raise Failure(f"{arguments.file}: {error}") from None
    try:
        analysis = backend.detect(prepared, policy.min_confidence)
    except BackendError as error:
        raise Failure(f"{backend.name} backend failed ({error.kind}): {error}") from None
    verdict = policy.judge(analysis.labels, analysis.content_types)
    as_judged = policy.as_judged(analysis.labels, analysis.content_types)
    if arguments.json:
        _print_json(
            {
                "file": arguments.file,
                "format": prepared.format,
                "width": prepared.width,
                "height": prepared.height,
                "content_hash": sha256_hex(data),
                "backend": analysis.backend,
                "model_version": analysis.model_version,
                "project_version": analysis.project_version,
                "min_confidence": analysis.min_confidence,
                "labels": [label.to_dict() for label in analysis.labels],
                "content_types": [kind.to_dict() for kind in analysis.content_types],
                "policy_generation": policy.generation,
                "judged_labels": [
                    {
                        **item.label.to_dict(),
                        "reported_as": _label_name(item.reported.name, item.reported.parent),
                    }
                    for item in as_judged
                ],
                "status": verdict.status.value,
                "reasons": [reason.to_dict() for reason in verdict.reasons],
            }
        )
        return EXIT_OK
    print(f"file: {arguments.file} ({prepared.format} {prepared.width}x{prepared.height})")
    print(
        f"backend: {_model(analysis.backend, analysis.model_version, analysis.project_version)} "
        f"(labels with confidence {analysis.min_confidence / 100:g} or more)"
    )
    _print_labels(analysis.labels)
    _print_content_types(analysis.content_types)
    _print_judged(as_judged, policy.generation)
    print(f"decision: {verdict.status.value}")
    _print_reasons(verdict.status, verdict.reasons)
    return EXIT_OK


def run_list(environment: Environment, arguments: argparse.Namespace) -> int:
    """Every decision, one line each, ordered by key."""
    status = Status(arguments.status) if arguments.status else None

    async def walk() -> None:
        async for decision in _decisions(environment.review, status, arguments.limit):
            if arguments.json:
                _print_json(decision_view(decision))
            else:
                print(
                    "\t".join(
                        (
                            decision.status.value,
                            decision.source.value,
                            decision.key,
                            _why(decision),
                        )
                    )
                )

    asyncio.run(walk())
    return EXIT_OK


def run_show(environment: Environment, arguments: argparse.Namespace) -> int:
    """One decision with its labels, reasons and history."""
    found = asyncio.run(environment.review.show(arguments.url))
    if found is None:
        raise Failure(f"no decision for {arguments.url}")
    decision, history = found
    if arguments.json:
        _print_json(decision_view(decision, history))
        return EXIT_OK
    print(f"url: {decision.url}")
    print(f"key: {decision.key}")
    print(f"status: {decision.status.value} ({decision.source.value})")
    print(f"content hash: {decision.sha256 or '-'}")
    if decision.duplicate_of:
        print(f"duplicate of: {decision.duplicate_of} (similarity {decision.similarity:.3f})")
    backend = _model(decision.backend, decision.model_version, decision.project_version)
    print(f"backend: {backend or '-'}")
    if decision.backend:
        print(f"labels kept: confidence {decision.min_confidence / 100:g} or more")
    if decision.width and decision.height:
        print(f"size: {decision.width}x{decision.height}")
    if decision.error:
        print(f"error: {decision.error}")
    print(f"created: {_when(decision.created_at)}")
    print(f"updated: {_when(decision.updated_at)}")
    _print_reasons(decision.status, decision.reasons)
    _print_labels(decision.labels)
    _print_content_types(decision.content_types)
    print("history:")
    for event in history:
        status = event.status.value if event.status else "forgotten"
        source = event.source.value if event.source else "-"
        print(f"  {_when(event.at)}  {status} ({source})  {event.actor}  {event.note}".rstrip())
    return EXIT_OK


def run_decide(environment: Environment, arguments: argparse.Namespace) -> int:
    """A manual decision for a picture, applied to every URL showing the same bytes."""
    status = Status(arguments.status)
    decided = asyncio.run(
        environment.review.decide(arguments.url, status, arguments.note, arguments.actor)
    )
    for decision in decided:
        print(f"{decision.status.value}\t{decision.url}")
    return EXIT_OK


def run_forget(environment: Environment, arguments: argparse.Namespace) -> int:
    """Drop a decision: the next request judges the picture again."""
    forgotten = asyncio.run(
        environment.review.forget(arguments.url, arguments.actor, arguments.note)
    )
    if not forgotten:
        raise Failure(f"no decision for {arguments.url}")
    print(f"forgotten\t{key_of(arguments.url)}")
    return EXIT_OK


def run_stats(environment: Environment, arguments: argparse.Namespace) -> int:
    """Counts by status and source, and backend calls."""
    stats = asyncio.run(environment.review.stats())
    if arguments.json:
        _print_json(stats)
        return EXIT_OK
    print(f"backend: {stats['backend']}")
    print(f"backend calls: {stats['backend_calls']}")
    by_source = stats["by_source"]
    for status in Status:
        sources = ", ".join(
            f"{source.value} {by_source[f'{status.value}.{source.value}']}" for source in Source
        )
        print(f"{status.value}: {stats['decisions'][status.value]} ({sources})")
    print(f"total: {sum(stats['decisions'].values())}")
    return EXIT_OK


def run_migrate_store(environment: Environment, arguments: argparse.Namespace) -> int:
    """Convert the decision store's data from the previous version's format."""
    converted = environment.runtime.moderator.store.migrate()
    print(f"converted {converted} pictures to the current format")
    return EXIT_OK


def run_similar(environment: Environment, arguments: argparse.Namespace) -> int:
    """The rejected pictures nearest to one, most alike first, and its own duplicates."""
    found = asyncio.run(
        _similar(environment, arguments.url, arguments.min_similarity, arguments.limit)
    )
    decision, nearest, duplicates = found
    if arguments.json:
        _print_json(
            {
                "url": arguments.url,
                "key": decision.key,
                "content_hash": decision.sha256,
                "min_similarity": arguments.min_similarity,
                "nearest": [
                    {
                        "similarity": match.similarity,
                        "content_hash": match.sha256,
                        "decisions": [decision_view(item) for item in items],
                    }
                    for match, items in nearest
                ],
                "duplicates": [decision_view(item) for item in duplicates],
            }
        )
        return EXIT_OK
    print(f"url: {decision.url} ({decision.status.value}, {decision.source.value})")
    print(f"nearest rejected pictures (similarity {arguments.min_similarity:g} or more):")
    if not nearest:
        print("  none")
    for match, items in nearest:
        for item in items:
            print(
                f"  {match.similarity:.3f}  {item.status.value} ({item.source.value})  {item.key}"
            )
    if duplicates:
        print("rejected as its duplicates:")
    for item in duplicates:
        print(f"  {item.similarity:.3f}  {item.key}")
    return EXIT_OK


async def _similar(
    environment: Environment, url: str, minimum: float, limit: int
) -> tuple[Decision, list[tuple[Resemblance, list[Decision]]], list[Decision]]:
    review = environment.review
    moderator = environment.runtime.moderator
    found = await review.show(url)
    if found is None:
        raise Failure(f"no decision for {url}")
    decision = found[0]
    prints = await _prints(environment, decision)
    matches: list[Resemblance] = await moderator.run_store(
        moderator.duplicates.nearest, prints, minimum, limit + 1
    )
    nearest: list[tuple[Resemblance, list[Decision]]] = []
    for match in matches:
        if match.sha256 == decision.sha256 or len(nearest) == limit:
            continue
        items = await moderator.run_store(moderator.store.find_all_by_hash, match.sha256)
        nearest.append((match, items))
    duplicates = []
    for key in await moderator.run_store(moderator.store.duplicates_of, decision.sha256):
        item = await moderator.run_store(moderator.store.get, key)
        if item is not None and item.source is Source.DUPLICATE:
            duplicates.append(item)
    return decision, nearest, duplicates


async def _prints(environment: Environment, decision: Decision) -> dict[int, Print]:
    """A picture's kept fingerprints, or those of its original when none were kept."""
    moderator = environment.runtime.moderator
    if decision.sha256:
        kept: dict[int, Print] = await moderator.run_store(
            moderator.store.fingerprints, decision.sha256
        )
        if kept:
            return kept
    original = await environment.review.original(decision.url)
    if original is None:
        raise Failure(f"no fingerprint kept for {decision.url} and no original at hand")
    try:
        prepared = await moderator.run_blocking(moderator.prepare, original)
    except UnsupportedImage as error:
        raise Failure(f"{decision.url}: {error}") from None
    if not prepared.fingerprints:
        raise Failure(f"{decision.url} has too little detail to be fingerprinted")
    return prepared.fingerprints


@dataclass
class Reevaluation:
    """What re-applying the thresholds to stored labels did (or would do)."""

    examined: int = 0
    changed: Counter[str] = field(default_factory=Counter)
    unchanged: int = 0
    manual: int = 0
    retrying: int = 0
    new_analysis: int = 0
    not_quarantined: int = 0
    duplicates: int = 0
    other_adapter: int = 0


def run_reevaluate(environment: Environment, arguments: argparse.Namespace) -> int:
    """Judge the stored labels of every automatic decision again under the current thresholds."""
    result = asyncio.run(_reevaluate(environment, dry_run=arguments.dry_run))
    changed = ", ".join(f"{status} {count}" for status, count in sorted(result.changed.items()))
    total_changed = sum(result.changed.values())
    prefix = "would change" if arguments.dry_run else "changed"
    print(f"examined: {result.examined}")
    print(f"{prefix}: {total_changed}" + (f" ({changed})" if changed else ""))
    print(f"unchanged: {result.unchanged}")
    print(f"skipped, manual: {result.manual}")
    print(f"skipped, backend error (retried on the next request): {result.retrying}")
    print(f"need a new analysis: {result.new_analysis}")
    print(f"skipped, duplicates of rejected pictures: {result.duplicates}")
    if result.other_adapter:
        print(
            f"judged by another adapter than REKOGNITION_PROJECT_VERSION, labels kept "
            f"(forget to judge again): {result.other_adapter}"
        )
    if result.not_quarantined:
        print(f"originals not quarantined (kept in STORAGE): {result.not_quarantined}")
    if arguments.dry_run:
        print("dry run: nothing was changed")
    return EXIT_OK


async def _reevaluate(environment: Environment, dry_run: bool) -> Reevaluation:
    review = environment.review
    moderator = environment.runtime.moderator
    policy = moderator.policy
    result = Reevaluation()
    counts: dict[str, int] = await moderator.run_store(moderator.store.counts)
    total = sum(counts.get(status.value, 0) for status in Status)
    with tqdm(
        total=total, desc="reevaluate", unit="decision", file=sys.stderr, disable=None
    ) as progress:
        async for decision in _decisions(review, None, None):
            progress.update(1)
            result.examined += 1
            if decision.source is Source.MANUAL:
                result.manual += 1
                continue
            if decision.source is Source.DUPLICATE:
                # Resemblance is not a verdict on labels: thresholds never approve it.
                result.duplicates += 1
                continue
            if _other_adapter(environment, decision):
                result.other_adapter += 1
                tqdm.write(
                    f"judged by another adapter\t{decision.key}\t"
                    f"{decision.project_version or 'base model'}",
                    file=sys.stdout,
                )
            if decision.needs_retry:
                result.retrying += 1
                continue
            if moderator.needs_new_analysis(decision):
                result.new_analysis += 1
                tqdm.write(
                    f"needs new analysis\t{decision.key}\tlabels stored from "
                    f"{decision.min_confidence:g}%, thresholds now look from "
                    f"{policy.min_confidence:g}%",
                    file=sys.stdout,
                )
                continue
            updated = moderator.rejudged(decision)
            if updated.status is decision.status:
                result.unchanged += 1
                if not dry_run and decision.policy != policy.fingerprint:
                    # Brought up to date here rather than by the first request to read it.
                    note = "thresholds changed; stored labels judged again, status unchanged"
                    event = Event(updated.status, Source.AUTO, REEVALUATE_ACTOR, note)
                    await moderator.run_store(moderator.store.save, updated, event)
                    moderator.forget(decision.key)
                continue
            tqdm.write(
                f"{decision.status.value} -> {updated.status.value}\t{decision.key}\t"
                f"{_why(updated)}",
                file=sys.stdout,
            )
            if dry_run:
                result.changed[updated.status.value] += 1
                continue
            saved, quarantined = await _apply(environment, decision, updated)
            if saved.source is Source.MANUAL:
                # Decided by hand while this ran: the manual decision stands.
                result.manual += 1
                continue
            result.changed[saved.status.value] += 1
            result.not_quarantined += 0 if quarantined else 1
    return result


async def _apply(
    environment: Environment, before: Decision, after: Decision
) -> tuple[Decision, bool]:
    """Store a re-judged decision and make Thumbor's caches follow it."""
    moderator = environment.runtime.moderator
    review = environment.review
    refused = after.status is not Status.APPROVED
    quarantined = await _quarantine(environment, after) if refused else True
    note = f"thresholds changed; stored labels judged again (was {before.status.value})"
    event = Event(after.status, Source.AUTO, REEVALUATE_ACTOR, note)
    saved: Decision = await moderator.run_store(moderator.store.save, after, event)
    moderator.forget(after.key)
    if saved.source is Source.MANUAL:
        return saved, quarantined
    await moderator.reindex(before, saved)
    if refused:
        if quarantined:
            await review.purge(saved.url)
        else:
            # Refused by the gate all the same; the original stays so that it is not lost.
            logger.error("original of %s not quarantined, left in STORAGE", saved.key)
    elif before.status is not Status.APPROVED:
        await _restore(environment, saved)
    return saved, quarantined


def _other_adapter(environment: Environment, decision: Decision) -> bool:
    """Whether Rekognition judged a decision with another adapter than the one configured
    (or none), so that its stored labels are not what the configured one would say."""
    configured = environment.runtime.settings.rekognition_project_version or ""
    return decision.backend == "rekognition" and decision.project_version != configured


async def _quarantine(environment: Environment, decision: Decision) -> bool:
    """Copy the original Thumbor stores for a decision into the quarantine."""
    data = await environment.review.caches.original(decision.url)
    if data is None:
        # Nothing stored: refused pictures are kept out of STORAGE, and the moderator
        # quarantined this one when it was first refused.
        return True
    # Keyed by what is stored, which is the judged picture unless the file was replaced.
    return await environment.runtime.moderator.keep_original(sha256_hex(data), data)


async def _restore(environment: Environment, decision: Decision) -> bool:
    """Put a quarantined original back into STORAGE."""
    data = await environment.runtime.moderator.kept_original(decision.sha256)
    if data is None:
        return False
    await environment.review.caches.restore(decision.url, data)
    return True


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
        text = sys.stdin.read() if path == "-" else _read_file(path).decode("utf-8")
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


# Output


def _print_json(data: Any) -> None:
    print(json.dumps(data, sort_keys=True))


def _label_name(name: str, parent: str) -> str:
    return f"{parent} > {name}" if parent else name


def _print_labels(labels: Iterable[Label]) -> None:
    items = list(labels)
    print("labels:" if items else "labels: none")
    for label in items:
        print(
            f"  {_label_name(label.name, label.parent)}  {label.confidence:.1f}%"
            f"{_frame(label.frame)}"
        )


def _frame(frame: int) -> str:
    # Frames count from 1 for people; a still picture has only frame 0.
    return f"  (frame {frame + 1})" if frame else ""


def _print_content_types(content_types: Iterable[ContentType]) -> None:
    items = list(content_types)
    if items:
        print("content types:")
    for kind in items:
        print(f"  {kind.name}  {kind.confidence:.1f}%{_frame(kind.frame)}")


def _print_judged(items: Iterable[Judged], generation: str) -> None:
    judged = list(items)
    if not judged:
        return
    print(f"labels as judged (thresholds in model {generation}.x names):")
    for item in judged:
        label = item.label
        line = f"  {_label_name(label.name, label.parent)}  {label.confidence:.1f}%"
        if item.translated:
            line += f"  (reported as {_label_name(item.reported.name, item.reported.parent)})"
        print(line + _frame(label.frame))


def _reason(status: Status, reason: Reason) -> str:
    relation = "above" if status is Status.REJECTED else "near"
    judged = f" as {reason.judged_as}" if reason.judged_as else ""
    return (
        f"{_label_name(reason.name, reason.parent)}{judged} {reason.confidence:.1f}% "
        f"{relation} {reason.threshold * 100:g}% ({reason.category}){_frame(reason.frame)}"
    )


def _print_reasons(status: Status, reasons: Iterable[Reason]) -> None:
    items = list(reasons)
    if items:
        print("reasons:")
    for reason in items:
        print(f"  {_reason(status, reason)}")


def _model(backend: str, model_version: str, project_version: str) -> str:
    """A backend and its model version, with the adapter that answered, if any."""
    adapter = f" (adapter {project_version})" if project_version else ""
    return f"{backend} {model_version}".strip() + adapter


def _why(decision: Decision) -> str:
    if decision.error:
        return f"error: {decision.error}"
    if decision.duplicate_of:
        return f"duplicate of {decision.duplicate_of} (similarity {decision.similarity:.3f})"
    return "; ".join(_reason(decision.status, reason) for reason in decision.reasons)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


# Plumbing


async def _decisions(
    review: Review, status: Status | None, limit: int | None
) -> AsyncIterator[Decision]:
    """Every decision ordered by key, a page at a time."""
    cursor: str | None = None
    remaining = limit
    while remaining is None or remaining > 0:
        size = MAX_PAGE if remaining is None else min(remaining, MAX_PAGE)
        page, cursor = await review.page(status, size, cursor)
        for decision in page:
            yield decision
        if remaining is not None:
            remaining -= len(page)
        if cursor is None:
            return


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _similarity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    # Lower, unrelated pictures fill the list, and each lookup asks for thousands of values.
    if not SIMILAR_FLOOR <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between {SIMILAR_FLOOR:g} and 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of thumbor-moderation."""
    parser = argparse.ArgumentParser(
        prog="thumbor-moderation",
        description="Check, review and backfill the moderation decisions of a Thumbor server.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {thumbor_rekognition.__version__}"
    )
    parser.add_argument(
        "-c",
        "--conf",
        help=f"Thumbor configuration file (default: {CONF_NAME} in ., ~ or /etc)",
    )
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    def command(name: str, run: Callable[..., int], summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.set_defaults(run=run)
        return sub

    check = command(
        "check", run_check, "Judge an image file with the configured backend; store nothing."
    )
    check.add_argument("file", help="image file")
    check.add_argument("--json", action="store_true", help="print JSON")

    listing = command("list", run_list, "List decisions, one a line, ordered by key.")
    listing.add_argument("--status", choices=[status.value for status in Status])
    listing.add_argument("--limit", type=_positive, help="at most this many")
    listing.add_argument("--json", action="store_true", help="print JSON lines")

    show = command("show", run_show, "Show a decision, its labels and its history.")
    show.add_argument("url", help="image URL as it appears in Thumbor URLs")
    show.add_argument("--json", action="store_true", help="print JSON")

    actor = f"cli:{_login()}"
    for status, summary in (
        (Status.APPROVED, "Approve a picture by hand (every URL with the same bytes)."),
        (Status.REJECTED, "Reject a picture by hand (every URL with the same bytes)."),
    ):
        name = "approve" if status is Status.APPROVED else "reject"
        decide = command(name, run_decide, summary)
        decide.set_defaults(status=status.value)
        decide.add_argument("url", help="image URL as it appears in Thumbor URLs")
        decide.add_argument("--note", default="", help="why, kept in the history")
        decide.add_argument("--actor", default=actor, help=f"who (default: {actor})")

    forget = command("forget", run_forget, "Drop a decision; the next request judges again.")
    forget.add_argument("url", help="image URL as it appears in Thumbor URLs")
    forget.add_argument("--note", default="", help="why, kept in the history")
    forget.add_argument("--actor", default=actor, help=f"who (default: {actor})")

    reevaluate = command(
        "reevaluate",
        run_reevaluate,
        "Apply the current thresholds to the stored labels of every automatic decision, "
        "without calling the backend.",
    )
    reevaluate.add_argument(
        "--dry-run", action="store_true", help="report what would change, change nothing"
    )

    backfill = command("backfill", run_backfill, "Moderate image URLs ahead of traffic.")
    backfill.add_argument(
        "urls_file",
        metavar="URLS_FILE",
        help="one image URL a line as in Thumbor URLs; blank lines and # comments ignored; "
        "- for standard input",
    )
    backfill.add_argument(
        "--concurrency",
        type=_positive,
        default=DEFAULT_CONCURRENCY,
        help=f"URLs moderated at once (default: {DEFAULT_CONCURRENCY})",
    )

    similar = command(
        "similar",
        run_similar,
        "List the rejected pictures nearest to a picture, with their similarity, and the "
        "pictures rejected as its duplicates.",
    )
    similar.add_argument("url", help="image URL as it appears in Thumbor URLs")
    similar.add_argument(
        "--min-similarity",
        type=_similarity,
        default=SIMILAR_MINIMUM,
        help=f"list pictures at least this alike, {SIMILAR_FLOOR:g} to 1 "
        f"(default: {SIMILAR_MINIMUM:g})",
    )
    similar.add_argument(
        "--limit",
        type=_positive,
        default=SIMILAR_LIMIT,
        help=f"at most this many pictures (default: {SIMILAR_LIMIT})",
    )
    similar.add_argument("--json", action="store_true", help="print JSON")

    stats = command("stats", run_stats, "Counts by status and source, and backend calls.")
    stats.add_argument("--json", action="store_true", help="print JSON")

    command(
        "migrate-store",
        run_migrate_store,
        "Convert decisions kept by an earlier version into the current format (once, "
        "after upgrading, before starting Thumbor).",
    )
    return parser


def _not_pycurl_advice(record: logging.LogRecord) -> bool:
    """False for Thumbor's advice to install pycurl, which its HTTP loader logs on import."""
    # Advice for a server's fetching; a command line gets it on every call, in every script.
    return not record.getMessage().startswith(PYCURL_ADVICE)


def main(argv: Sequence[str] | None = None) -> int:
    """Run thumbor-moderation; returns its exit code."""
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("thumbor").addFilter(_not_pycurl_advice)
    try:
        environment = Environment(arguments.conf)
    except ConfigurationError as error:
        return _fail(EXIT_USAGE, f"configuration error: {error}")
    try:
        code: int = arguments.run(environment, arguments)
        return code
    except UsageError as error:
        return _fail(EXIT_USAGE, str(error))
    except ConfigurationError as error:
        return _fail(EXIT_USAGE, f"configuration error: {error}")
    except Failure as error:
        return _fail(EXIT_FAILED, str(error))
    except StoreUnavailable as error:
        return _fail(EXIT_FAILED, f"decision store unavailable: {error}")
    except QuarantineError as error:
        return _fail(EXIT_FAILED, f"quarantine unavailable: {error}")
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    finally:
        environment.close()


def _fail(code: int, message: str) -> int:
    print(f"thumbor-moderation: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
