"""`list`, `show`, `approve`, `reject`, `forget`, `stats` and `migrate-store`: the
decisions as the store keeps them, and overrides by hand."""

from __future__ import annotations

import argparse
import asyncio

from thumbor_rekognition import confidence
from thumbor_rekognition.cli.environment import EXIT_OK, Environment, Failure, each_decision
from thumbor_rekognition.cli.output import (
    model_name,
    print_content_types,
    print_json,
    print_labels,
    print_reasons,
    when,
    why,
)
from thumbor_rekognition.decision import (
    Source,
    Status,
)
from thumbor_rekognition.review import BINDS_TO_FIRST_FETCH, NeverFetched, decision_view
from thumbor_rekognition.urls import key_of


def run_list(environment: Environment, arguments: argparse.Namespace) -> int:
    """Every decision, one line each, ordered by key."""
    status = Status(arguments.status) if arguments.status else None

    async def walk() -> None:
        async for decision in each_decision(environment.review, status, arguments.limit):
            if arguments.json:
                print_json(decision_view(decision))
            else:
                print(
                    "\t".join(
                        (
                            decision.status.value,
                            decision.source.value,
                            decision.key,
                            why(decision),
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
        print_json(decision_view(decision, history))
        return EXIT_OK
    print(f"url: {decision.url}")
    print(f"key: {decision.key}")
    print(f"status: {decision.status.value} ({decision.source.value})")
    print(f"content hash: {decision.sha256 or '-'}")
    if decision.duplicate_of:
        print(f"duplicate of: {decision.duplicate_of} (similarity {decision.similarity:.3f})")
    backend = model_name(decision.backend, decision.model_version, decision.project_version)
    print(f"backend: {backend or '-'}")
    if decision.backend:
        print(f"labels kept: confidence {confidence.shown(decision.min_confidence)} or more")
    if decision.width and decision.height:
        print(f"size: {decision.width}x{decision.height}")
    for hashed in decision.pdq:
        frame = f" (frame {hashed.frame})" if len(decision.pdq) > 1 else ""
        print(f"pdq{frame}: {hashed.hash or '-'} quality {hashed.quality}")
    if decision.error:
        print(f"error: {decision.error}")
    print(f"created: {when(decision.created_at)}")
    print(f"updated: {when(decision.updated_at)}")
    print_reasons(decision.status, decision.reasons)
    print_labels(decision.labels)
    print_content_types(decision.content_types)
    print("history:")
    for event in history:
        status = event.status.value if event.status else "forgotten"
        source = event.source.value if event.source else "-"
        print(f"  {when(event.at)}  {status} ({source})  {event.actor}  {event.note}".rstrip())
    return EXIT_OK


def run_decide(environment: Environment, arguments: argparse.Namespace) -> int:
    """A manual decision for a picture, applied to every URL showing the same bytes."""
    status = Status(arguments.status)
    review = environment.review
    try:
        decided = asyncio.run(
            review.decide(arguments.url, status, arguments.note, arguments.actor, arguments.unseen)
        )
    except NeverFetched as error:
        nearest = ", ".join(error.nearest) if error.nearest else "none"
        raise Failure(
            f"no request has fetched {arguments.url}; nearest known URLs: {nearest}. To "
            f"{arguments.command_name} it before its first fetch, add --unseen: the decision "
            "binds to the bytes of that fetch."
        ) from None
    for decision in decided:
        # Kept without bytes: the first fetch of its URL binds it.
        binding = "" if decision.sha256 else f"\t{BINDS_TO_FIRST_FETCH}"
        print(f"{decision.status.value}\t{decision.url}{binding}")
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
        print_json(stats)
        return EXIT_OK
    print(f"backend: {stats['backend']}")
    print(f"backend calls: {stats['backend_calls']}")
    if stats["hma_unreachable"]:
        print(f"HMA lookups failed (backend judged alone): {stats['hma_unreachable']}")
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
