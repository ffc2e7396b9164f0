"""The decode budget and the background queue on their own (moderation/admission.py);
tests/test_overload.py shows them through Thumbor."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import io
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from thumbor_rekognition.moderation import admission
from thumbor_rekognition.moderation.admission import Backlog, DecodeBudget, decoded_cost
from thumbor_rekognition.moderation.memory import STALE_KEPT_SECONDS, DecisionCache, sha256_hex


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_cost_of_a_picture_is_its_bytes_and_its_pixels_decoded() -> None:
    data = png(300, 200)
    assert decoded_cost(data, 20, 1600) == len(data) + 300 * 200 * 4
    # Not a picture: its bytes only (preparation refuses it without decoding).
    assert decoded_cost(b"not a picture", 20, 1600) == len(b"not a picture")


def test_a_large_jpeg_costs_what_its_draft_decoding_holds() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3000), (10, 20, 30)).save(buffer, "JPEG")
    data = buffer.getvalue()
    # Decoded at half size: 2000x1500 is still above 1024 a side, 1000x750 would not be.
    assert decoded_cost(data, 20, 1024) == len(data) + 2000 * 1500 * 4
    assert decoded_cost(data, 20, 4000) == len(data) + 4000 * 3000 * 4


def test_pictures_wait_for_room_first_come_first_served() -> None:
    async def scenario() -> list[str]:
        budget = DecodeBudget(100)
        order: list[str] = []
        assert await budget.acquire(60, time.monotonic() + 1)

        async def later(name: str, cost: int) -> None:
            if await budget.acquire(cost, time.monotonic() + 5):
                order.append(name)

        waiting = [asyncio.ensure_future(later("b", 50)), asyncio.ensure_future(later("c", 10))]
        await asyncio.sleep(0.05)
        # c would fit now, but b came first: nobody jumps the queue.
        assert order == []
        assert budget.waiting == 2
        budget.release(60)
        await asyncio.gather(*waiting)
        assert budget.held == 60
        return order

    assert asyncio.run(scenario()) == ["b", "c"]


def test_a_picture_larger_than_the_budget_is_let_in_alone() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        budget = DecodeBudget(100)
        alone = await budget.acquire(500, time.monotonic() + 1)
        beside = await budget.acquire(1, time.monotonic() + 0.05)
        budget.release(500)
        after = await budget.acquire(1, time.monotonic() + 0.05)
        return alone, beside, after

    assert asyncio.run(scenario()) == (True, False, True)


def test_a_wait_that_runs_out_lets_the_next_in() -> None:
    async def scenario() -> tuple[bool, bool, int]:
        budget = DecodeBudget(100)
        await budget.acquire(90, time.monotonic() + 1)
        big = asyncio.ensure_future(budget.acquire(50, time.monotonic() + 0.05))
        small = asyncio.ensure_future(budget.acquire(10, time.monotonic() + 5))
        gave_up = await big
        let_in = await small
        return gave_up, let_in, budget.held

    assert asyncio.run(scenario()) == (False, True, 100)


def offer(backlog: Backlog, key: str, buffer: bytes) -> bool:
    return backlog.offer(sha256_hex(buffer), key, f"{key}.png", buffer)


def judge_all(backlog: Backlog) -> list[tuple[str, bytes | None]]:
    """What draining the queue reads back, oldest first: (key, original)."""
    read = []
    while (queued := backlog.take()) is not None:
        sha256, item = queued
        read.append((item.key, backlog.read(sha256, item)))
        backlog.release(item)
    return read


def spool_size(backlog: Backlog) -> int:
    assert backlog._spool is not None
    return os.fstat(backlog._spool.fileno()).st_size


def test_the_backlog_keeps_order_one_entry_per_content_and_its_bounds() -> None:
    backlog = Backlog(entries=2, size=10)
    assert offer(backlog, "a", b"12345")
    assert offer(backlog, "a2", b"12345")  # the same bytes: queued once
    assert not offer(backlog, "b", b"123456")  # 11 bytes > 10
    assert offer(backlog, "c", b"1234")
    assert not offer(backlog, "d", b"1")  # a third entry
    assert (len(backlog), backlog.held, backlog.dropped) == (2, 9, 2)

    read = judge_all(backlog)

    assert read == [("a", b"12345"), ("c", b"1234")]
    assert backlog.take() is None
    assert backlog.held == 0


def test_queued_originals_wait_in_the_spool_not_in_memory() -> None:
    originals = [png(40 + n, 30) for n in range(5)]
    backlog = Backlog(entries=10, size=1 << 20)

    for n, original in enumerate(originals):
        assert offer(backlog, f"p{n}", original)
    queued = list(backlog._items.values())

    # The queue holds where each original lies, not the original.
    assert all(item.kept is None for item in queued)
    assert not any(
        isinstance(getattr(item, field.name), bytes)
        for item in queued
        for field in dataclasses.fields(item)
    )
    assert (backlog.held, backlog.kept) == (sum(map(len, originals)), 0)
    assert spool_size(backlog) == sum(map(len, originals))
    assert judge_all(backlog) == [(f"p{n}", original) for n, original in enumerate(originals)]


def test_the_spool_is_emptied_once_the_queue_is_and_grows_again_from_nothing() -> None:
    backlog = Backlog(entries=10, size=1 << 20)
    assert offer(backlog, "a", png(50, 50))
    assert offer(backlog, "b", png(60, 50))
    sha256, first = backlog.take() or ("", None)
    assert first is not None

    # Queued meanwhile: appended after what is being read.
    assert offer(backlog, "c", png(70, 50))
    assert backlog.read(sha256, first) == png(50, 50)
    backlog.release(first)
    grown = spool_size(backlog)
    read = judge_all(backlog)
    emptied = spool_size(backlog)
    assert offer(backlog, "d", png(80, 50))

    assert grown == len(png(50, 50)) + len(png(60, 50)) + len(png(70, 50))
    assert read == [("b", png(60, 50)), ("c", png(70, 50))]
    assert (emptied, backlog.held) == (0, len(png(80, 50)))
    assert spool_size(backlog) == len(png(80, 50))
    assert judge_all(backlog) == [("d", png(80, 50))]


def test_an_original_changed_in_the_spool_is_not_judged(caplog: pytest.LogCaptureFixture) -> None:
    backlog = Backlog(entries=10, size=1 << 20)
    assert offer(backlog, "changed", png(50, 50))
    assert offer(backlog, "intact", png(60, 50))
    assert backlog._spool is not None
    os.pwrite(backlog._spool.fileno(), b"XX", 12)  # "IHDR" of the first: "XXDR"

    read = judge_all(backlog)

    # Skipped, to be judged on its next request; the next one is read as it was.
    assert read == [("changed", None), ("intact", png(60, 50))]
    assert "queued picture changed not judged: its original changed in the spool" in caplog.text
    assert spool_size(backlog) == 0


def test_an_original_that_cannot_be_read_back_is_not_judged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    backlog = Backlog(entries=10, size=1 << 20)
    assert offer(backlog, "unread", png(50, 50))

    def failing(fd: int, length: int, offset: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(admission.os, "pread", failing)
    read = judge_all(backlog)

    assert read == [("unread", None)]
    assert "queued picture unread not judged: its original not read back" in caplog.text
    assert backlog.held == 0


@pytest.mark.parametrize("failure", ["no temporary directory", "disk full"])
def test_originals_the_spool_cannot_take_are_kept_in_memory_within_the_bound(
    failure: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if failure == "no temporary directory":
        monkeypatch.setattr(admission.tempfile, "tempdir", str(tmp_path / "missing"))
    else:

        def full(fd: int, data: bytes, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(admission.os, "pwrite", full)
    backlog = Backlog(entries=10, size=300)

    queued = [offer(backlog, "a", b"a" * 100), offer(backlog, "b", b"b" * 150)]
    dropped = offer(backlog, "c", b"c" * 100)  # 350 bytes > 300
    held = (backlog.held, backlog.kept, backlog.dropped)
    read = judge_all(backlog)

    assert queued == [True, True]
    assert not dropped
    assert held == (250, 250, 1)
    assert read == [("a", b"a" * 100), ("b", b"b" * 150)]
    assert (backlog.held, backlog.kept) == (0, 0)
    # Said once, not once a picture.
    assert caplog.text.count("originals kept in memory, the spool failed") == 1


def test_decisions_expired_long_ago_are_dropped_from_memory(monkeypatch: object) -> None:
    from thumbor_rekognition.decision import Decision, Source, Status
    from thumbor_rekognition.moderation import memory

    now = [1000.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: now[0])  # type: ignore[attr-defined]
    cache = DecisionCache(ttl=2.0, size=100)
    decision = Decision(key="a", url="a", sha256="h", status=Status.APPROVED, source=Source.AUTO)
    cache.put("old", decision)
    now[0] += 10
    cache.put("recent", decision)
    # Expired, but kept to answer while the store is unreachable.
    assert cache.get("old") is None
    assert cache.stale("old") is decision
    now[0] += STALE_KEPT_SECONDS
    cache.put("new", decision)
    assert cache.stale("old") is None
    assert cache.stale("recent") is decision
    assert len(cache) == 2


def test_a_picture_not_loaded_yet_is_let_in_for_what_the_last_ones_cost() -> None:
    async def scenario() -> tuple[int, int, bool, int]:
        budget = DecodeBudget(100)
        # Nothing known yet: nothing held while it is loaded.
        first = budget.expected
        assert await budget.acquire(first, time.monotonic() + 1)
        budget.settle(first, 70)
        expected = budget.expected
        # 70 held, and the next one is expected to cost 70 too: it waits.
        beside = await budget.acquire(expected, time.monotonic() + 0.05)
        return first, expected, beside, budget.held

    assert asyncio.run(scenario()) == (0, 70, False, 70)


def test_memory_freed_after_preparing_a_large_picture_is_handed_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from thumbor_rekognition.moderation import calls

    trimmed: list[bool] = []
    monkeypatch.setattr(calls, "give_back_memory", lambda: trimmed.append(True))
    settings = SimpleNamespace(
        analysis_max_side=1600, max_pixels=100_000_000, max_frames=5, respect_orientation=True
    )
    moderator = SimpleNamespace(settings=settings, backend=SimpleNamespace(max_side=None))

    # 1000x1000 decoded is 4 MB: kept by the thread's heap for the next picture.
    calls.Calls.prepare(moderator, png(1000, 1000))  # type: ignore[arg-type]
    assert trimmed == []
    # 3000x3000 is 36 MB: handed back once prepared.
    calls.Calls.prepare(moderator, png(3000, 3000))  # type: ignore[arg-type]
    assert trimmed == [True]
