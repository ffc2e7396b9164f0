"""`similar`: the rejected pictures nearest to one, and its own duplicates."""

from __future__ import annotations

import argparse
import asyncio

from thumbor_rekognition.cli.environment import EXIT_OK, Environment, Failure
from thumbor_rekognition.cli.output import print_json
from thumbor_rekognition.decision import (
    Decision,
    Source,
)
from thumbor_rekognition.duplicates import Resemblance
from thumbor_rekognition.fingerprint import Print
from thumbor_rekognition.preparation import UnsupportedImage
from thumbor_rekognition.review import decision_view

# `similar`: how far from a picture to look, and how many pictures to list.
# (0.82 is 46 bits of 256: each of the 16 slots looked up within 2 bits.)
SIMILAR_MINIMUM = 0.85
SIMILAR_FLOOR = 0.82
SIMILAR_LIMIT = 10


def run_similar(environment: Environment, arguments: argparse.Namespace) -> int:
    """The rejected pictures nearest to one, most alike first, and its own duplicates."""
    found = asyncio.run(
        _similar(environment, arguments.url, arguments.min_similarity, arguments.limit)
    )
    decision, nearest, duplicates = found
    if arguments.json:
        print_json(
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
