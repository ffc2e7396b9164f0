"""Hash banks: files of PDQ hashes of known pictures, matched before the backend is paid.

MODERATION_HASH_BANKS names the files, each with an action: a picture whose PDQ hash is
within MODERATION_HASH_BANK_DISTANCE bits of an entry of a ``reject`` bank (known bad
pictures, an industry hash list) is rejected without a backend call, one within that of
an ``approve`` bank (known false positives) is approved without one; reject wins. The
picture's 8 rotations and mirrors are compared, so a mirrored copy matches too.

A bank file holds one hash a line: 64 hex digits, optionally followed by ``,note``;
blank lines and lines starting with ``#`` are skipped. The CSV that the ``threatexchange``
command line exports (``threatexchange dataset -P --csv``: a header, then
``signal_type,signal_str,collab,category,tags``) is read too: its ``pdq`` rows, noted
with their collaboration and category. A line that is neither is logged and skipped; a
file that cannot be read keeps the entries last read from it (an empty bank at start).

Files are looked at again (size and modification time) every
MODERATION_HASH_BANK_RELOAD_SECONDS by each process's watcher, and read again when
either changed; lookups meanwhile use the banks as last read.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import logging
import os
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from thumbor_rekognition import pdq
from thumbor_rekognition.pdq_index import PdqIndex, packed

logger = logging.getLogger(__name__)

REJECT = "reject"
APPROVE = "approve"
ACTIONS = (REJECT, APPROVE)
_CSV_HEADER = "signal_type"


@dataclass(frozen=True)
class BankConfig:
    """One bank as MODERATION_HASH_BANKS names it."""

    name: str
    path: str
    action: str
    enabled: bool = True


def configs(value: Any) -> tuple[BankConfig, ...]:
    """The banks of a MODERATION_HASH_BANKS value; ValueError saying what is wrong."""
    if value is None or value == "" or value == []:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError("Not a list of banks ({'name': ..., 'path': ..., 'action': ...}).")
    banks: list[BankConfig] = []
    for item in value:
        if not isinstance(item, Mapping):
            raise ValueError(f"{item!r} is not a mapping with name, path and action.")
        unknown = set(item) - {"name", "path", "action", "enabled"}
        if unknown:
            raise ValueError(f"Unknown fields: {', '.join(sorted(unknown))}.")
        name, path, action = item.get("name"), item.get("path"), item.get("action")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{dict(item)!r} needs a 'name'.")
        if not isinstance(path, str) or not path.strip():
            raise ValueError(f"Bank '{name}' needs a 'path' to its file.")
        if action not in ACTIONS:
            raise ValueError(f"Bank '{name}' has action {action!r}: 'reject' or 'approve'.")
        enabled = item.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ValueError(f"Bank '{name}' has 'enabled' {enabled!r}: True or False.")
        if any(bank.name == name for bank in banks):
            raise ValueError(f"Two banks are named '{name}'.")
        banks.append(BankConfig(name.strip(), path, action, enabled))
    return tuple(banks)


@dataclass(frozen=True)
class Entry:
    """One hash of a bank, the note beside it, and the line it is on."""

    value: int
    note: str
    line: int

    def text(self) -> str:
        """The entry as a person reads it: the hash, then its note."""
        return f"{pdq.hex_of(self.value)} ({self.note})" if self.note else pdq.hex_of(self.value)


@dataclass(frozen=True)
class Match:
    """A bank entry a picture is within the bank distance of, and how many bits apart."""

    bank: str
    action: str
    entry: Entry
    distance: int


def parse(text: str, name: str = "") -> list[Entry]:
    """The entries of a bank file's text; lines that hold no hash are logged and skipped."""
    entries: list[Entry] = []
    skipped = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        entry = _entry(stripped, number)
        if entry is None:
            skipped += 1
            if skipped <= 3:
                logger.warning("hash bank %s, line %d: no PDQ hash in %.80r", name, number, line)
        elif entry.value >= 0:
            entries.append(entry)
    if skipped > 3:
        logger.warning("hash bank %s: %d lines without a PDQ hash skipped", name, skipped)
    return entries


def _entry(line: str, number: int) -> Entry | None:
    if len(line) >= pdq.HEX_DIGITS and line[pdq.HEX_DIGITS : pdq.HEX_DIGITS + 1] in ("", ","):
        # The common line, read without the CSV reader: millions of them in a list.
        try:
            value = int(line[: pdq.HEX_DIGITS], 16)
        except ValueError:
            return None
        return Entry(value, line[pdq.HEX_DIGITS + 1 :].strip(), number)
    fields = next(csv.reader([line]))
    first = fields[0].strip().lower() if fields else ""
    if first == _CSV_HEADER:
        return Entry(-1, "", number)
    if first == "pdq" and len(fields) >= 2:
        # threatexchange's CSV: signal_type, signal_str, collab, category, tags.
        hashed, note = fields[1], " ".join(field.strip() for field in fields[2:4] if field.strip())
    elif first in ("video_md5", "md5", "raw_text", "url", "text", "vpdq"):
        return Entry(-1, "", number)
    else:
        hashed, _, note = line.partition(",")
    try:
        return Entry(pdq.parse(hashed), note.strip(), number)
    except ValueError:
        return None


class _Notes:
    """The notes of a bank's entries as one buffer of UTF-8 and where each begins: not a
    million Python strings for the garbage collector to walk through at every full
    collection, and 8 bytes an entry beside its text."""

    def __init__(self, notes: Iterable[str]) -> None:
        encoded = [note.encode() for note in notes]
        self._text = b"".join(encoded)
        self._ends = array("q", itertools.accumulate(len(note) for note in encoded))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, position: int) -> str:
        start = self._ends[position - 1] if position else 0
        return self._text[start : self._ends[position]].decode()


@dataclass(frozen=True)
class _Read:
    """A bank file as read once: its hashes indexed, their notes and line numbers (not
    Entry objects: at millions of hashes, they would take more than the index), and a
    digest of the hashes, the same on every node reading the same list."""

    index: PdqIndex
    notes: _Notes
    lines: array[int]
    digest: str = ""

    def entry(self, position: int) -> Entry:
        """The entry at a position of the index."""
        value = int.from_bytes(self.index.words[position].astype(">u8").tobytes(), "big")
        return Entry(value, self.notes[position], self.lines[position])


class _Bank:
    """One bank file as last read."""

    def __init__(self, config: BankConfig) -> None:
        self.config = config
        # Replaced whole: a lookup during a reload sees the file as read before or after.
        self.read = _Read(PdqIndex(packed([])), _Notes([]), array("l"))
        self.stamp: tuple[int, int] | None = None

    def reload(self) -> bool:
        """Read the file again when its size or modification time changed; whether it was."""
        try:
            status = os.stat(self.config.path)
            stamp = (status.st_mtime_ns, status.st_size)
            if stamp == self.stamp:
                return False
            with open(self.config.path, encoding="utf-8", errors="replace") as file:
                entries = parse(file.read(), self.config.name)
        except OSError as error:
            if self.stamp is not None or not self.read.notes:
                logger.error("hash bank %s not read: %s", self.config.name, error)
            self.stamp = None
            return False
        values = [entry.value for entry in entries]
        self.read = _Read(
            PdqIndex(packed(values)),
            _Notes(entry.note for entry in entries),
            array("l", (entry.line for entry in entries)),
            hashlib.sha256(packed(sorted(values)).tobytes()).hexdigest()[:32],
        )
        self.stamp = stamp
        logger.info("hash bank %s: %d entries read", self.config.name, len(entries))
        return True


class HashBanks:
    """The configured banks, read again when their files change; thread-safe."""

    def __init__(
        self,
        banks: Iterable[BankConfig],
        distance: int,
        reload_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._banks = [_Bank(config) for config in banks if config.enabled]
        self.distance = distance
        self.reload_seconds = reload_seconds
        self._clock = clock
        self._checked: float | None = None
        self._lock = threading.Lock()
        # One reader of the files at a time; lookups go on meanwhile with what was read.
        self._reading = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._banks)

    def refresh(self, force: bool = False) -> list[BankConfig]:
        """Read again the files that changed, when last looked at reload_seconds ago or
        more; the banks read again."""
        with self._lock:
            now = self._clock()
            recent = self._checked is not None and now - self._checked < self.reload_seconds
            if recent and not force:
                return []
            self._checked = now
        with self._reading:
            return [bank.config for bank in self._banks if bank.reload()]

    def match(self, hashes: Iterable[pdq.Hash]) -> Match | None:
        """The bank entry these frames' hashes match, a reject bank's over an approve
        bank's, the nearest first; None when none is within the distance."""
        queries = [hashed for hashed in hashes if hashed.usable]
        if not queries or not self._banks:
            return None
        if self._checked is None:
            # Read once here; after that by the watcher (Banking.watch_banks), so that no
            # lookup waits for a large file to be read again.
            self.refresh()
        variants = packed(
            [value for hashed in queries for value in hashed.variants or (hashed.value,)]
        )
        found: list[Match] = []
        for bank in self._banks:
            read = bank.read
            nearest = read.index.nearest(variants, self.distance)
            if nearest is not None:
                entry = read.entry(nearest[0])
                found.append(Match(bank.config.name, bank.config.action, entry, nearest[1]))
        if not found:
            return None
        return min(found, key=lambda match: (match.action != REJECT, match.distance))

    def listed(self, name: str, value: int) -> tuple[Entry, int] | None:
        """The entry of a bank within the distance of one hash (a stored picture's, its
        rotations unknown), and how far; None when there is none."""
        for bank in self._banks:
            if bank.config.name == name:
                read = bank.read
                nearest = read.index.nearest(packed([value]), self.distance)
                return (read.entry(nearest[0]), nearest[1]) if nearest is not None else None
        return None

    def digest(self, name: str) -> str:
        """A digest of a bank's hashes as last read, for the processes of a cluster to
        agree on whether pictures already judged were searched for them."""
        for bank in self._banks:
            if bank.config.name == name:
                return bank.read.digest
        return ""
