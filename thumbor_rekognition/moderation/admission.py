"""What a process lets in when more new pictures arrive than it can judge: a budget of
memory for the pictures being judged, and a bounded queue of those answered 'pending'
because the call rate was spent, judged in the background as turns come."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import io
import logging
import os
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from PIL import Image

from thumbor_rekognition.moderation.memory import sha256_hex

logger = logging.getLogger("thumbor_rekognition.moderator")

# Bytes per decoded pixel counted for a picture: RGBA, the widest mode preparation uses.
BYTES_PER_PIXEL = 4
# How many of the last pictures let in give what one not loaded yet is expected to cost.
RECENT_COSTS = 8
# Decoded pixels from which the memory freed after preparing a picture is handed back.
TRIM_FROM = 32 * 1024 * 1024


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc
        return None
    return trim


def give_back_memory() -> bool:
    """Hand the memory the C heaps hold free back to the system (glibc's malloc_trim);
    False where there is no such call.

    Pixels decoded in a worker thread are freed into that thread's heap, which keeps
    what it grew to: measured, preparing a 4082x4082 PNG in a thread left 75 MB more
    resident after it than before, 5 MB once trimmed, and pictures prepared one after
    the other in different threads left the sum of their peaks. Blocking.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def decoded_cost(buffer: bytes, max_frames: int, max_side: int) -> int:
    """What judging these bytes may hold at once: the bytes, and their pixels decoded, for
    every scene up to max_frames (a JPEG as preparation decodes it, reduced towards
    max_side by its draft mode). Read from the header only; unreadable: the bytes alone
    (preparation refuses them without decoding)."""
    try:
        with Image.open(io.BytesIO(buffer)) as image:
            width, height = image.size
            frames = min(max(1, getattr(image, "n_frames", 1)), max_frames)
            draft = image.format == "JPEG"
    except Exception:  # any unreadable header: preparation says why
        return len(buffer)
    if draft:
        # Pillow decodes a JPEG at 1/2, 1/4 or 1/8 scale, never below the size asked for.
        scale = 1
        while scale < 8 and max(width, height) // (scale * 2) >= max_side:
            scale *= 2
        width, height = -(-width // scale), -(-height // scale)
    return len(buffer) + width * height * BYTES_PER_PIXEL * frames


class DecodeBudget:
    """Bytes of originals and decoded pixels a process holds for judging, at most `limit`.

    Pictures are let in first come, first served; one waits for room until its deadline.
    One larger than the whole budget is let in alone, when nothing else is held, so that
    every picture can be judged. A picture not loaded yet is let in for what it is
    expected to cost (see expected), and settled at its cost once loaded. Used from the
    event loop only.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._recent: deque[int] = deque(maxlen=RECENT_COSTS)

    @property
    def expected(self) -> int:
        """What a picture not loaded yet is expected to cost: the most any of the last
        pictures settled cost; nothing before any was (a request may be loading its
        original from this very process: holding the whole budget meanwhile would make
        the request for it wait for room that only its own answer gives back)."""
        return max(self._recent, default=0)

    def settle(self, expected: int, cost: int) -> None:
        """Count a picture let in for `expected` at its `cost`, known once it is loaded.
        Never waits: its bytes are in memory already; later pictures wait for it."""
        self._recent.append(cost)
        self.held += cost - expected
        self._admit()

    def _fits(self, cost: int) -> bool:
        return self.held == 0 or self.held + cost <= self.limit

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, cost: int, deadline: float) -> bool:
        """Hold `cost` bytes of the budget; False when there was no room before deadline
        (time.monotonic())."""
        if not self._waiting and self._fits(cost):
            self.held += cost
            return True
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (cost, admitted)
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(
                asyncio.shield(admitted), timeout=max(0.0, deadline - time.monotonic())
            )
        except asyncio.TimeoutError:
            if admitted.done():
                return True  # let in as the wait ran out: held, the caller releases it
            self._waiting.remove(entry)
            self._admit()
            return False
        return True

    def release(self, cost: int) -> None:
        self.held -= cost
        self._admit()

    def _admit(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            cost, admitted = self._waiting.popleft()
            self.held += cost
            admitted.set_result(None)


@dataclass(frozen=True, slots=True)
class Queued:
    """A picture answered 'pending' because no turn to call came in time: where its
    original lies in the spool, or the original itself where the spool could not take it."""

    key: str
    url: str
    offset: int
    length: int
    kept: bytes | None = None


class Backlog:
    """Pictures to judge when turns come, oldest first, one entry per content hash,
    bounded in entries and in bytes. What does not fit is judged on its next request.

    The originals wait outside the process's memory, appended to one anonymous temporary
    file (the spool: one descriptor, in the system's temporary directory, TMPDIR; gone
    with the process), emptied whenever the queue is. `size` bounds the spool with the
    originals kept in memory, which are those the spool could not take (no room on the
    disk, a directory not writable). Used from the event loop, but for read.
    """

    def __init__(self, entries: int, size: int) -> None:
        self.entries = entries
        self.size = size
        # Bytes of the spool (queued originals and those taken since it was last emptied).
        self.spooled = 0
        # Bytes of the originals the spool could not take, queued or being read.
        self.kept = 0
        self.dropped = 0
        self._items: OrderedDict[str, Queued] = OrderedDict()
        self._spool: IO[bytes] | None = None
        # Whether the spool failed since it last worked: said once in the log.
        self._failing = False
        # Entries taken and not released yet: their bytes must stay where they are.
        self._reading = 0

    @property
    def held(self) -> int:
        """What the queue holds: its spool's bytes and the originals kept in memory."""
        return self.spooled + self.kept

    def offer(self, sha256: str, key: str, url: str, buffer: bytes) -> bool:
        """Queue a picture; False when it does not fit (counted in dropped)."""
        if sha256 in self._items:
            return True
        if len(self._items) >= self.entries or self.held + len(buffer) > self.size:
            self.dropped += 1
            return False
        if self._spool_write(buffer):
            item = Queued(key, url, self.spooled, len(buffer))
            self.spooled += len(buffer)
        else:
            item = Queued(key, url, 0, len(buffer), kept=buffer)
            self.kept += len(buffer)
        self._items[sha256] = item
        return True

    def _spool_write(self, buffer: bytes) -> bool:
        # A write into the page cache, no fsync: cheap enough for the event loop.
        try:
            if self._spool is None:
                # Open for the life of the process, not of a block.
                self._spool = tempfile.TemporaryFile(prefix="thumbor-rekognition-backlog-")  # noqa: SIM115
            written = 0
            while written < len(buffer):
                done = os.pwrite(
                    self._spool.fileno(), memoryview(buffer)[written:], self.spooled + written
                )
                if done == 0:
                    raise OSError("nothing written")
                written += done
        except OSError as error:
            if not self._failing:
                logger.warning(
                    "background queue: originals kept in memory, the spool failed: %s", error
                )
            self._failing = True
            return False
        self._failing = False
        return True

    def take(self) -> tuple[str, Queued] | None:
        """The oldest picture queued, taken out of the queue; None when it is empty.
        Its bytes (see read) stay until it is released."""
        if not self._items:
            return None
        sha256, item = self._items.popitem(last=False)
        self._reading += 1
        return sha256, item

    def read(self, sha256: str, item: Queued) -> bytes | None:
        """The original of a picture taken, None when it cannot be read back as it was
        queued (said in the log). Blocking: hashes the bytes, in a thread."""
        if item.kept is not None:
            return item.kept
        try:
            if self._spool is None:
                raise OSError("no spool")
            buffer = os.pread(self._spool.fileno(), item.length, item.offset)
        except OSError as error:
            logger.warning(
                "queued picture %s not judged: its original not read back: %s", item.key, error
            )
            return None
        if len(buffer) != item.length or sha256_hex(buffer) != sha256:
            logger.warning(
                "queued picture %s not judged: its original changed in the spool", item.key
            )
            return None
        return buffer

    def release(self, item: Queued) -> None:
        """Done with a picture taken: once none is queued or being read, the spool is
        emptied (the disk space given back; it grows again from nothing)."""
        self._reading -= 1
        if item.kept is not None:
            self.kept -= item.length
        if self._items or self._reading or not self.spooled:
            return
        self.spooled = 0
        if self._spool is None:
            return
        try:
            os.ftruncate(self._spool.fileno(), 0)
        except OSError as error:
            logger.warning("background queue: spool not emptied, opened anew: %s", error)
            self._spool.close()
            self._spool = None

    def __len__(self) -> int:
        return len(self._items)
