"""The decision store contract.

``MODERATION_DECISION_STORE`` names a module with a ``Store`` class taking the plugin's
settings. Methods are blocking; the moderator calls them from the store's own thread.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from thumbor_rekognition import rules
from thumbor_rekognition.decision import Decision, Event, Status
from thumbor_rekognition.fingerprint import BYTES, Print

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

logger = logging.getLogger(__name__)


# How often a compare-and-set write retries after losing a race, before giving up.
RACES = 50

# The statuses whose decisions a store also lists by time (page_by_time): the ones a
# person works through. Approved pictures, most of them, are listed in key order only.
TIMED = (Status.PENDING, Status.REJECTED)
# Digits of a time in microseconds, as ordered listings write it (up to the year 2286).
_TIME_DIGITS = 16

# Marks a recorded path as a STORAGE path of the original; result paths start with '/'.
STORAGE_PATH_MARK = "storage:"


def result_paths(recorded: list[str]) -> list[str]:
    """The result-storage paths among the paths recorded for a key."""
    return [path for path in recorded if not path.startswith(STORAGE_PATH_MARK)]


def storage_paths(recorded: list[str]) -> list[str]:
    """The STORAGE paths of the original among the paths recorded for a key."""
    mark = len(STORAGE_PATH_MARK)
    return [path[mark:] for path in recorded if path.startswith(STORAGE_PATH_MARK)]


# The outbox entries, (topic, payload), that a decision change calls for: given the
# decision stored before, the one stored now (None when forgotten), the event, and the
# paths recorded for the key. Set by the outbox on the store it delivers from.
Announcer = Callable[[Decision | None, Decision | None, Event, list[str]], list[tuple[str, str]]]


def time_code(at: float) -> str:
    """A time (seconds since the epoch) as text that sorts as the times do: microseconds,
    zero-padded."""
    return f"{max(0, round(at * 1_000_000)):0{_TIME_DIGITS}d}"


def time_cursor(decision: Decision) -> str:
    """The cursor of page_by_time that comes after a decision: its time code, then its key."""
    return time_code(decision.updated_at) + decision.key


def split_time_cursor(cursor: str) -> tuple[str, str]:
    """A cursor of page_by_time as (time code, key); ValueError for one no store gave."""
    code, key = cursor[:_TIME_DIGITS], cursor[_TIME_DIGITS:]
    if len(code) != _TIME_DIGITS or not code.isascii() or not code.isdigit():
        raise ValueError("not a cursor of a listing by time")
    return code, key


def check_timed(status: Status, limit: int) -> None:
    """Refuse what page_by_time cannot list."""
    if status not in TIMED:
        named = " and ".join(timed.value for timed in TIMED)
        raise ValueError(f"only {named} decisions are listed by time")
    if limit < 1:
        raise ValueError(f"page limit must be at least 1, got {limit}")


class StoreUnavailable(Exception):
    """The store cannot be reached or answered with an error."""


@dataclass(frozen=True)
class OutboxItem:
    """A notification or purge waiting to be delivered, in order per topic and key."""

    id: str
    topic: str
    key: str
    payload: str
    attempts: int
    created_at: float


@dataclass(frozen=True)
class Indexed:
    """One frame's fingerprint in the index of judged pictures: its picture's content
    hash, and whether that frame rejects its picture (see duplicates.rejecting_frames)."""

    sha256: str
    print: Print
    rejecting: bool


def rejecting_variants(
    prints: Mapping[int, Print], rejecting: Collection[int]
) -> dict[int, tuple[int, ...]]:
    """The hashes each rejecting frame is kept under in the index of rejecting frames: its
    own and its rotations' and mirrors' (those known), each once, its own first."""
    return {
        frame: tuple(dict.fromkeys(print_.hashes))
        for frame, print_ in sorted(prints.items())
        if frame in rejecting
    }


# An index entry as the Redis and DynamoDB stores keep it: a PDQ hash (BYTES), its
# picture's content hash (32 bytes), and a byte, 1 when the frame rejects its picture.
ENTRY_BYTES = BYTES + 32 + 1


def index_entries(
    sha256: str, prints: Mapping[int, Print], rejecting: Collection[int]
) -> set[tuple[bool, int, int, bytes]]:
    """A picture's entries in the two indexes, as ENTRY_BYTES each: (whether in the index
    of rejecting frames, slot, slot value, entry). Every frame's own hash is in the index
    of judged frames; each rotation and mirror of a rejecting frame in the other."""
    digest = bytes.fromhex(sha256)
    entries = {
        (False, slot, value, print_.entry() + digest + bytes([frame in rejecting]))
        for frame, print_ in prints.items()
        for slot, value in enumerate(print_.bands())
    }
    for values in rejecting_variants(prints, rejecting).values():
        for variant in map(Print, values):
            entries.update(
                (True, slot, value, variant.entry() + digest + b"\x01")
                for slot, value in enumerate(variant.bands())
            )
    return entries


def indexed(entry: bytes) -> Indexed:
    """An entry of index_entries read back."""
    return Indexed(entry[BYTES:-1].hex(), Print.from_bytes(entry[:BYTES]), entry[-1:] == b"\x01")


class Store:
    """Persistent decisions keyed by normalised URL, indexed by content hash, with history."""

    # How long a saved change takes to reach every other process (their change feeds).
    propagation_seconds = 0.0

    # What a change announces: save and delete write its entries to the outbox in the same
    # atomic write as the change itself, so that no change goes unannounced.
    announcer: Announcer | None = None

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    @classmethod
    def check_settings(cls, settings: Settings) -> None:
        """Raise ConfigurationError for settings this store cannot work with, without
        connecting to anything: Thumbor's start-up asks, before it forks."""

    def get(self, key: str) -> Decision | None:
        """The decision for a key, if any."""
        raise NotImplementedError

    def find_by_hash(self, sha256: str) -> Decision | None:
        """The decision that stands for these bytes under any key (rules.standing)."""
        return rules.standing(self.find_all_by_hash(sha256))

    def save(self, decision: Decision, event: Event) -> Decision:
        """Propose a decision for its key: what rules.settle keeps over the decision stored
        there, read and written atomically (compare-and-set), with the event logged and
        the announcer's outbox entries added when something is written, all in one atomic
        write. Returns the decision now stored."""
        raise NotImplementedError

    def delete(self, key: str, event: Event) -> bool:
        """Forget a decision (its history stays), with the announcer's outbox entries in
        the same atomic write; True if there was one."""
        raise NotImplementedError

    def announcements(
        self, previous: Decision | None, current: Decision | None, event: Event, recorded: list[str]
    ) -> list[tuple[str, str]]:
        """The outbox entries of a change, for save and delete to write with it."""
        if self.announcer is None:
            return []
        return self.announcer(previous, current, event, recorded)

    def history(self, key: str) -> list[Event]:
        """Every change of a key's decision, oldest first."""
        raise NotImplementedError

    def page(
        self, status: Status | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Decision], str | None]:
        """Decisions ordered by key after the cursor, and the cursor of the next page
        (None on the last). A limit below 1 raises ValueError."""
        raise NotImplementedError

    def page_by_time(
        self, status: Status, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Decision], str | None]:
        """Decisions of a status of TIMED, oldest change (updated_at) first and, at the same
        microsecond, in key order, after the cursor (time_cursor of the last one shown), and
        the cursor of the next page (None on the last). A page may hold fewer than limit
        with more to come. Another status, a limit below 1 or a cursor no store gave raise
        ValueError."""
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        """Number of decisions per 'status' and per 'status.source'."""
        raise NotImplementedError

    def find_all_by_hash(self, sha256: str) -> list[Decision]:
        """Every decision about the same bytes, whatever its status."""
        raise NotImplementedError

    def add_results(self, key: str, paths: list[str]) -> None:
        """Record result-storage paths derived from a key's original (and, marked with
        STORAGE_PATH_MARK, the STORAGE paths the original is kept at)."""
        raise NotImplementedError

    def results(self, key: str) -> list[str]:
        """The result-storage paths recorded for a key, oldest first."""
        raise NotImplementedError

    def drop_results(self, key: str) -> None:
        """Forget the result-storage paths of a key (after purging them)."""
        raise NotImplementedError

    def incr(self, name: str, amount: int = 1) -> None:
        """Add to a named counter shared by every process."""
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        """Every named counter."""
        raise NotImplementedError

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take a named lease for some seconds unless another holder has it; True if taken."""
        raise NotImplementedError

    def release_lease(self, name: str, holder: str) -> None:
        """Give a lease back early, if this holder still has it."""
        raise NotImplementedError

    def subscribe(self, changed: Callable[[str | None], None]) -> None:
        """Call changed(key) when another process changes a decision, changed(None) when
        changes may have been missed. Stores without notifications rely on the TTL."""

    def compare_and_set(self, name: str, expected: str | None, value: str) -> str | None:
        """Set a small named value shared by every process to value if it is expected
        now (None: not set yet), atomically. Returns the value found, which equals
        expected when the value was set."""
        raise NotImplementedError

    def enqueue(self, topic: str, key: str, payload: str) -> None:
        """Add an item to the durable outbox."""
        raise NotImplementedError

    def claim(
        self, now: float, lease: float, limit: int, topic: str | None = None
    ) -> list[OutboxItem]:
        """Due items (of one topic, or of any), each the oldest undelivered one of its
        topic and key, hidden from other claimers for lease seconds; their attempt counts
        are increased."""
        raise NotImplementedError

    def complete(self, item: OutboxItem) -> None:
        """An item was delivered: drop it."""
        raise NotImplementedError

    def reschedule(self, item: OutboxItem, next_at: float, error: str) -> None:
        """Try an item again at next_at."""
        raise NotImplementedError

    def abandon(self, item: OutboxItem, error: str) -> None:
        """Give an item up: it is kept, counted, and no longer blocks its key."""
        raise NotImplementedError

    def outbox_counts(self) -> dict[str, int]:
        """Items waiting and items given up, per topic: '<topic>.pending', '<topic>.abandoned'."""
        raise NotImplementedError

    def migrate(self) -> int:
        """Convert what an earlier version of the store kept into the current format, in
        place; returns how many pictures were converted. Stores refuse to work on data of
        an earlier format until this has run."""
        return 0

    # Near-duplicates (see duplicates.py): kept apart from the decisions themselves.

    def put_fingerprints(
        self, sha256: str, prints: Mapping[int, Print], rejecting: Collection[int]
    ) -> None:
        """Keep a judged picture's fingerprints by frame in the index, in place of any kept
        before; the frames named in rejecting are marked as rejecting their picture, and
        each of their rotations and mirrors (rejecting_variants) is kept in the index of
        rejecting frames too, which lookups with rejecting_only read."""
        raise NotImplementedError

    def fingerprints(self, sha256: str) -> dict[int, Print]:
        """The fingerprints kept for a picture, by frame (empty when none were)."""
        raise NotImplementedError

    def indexed_near(
        self,
        probes: Sequence[Collection[int]],
        close: Callable[[int], bool],
        rejecting_only: bool = False,
    ) -> list[Indexed]:
        """Every indexed fingerprint whose slot i (Print.bands) is one of probes[i] and whose
        hash (256 bits) close() accepts, once each. close() sees every candidate: the rest
        of an entry is read only for those it keeps. With rejecting_only, the index of
        rejecting frames is read instead, whose entries are every rotation and mirror of
        those frames (each answered as found, marked rejecting): a lookup with a hash's own
        slots there finds what a lookup with its 8 variants finds among rejecting frames,
        at an eighth of the slot values."""
        raise NotImplementedError

    def link_duplicate(self, original: str, key: str, linked: bool = True) -> None:
        """Note (or, linked False, drop the note) that the decision at key rejects a
        duplicate of the picture whose content hash is original."""
        raise NotImplementedError

    def duplicates_of(self, original: str) -> list[str]:
        """The keys noted as rejecting duplicates of that picture, in key order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


class ChangeFeed:
    """The listeners of a store's change notifications, and the thread that feeds them.

    Each process starts its own feeding thread on its first subscription (threads do
    not survive a fork); each change carries its sender, a random id per store object,
    so that a process is not told of its own changes.
    """

    def __init__(self, feed: Callable[[], None]) -> None:
        self._feed = feed
        self._listeners: list[Callable[[str | None], None]] = []
        self._pid = 0
        self.sender = uuid.uuid4().hex
        self.closed = threading.Event()

    def subscribe(self, changed: Callable[[str | None], None]) -> None:
        self._listeners.append(changed)
        if self._pid != os.getpid():
            self._pid = os.getpid()
            threading.Thread(target=self._feed, name="moderation-changes", daemon=True).start()

    def ticks(self, seconds: float) -> Iterator[None]:
        """Every `seconds` on a fixed cadence until closed: a slow poll does not push the
        next one back, and one that overran its period is followed at once."""
        due = time.monotonic() + seconds
        while not self.closed.wait(max(0.0, due - time.monotonic())):
            yield
            due = max(due + seconds, time.monotonic())

    def notify(self, key: str | None) -> None:
        """Tell every listener; one that fails does not stop the others."""
        for listener in list(self._listeners):
            try:
                listener(key)
            except Exception:
                logger.exception("decision change listener failed")


def load_store(settings: Settings) -> Store:
    """Instantiate the Store class of the module MODERATION_DECISION_STORE names."""
    return _store_class(settings)(settings)


def check_settings(settings: Settings) -> None:
    """Raise ConfigurationError if the configured store cannot work with these settings."""
    _store_class(settings).check_settings(settings)


def _store_class(settings: Settings) -> type[Store]:
    module = importlib.import_module(settings.decision_store)
    store_class = getattr(module, "Store", None)
    if not isinstance(store_class, type) or not issubclass(store_class, Store):
        raise TypeError(
            f"MODERATION_DECISION_STORE module {settings.decision_store} has no Store class"
        )
    return store_class
