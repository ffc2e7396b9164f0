"""The change feed's polling cadence, shared by the stores that poll."""

from __future__ import annotations

import threading
import time

import pytest

from thumbor_rekognition.stores import ChangeFeed


@pytest.mark.timing
def test_slow_polls_keep_the_cadence_instead_of_adding_their_time_to_it() -> None:
    feed = ChangeFeed(lambda: None)
    period, work, polls = 0.2, 0.15, 8
    started = time.monotonic()

    for count, _ in enumerate(feed.ticks(period), start=1):
        time.sleep(work)
        if count == polls:
            break
    elapsed = time.monotonic() - started

    # On a fixed cadence the last poll starts at polls * period; drifting, at
    # polls * (period + work) - work: 2.65 s here against 1.6 s.
    assert elapsed < polls * period + work + 0.6


def test_ticks_stop_when_the_feed_is_closed() -> None:
    feed = ChangeFeed(lambda: None)
    threading.Timer(0.3, feed.closed.set).start()

    count = sum(1 for _ in feed.ticks(0.1))

    assert feed.closed.is_set()
    assert count <= 5
