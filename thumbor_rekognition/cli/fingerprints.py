"""`backfill --fingerprints`: PDQ hashes for decisions stored before they were kept.

Each decision about known bytes without a PDQ hash gets the hashes of its original,
read where reviewers read it (the quarantined copy, else Thumbor's STORAGE) and prepared
as a judgement prepares it; an approved one that a reject hash bank now lists is then
rejected, as a bank grown since would have. Each picture the index of judged pictures
holds no fingerprint for (one judged before the index held PDQ hashes) gets its PDQ
fingerprints there too, so that copies of it are matched again. Nothing is judged again
and no backend is called.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter

from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

from thumbor_rekognition.cli.environment import EXIT_OK, Environment
from thumbor_rekognition.decision import Decision, Event
from thumbor_rekognition.moderation.banking import pdq_of
from thumbor_rekognition.preparation import UnsupportedImage

logger = logging.getLogger(__name__)

ACTOR = "cli:backfill"
_PAGE = 200


def run_fingerprints(environment: Environment) -> int:
    """Give stored decisions their PDQ hashes; prints what was done."""
    outcomes = asyncio.run(_fingerprint_all(environment))
    outcomes_shown = (
        "hashed",
        "indexed",
        "already hashed",
        "rejected by a hash bank",
        "no original",
    )
    for outcome in outcomes_shown:
        print(f"{outcome}: {outcomes[outcome]}")
    for outcome, count in sorted(outcomes.items()):
        if outcome.startswith("unreadable"):
            print(f"{outcome}: {count}")
    return EXIT_OK


async def _fingerprint_all(environment: Environment) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    review = environment.review
    cursor: str | None = None
    with tqdm(desc="fingerprints", unit="decision", file=sys.stderr, disable=None) as bar:
        while True:
            page, cursor = await review.page(None, _PAGE, cursor)
            for decision in page:
                outcomes[await _fingerprint(environment, decision)] += 1
                bar.update(1)
            if cursor is None:
                return outcomes


async def _fingerprint(environment: Environment, decision: Decision) -> str:
    moderator = environment.runtime.moderator
    if not decision.sha256:
        return "already hashed" if decision.pdq else "no original"
    indexed = await moderator.run_store(moderator.store.fingerprints, decision.sha256)
    if decision.pdq and indexed:
        return "already hashed"
    original = await environment.review.original(decision.url)
    if original is None:
        return "no original"
    if decision.pdq:
        # Hashed already, but indexed by the former fingerprint (or not at all).
        await moderator.fingerprint(decision.sha256, original)
        return "indexed"
    try:
        prepared = await moderator.run_blocking(moderator.prepare, original)
    except UnsupportedImage as error:
        logger.warning("%s: %s", decision.key, error)
        return "unreadable"
    hashed = decision.replace(pdq=pdq_of(prepared))
    note = "PDQ hashes computed from the stored original"
    saved = await moderator.run_store(
        moderator.store.save, hashed, Event(decision.status, decision.source, ACTOR, note)
    )
    await moderator.fingerprint(decision.sha256, original)
    if await moderator.reject_if_listed(saved):
        return "rejected by a hash bank"
    return "hashed"
