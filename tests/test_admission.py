"""The decode budget and the background queue on their own (moderation/admission.py);
tests/test_overload.py shows them through Thumbor."""

from __future__ import annotations

import asyncio
import io
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from thumbor_rekognition.moderation.admission import Backlog, DecodeBudget, Queued, decoded_cost
from thumbor_rekognition.moderation.memory import STALE_KEPT_SECONDS, DecisionCache


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


def test_the_backlog_keeps_order_one_entry_per_content_and_its_bounds() -> None:
    backlog = Backlog(entries=2, size=10)
    assert backlog.offer("h1", Queued("a", "a.png", b"12345"))
    assert backlog.offer("h1", Queued("a2", "a2.png", b"12345"))  # the same bytes: queued once
    assert not backlog.offer("h2", Queued("b", "b.png", b"123456"))  # 11 bytes > 10
    assert backlog.offer("h3", Queued("c", "c.png", b"1234"))
    assert not backlog.offer("h4", Queued("d", "d.png", b"1"))  # a third entry
    assert (len(backlog), backlog.bytes, backlog.dropped) == (2, 9, 2)
    taken = [backlog.take(), backlog.take(), backlog.take()]
    assert [item[0] if item else None for item in taken] == ["h1", "h3", None]
    assert backlog.bytes == 0


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
