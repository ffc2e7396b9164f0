"""`reevaluate`: the current thresholds applied to the stored labels of every automatic
decision, without calling the backend."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

from thumbor_rekognition import confidence
from thumbor_rekognition.cli.environment import (
    EXIT_OK,
    REEVALUATE_ACTOR,
    Environment,
    each_decision,
)
from thumbor_rekognition.cli.output import why
from thumbor_rekognition.decision import (
    Decision,
    Event,
    Source,
    Status,
)
from thumbor_rekognition.moderation.memory import sha256_hex

logger = logging.getLogger(__name__)


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
        async for decision in each_decision(review, None, None):
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
                    f"{confidence.shown(decision.min_confidence)}, thresholds now look from "
                    f"{confidence.shown(policy.min_confidence)}",
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
                f"{why(updated)}",
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
