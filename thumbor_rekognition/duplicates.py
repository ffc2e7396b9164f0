"""Near-duplicates of rejected pictures: the index of judged pictures' fingerprints, and
lookups in it, both ways.

Every judged picture's fingerprints (one per judged frame, see ``fingerprint``) are kept
in an index in the decision store, each marked with whether that frame rejects its
picture: every frame when a human rejected it, the frames that decided when the model
did, none otherwise. Matching runs both ways, at MODERATION_DUPLICATE_SIMILARITY:

- forward: a new picture alike to a rejecting frame is rejected without a backend call
  (source ``duplicate``), naming the picture it resembles;
- backward: when a picture becomes rejected by itself (model or human), its approved
  near-copies already judged are rejected the same way (``catch``), unless rules.settle
  keeps their decision (a human's).

When that picture stops being rejected, the decisions that named it are forgotten, so
that their pictures are judged on their own at their next request: similarity never
approves anything, and a duplicate never rejects anything itself (copies of copies would
drift). Lookups answer each candidate's content hash and whether it rejects, so a step
that refuses near-copies of any indexed picture can use the same index.

Fingerprints are PDQ hashes (see ``fingerprint``), frames below PDQ quality 50 having
none. The store keeps two indexes: every frame's own hash, and every rotation and mirror
of each rejecting frame. A forward lookup (every first view) asks the second with the new
picture's own hash; a backward one (a rejection, rarer) asks the first with the 8 variants
of the rejected frames. Either way a mirrored or rotated copy is caught, and a first view
pays for one hash's slot values, not eight. The indexes are multi-index hashing: the 256
bits are cut into 16 slots of 16; two hashes at most d bits apart have a slot within
d // 16 bits (were every slot d // 16 + 1 bits apart, they would be more than d apart).
A lookup asks the store for the indexed hashes with a slot value within that many bits
of a query's, 17 values a slot up to 31 bits (272 for one hash), and measures only those.

Blocking: every method here runs on the store's thread.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from thumbor_rekognition import fingerprint, pdq, rules
from thumbor_rekognition.decision import Decision, Event, Source, Status
from thumbor_rekognition.fingerprint import BAND_BITS, BANDS, Print
from thumbor_rekognition.stores import Store

logger = logging.getLogger(__name__)

# The most near-copies one rejection looks at: a picture copied more often than this is
# caught forward for the rest (each copy at its next judgement), and logged.
MAX_CAUGHT = 1000

# The lowest MODERATION_DUPLICATE_SIMILARITY allowed: Meta's threshold, 31 bits of 256.
# Unrelated pictures come closer than this now and then, and a lower value costs a first
# fetch eight times more slot values to look up (each slot within 2 bits, not 1).
MIN_SIMILARITY = 1.0 - pdq.MATCH_DISTANCE / fingerprint.BITS


# Reason category of a rejection by Cloudinary's 'duplicate:<score>' chain step: a near-copy
# of any judged picture, approved ones included (de-duplication of uploads). Such a
# rejection is not about what the picture shows, so approving its original lifts nothing.
INDEXED_COPY = "indexed_copy"


@dataclass(frozen=True)
class Resemblance:
    """An indexed picture (its content hash, and a key it is decided at), how alike, and
    whether a frame that rejects it is that alike."""

    sha256: str
    similarity: float
    key: str = ""
    rejecting: bool = False


@dataclass(frozen=True)
class Lifted:
    """A duplicate's decision forgotten because its original is no longer rejected."""

    decision: Decision
    event: Event


@dataclass(frozen=True)
class Caught:
    """An approved near-copy of a picture just rejected, now rejected as its duplicate."""

    previous: Decision
    decision: Decision
    event: Event


def rejects_by_itself(decision: Decision) -> bool:
    """Whether a decision rejects its picture for what it shows (model or human), which
    puts the picture in the index."""
    return decision.status is Status.REJECTED and decision.source in (Source.AUTO, Source.MANUAL)


def is_indexed_copy(decision: Decision) -> bool:
    """Whether a decision rejects its picture as a near-copy of any judged picture
    (Cloudinary's duplicate step), not of a rejected one."""
    return decision.source is Source.DUPLICATE and any(
        reason.category == INDEXED_COPY for reason in decision.reasons
    )


def rejecting_frames(decision: Decision, prints: Collection[int]) -> set[int]:
    """The frames of a picture that reject it under a decision: every one when a human
    rejected it, the frames that decided when the model did, none otherwise."""
    if not rejects_by_itself(decision):
        return set()
    if decision.source is Source.MANUAL:
        return set(prints)
    return {reason.frame for reason in decision.reasons} & set(prints)


def probes(prints: Iterable[Print], within: int) -> list[set[int]]:
    """The slot values to look up, slot by slot, for hashes at most `within` bits from any
    of these fingerprints' variants."""
    radius = within // BANDS
    masks = [
        sum(1 << bit for bit in bits)
        for flipped in range(radius + 1)
        for bits in itertools.combinations(range(BAND_BITS), flipped)
    ]
    values: list[set[int]] = [set() for _ in range(BANDS)]
    for print_ in prints:
        for variant in print_.hashes:
            for band, value in enumerate(Print(variant).bands()):
                values[band].update(value ^ mask for mask in masks)
    return values


class Duplicates:
    """The index of judged pictures, kept in a decision store."""

    def __init__(self, store: Store, similarity: float, actor: str) -> None:
        self.store = store
        # 0 disables matching; fingerprints are still kept and indexed.
        self.similarity = similarity
        self.actor = actor

    @property
    def enabled(self) -> bool:
        return self.similarity > 0

    def nearest(
        self,
        prints: Mapping[int, Print],
        minimum: float,
        limit: int,
        only_rejecting: bool = True,
    ) -> list[Resemblance]:
        """The indexed pictures at least `minimum` alike to any of these fingerprints, most
        alike first: those with a rejecting frame that alike, or with only_rejecting False
        every one (marked rejecting or not)."""
        if not prints:
            return []
        within = fingerprint.within(minimum)
        # Among rejecting frames the index holds every rotation and mirror, so each query's
        # own hash is enough; among all frames only their own hashes, so every variant asks.
        asking = (
            [Print(query.value) for query in prints.values()] if only_rejecting else prints.values()
        )
        variants = [variant for query in asking for variant in query.hashes]

        # Called for each of thousands of candidates at millions of entries.
        def close(candidate: int) -> bool:
            return any((candidate ^ variant).bit_count() <= within for variant in variants)

        best: dict[str, float] = {}
        rejecting: set[str] = set()
        for entry in self.store.indexed_near(
            probes(asking, within), close, rejecting_only=only_rejecting
        ):
            score = max(query.similarity(entry.print) for query in prints.values())
            if score < minimum:
                continue
            best[entry.sha256] = max(score, best.get(entry.sha256, -1.0))
            if entry.rejecting:
                rejecting.add(entry.sha256)
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))
        return [
            Resemblance(sha256, score, rejecting=sha256 in rejecting)
            for sha256, score in ranked[:limit]
        ]

    def find(self, prints: Mapping[int, Print]) -> Resemblance | None:
        """The rejected picture most like these fingerprints, when one is at least as
        alike as configured; with the key of the decision that rejects it."""
        if not self.enabled:
            return None
        for match in self.nearest(prints, self.similarity, limit=10):
            # The index may be a moment behind a change: the decision itself has the say.
            decision = self.store.find_by_hash(match.sha256)
            if decision is not None and rejects_by_itself(decision):
                return Resemblance(match.sha256, match.similarity, decision.key, rejecting=True)
        return None

    def find_indexed(
        self, prints: Mapping[int, Print], minimum: float, sha256: str
    ) -> Resemblance | None:
        """The judged picture, approved or not, most like these fingerprints when one is
        at least `minimum` alike (Cloudinary's duplicate step); never these same bytes,
        nor a picture refused as a duplicate itself (copies of copies would drift)."""
        if minimum <= 0:
            return None
        for match in self.nearest(prints, minimum, limit=10, only_rejecting=False):
            if match.sha256 == sha256:
                continue
            for decision in self.store.find_all_by_hash(match.sha256):
                if decision.source is not Source.DUPLICATE and not decision.needs_retry:
                    return Resemblance(
                        match.sha256, match.similarity, decision.key, match.rejecting
                    )
        return None

    def keep(self, sha256: str, prints: Mapping[int, Print]) -> None:
        """Keep a judged picture's fingerprints in the index, marking the frames that
        reject it."""
        decisions = self.store.find_all_by_hash(sha256)
        frames = set().union(*(rejecting_frames(decision, prints) for decision in decisions))
        self.store.put_fingerprints(sha256, prints, frames)

    def catch(self, rejected: Decision) -> list[Caught]:
        """Reject as duplicates of a picture that rejects by itself its approved near-copies
        (those alike to a frame that rejects it), as rules.settle allows; the changes made."""
        if not self.enabled or not rejected.sha256 or not rejects_by_itself(rejected):
            return []
        prints = self.store.fingerprints(rejected.sha256)
        decisions = self.store.find_all_by_hash(rejected.sha256)
        frames = set().union(*(rejecting_frames(decision, prints) for decision in decisions))
        queries = {frame: prints[frame] for frame in frames}
        matches = self.nearest(queries, self.similarity, MAX_CAUGHT + 1, only_rejecting=False)
        if len(matches) > MAX_CAUGHT:
            logger.warning(
                "%s has more than %d near-copies: only the %d most alike are rejected now",
                rejected.key,
                MAX_CAUGHT,
                MAX_CAUGHT,
            )
        caught: list[Caught] = []
        for match in matches[:MAX_CAUGHT]:
            if match.sha256 == rejected.sha256:
                continue
            for copy in self.store.find_all_by_hash(match.sha256):
                found = self._reject_copy(copy, rejected, match.similarity)
                if found is not None:
                    caught.append(found)
        return caught

    def _reject_copy(self, copy: Decision, original: Decision, similarity: float) -> Caught | None:
        if copy.status is not Status.APPROVED:
            return None
        proposal = copy.replace(
            status=Status.REJECTED,
            source=Source.DUPLICATE,
            backend="",
            reasons=(),
            error="",
            duplicate_of=original.key,
            similarity=round(similarity, 4),
            updated_at=time.time(),
        )
        if rules.settle(copy, proposal) == copy:
            # A human's approval: it stands, and nothing is written.
            return None
        event = Event(
            Status.REJECTED,
            Source.DUPLICATE,
            self.actor,
            f"resembles {original.key} (similarity {similarity:.3f}), "
            f"rejected when that picture was ({original.source.value})",
        )
        saved = self.store.save(proposal, event)
        if saved.status is copy.status and saved.source is copy.source:
            return None
        return Caught(copy, saved, rules.noted(saved, proposal, event))

    def follow(self, previous: Decision | None, current: Decision | None) -> list[Lifted]:
        """Keep the index in step with a change of decision; the duplicates whose rejection
        it lifts (already forgotten in the store)."""
        changed = current or previous
        if changed is None or not changed.sha256:
            return []
        lifted: list[Lifted] = []
        if (
            current is not None
            and current.source is Source.DUPLICATE
            and not is_indexed_copy(current)
        ):
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
            frames = set().union(*(rejecting_frames(decision, prints) for decision in decisions))
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
