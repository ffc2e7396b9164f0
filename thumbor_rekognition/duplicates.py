"""Near-duplicates of rejected pictures: the index of their fingerprints, and lookups in it.

Every judged picture's fingerprints (one per judged frame, see ``fingerprint``) are kept
in the decision store by content hash; those of pictures the model or a human rejected
are also in an index. A new picture at least MODERATION_DUPLICATE_SIMILARITY alike to an
indexed one is rejected without a backend call (source ``duplicate``), naming it. When
that picture stops being rejected, the decisions that named it are forgotten, so that
their pictures are judged on their own at their next request: similarity never approves
anything, and a duplicate is never indexed itself (copies of copies would drift).

The index is multi-index hashing. The 64 coarse bits are cut into four bands of 16; two
fingerprints at most d coarse bits apart have a band within d // 4 bits (were every band
d // 4 + 1 bits apart, they would be more than d apart). A lookup asks the store for the
indexed fingerprints with a band value within that many bits of the query's, 17 values a
band at the default similarity, and measures only those.

Blocking: every method here runs on the store's thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from thumbor_rekognition import fingerprint
from thumbor_rekognition.decision import Decision, Event, Source, Status
from thumbor_rekognition.fingerprint import BAND_BITS, BANDS, Print
from thumbor_rekognition.stores import Store

# The lowest MODERATION_DUPLICATE_SIMILARITY allowed: unrelated pictures come closer than
# this now and then, and lower values cost a first fetch ever more band values to look up.
MIN_SIMILARITY = 0.85


@dataclass(frozen=True)
class Resemblance:
    """A rejected picture (its content hash, and a key it is decided at) and how alike."""

    sha256: str
    similarity: float
    key: str = ""


@dataclass(frozen=True)
class Lifted:
    """A duplicate's decision forgotten because its original is no longer rejected."""

    decision: Decision
    event: Event


def rejects_by_itself(decision: Decision) -> bool:
    """Whether a decision rejects its picture for what it shows (model or human), which
    puts the picture in the index."""
    return decision.status is Status.REJECTED and decision.source in (Source.AUTO, Source.MANUAL)


def indexed_frames(decision: Decision, prints: Collection[int]) -> set[int]:
    """The frames of a picture a decision puts in the index: every one when a human
    rejected it, the frames that decided when the model did."""
    if not rejects_by_itself(decision):
        return set()
    if decision.source is Source.MANUAL:
        return set(prints)
    return {reason.frame for reason in decision.reasons} & set(prints)


def probes(prints: Iterable[Print], within: int) -> list[set[int]]:
    """The band values to look up, band by band, for fingerprints at most `within` coarse
    bits from any of these."""
    radius = within // BANDS
    masks = [
        sum(1 << bit for bit in bits)
        for flipped in range(radius + 1)
        for bits in itertools.combinations(range(BAND_BITS), flipped)
    ]
    values: list[set[int]] = [set() for _ in range(BANDS)]
    for print_ in prints:
        for band, value in enumerate(print_.bands()):
            values[band].update(value ^ mask for mask in masks)
    return values


class Duplicates:
    """The index of rejected pictures, kept in a decision store."""

    def __init__(self, store: Store, similarity: float, actor: str) -> None:
        self.store = store
        # 0 disables matching; fingerprints are still kept and indexed.
        self.similarity = similarity
        self.actor = actor

    @property
    def enabled(self) -> bool:
        return self.similarity > 0

    def nearest(self, prints: Mapping[int, Print], minimum: float, limit: int) -> list[Resemblance]:
        """The indexed pictures at least `minimum` alike to any of these fingerprints,
        most alike first."""
        if not prints:
            return []
        within = fingerprint.within(minimum)
        coarse = [query.coarse for query in prints.values()]
        only = coarse[0]

        # Called for each of about a thousand candidates at a million entries: a still
        # picture, the common case, is one comparison.
        def close(candidate: int) -> bool:
            if len(coarse) == 1:
                return (candidate ^ only).bit_count() <= within
            return any((candidate ^ query).bit_count() <= within for query in coarse)

        best: dict[str, float] = {}
        wanted = probes(prints.values(), within)
        for sha256, candidate in self.store.indexed_near(wanted, close):
            score = max(candidate.similarity(query) for query in prints.values())
            if score >= minimum and score > best.get(sha256, -1.0):
                best[sha256] = score
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))
        return [Resemblance(sha256, score) for sha256, score in ranked[:limit]]

    def find(self, prints: Mapping[int, Print]) -> Resemblance | None:
        """The rejected picture most like these fingerprints, when one is at least as
        alike as configured; with the key of the decision that rejects it."""
        if not self.enabled:
            return None
        for match in self.nearest(prints, self.similarity, limit=10):
            # The index may be a moment behind a change: the decision itself has the say.
            decision = self.store.find_by_hash(match.sha256)
            if decision is not None and rejects_by_itself(decision):
                return Resemblance(match.sha256, match.similarity, decision.key)
        return None

    def keep(self, sha256: str, prints: Mapping[int, Print]) -> None:
        """Keep a judged picture's fingerprints, in the index if a decision rejects it."""
        decisions = self.store.find_all_by_hash(sha256)
        frames = set().union(*(indexed_frames(decision, prints) for decision in decisions))
        self.store.put_fingerprints(sha256, prints, frames)

    def follow(self, previous: Decision | None, current: Decision | None) -> list[Lifted]:
        """Keep the index in step with a change of decision; the duplicates whose rejection
        it lifts (already forgotten in the store)."""
        changed = current or previous
        if changed is None or not changed.sha256:
            return []
        lifted: list[Lifted] = []
        if current is not None and current.source is Source.DUPLICATE:
            lifted += self._link(current)
        if any(d is not None and rejects_by_itself(d) for d in (previous, current)):
            lifted += self._reindex(changed.sha256)
        return lifted

    def _link(self, duplicate: Decision) -> list[Lifted]:
        original = self.store.get(duplicate.duplicate_of)
        if original is not None and rejects_by_itself(original):
            self.store.link_duplicate(original.sha256, duplicate.key)
            # Read again after linking: an approval landing meanwhile either finds the link
            # or is seen here, so no duplicate outlives its original's rejection.
            original = self.store.get(duplicate.duplicate_of)
            if original is not None and rejects_by_itself(original):
                return []
        return self._lift([duplicate.key], original.sha256 if original else "")

    def _reindex(self, sha256: str) -> list[Lifted]:
        decisions = self.store.find_all_by_hash(sha256)
        prints = self.store.fingerprints(sha256)
        if prints:
            frames = set().union(*(indexed_frames(decision, prints) for decision in decisions))
            self.store.put_fingerprints(sha256, prints, frames)
        if any(rejects_by_itself(decision) for decision in decisions):
            return []
        return self._lift(self.store.duplicates_of(sha256), sha256)

    def _lift(self, keys: list[str], original: str) -> list[Lifted]:
        lifted = []
        for key in keys:
            decision = self.store.get(key)
            if decision is not None and decision.source is Source.DUPLICATE:
                named = self.store.get(decision.duplicate_of)
                if named is None or not rejects_by_itself(named):
                    event = Event(
                        None,
                        None,
                        self.actor,
                        f"duplicate of {decision.duplicate_of}, which is no longer rejected: "
                        "judged on its own at its next request",
                    )
                    if self.store.delete(key, event):
                        lifted.append(Lifted(decision, event))
            if original:
                self.store.link_duplicate(original, key, linked=False)
        return lifted
