"""More new pictures than the call rate allows, through the real Thumbor app: requests of
pictures already judged do not queue behind calls waiting for their turn.

One worker thread (MODERATION_WORKERS = 1) and one call every two seconds: four new
pictures asked at once hold turns 0, 2, 4 and 6 s away. A picture already approved,
asked at a size never rendered, is read back from storage and hashed; it must be
answered while the new pictures still wait for their turns, not after them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.servers import ThumborServer, base_config

pytestmark = [pytest.mark.e2e, pytest.mark.timing]

_sizes = itertools.count()


@pytest.fixture
def node(tmp_path: Path, images: Path, fake: FakeRekognition) -> Iterator[ThumborServer]:
    config = base_config(tmp_path, images, fake.url)
    config.update(
        {
            "MODERATION_WORKERS": 1,
            "REKOGNITION_MAX_CALLS_PER_SECOND": 0.5,
            "MODERATION_TIMEOUT_SECONDS": 12.0,
            "REKOGNITION_TIMEOUT_SECONDS": 12.0,
        }
    )
    thumbor = ThumborServer(tmp_path, config).start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def add(images: Path, stem: str, color: tuple[int, int, int]) -> str:
    name = f"{stem}-{next(_sizes)}.png"
    (images / name).write_bytes(picture(color, size=(160, 100 + next(_sizes))))
    return name


def test_a_picture_already_judged_is_answered_while_new_ones_wait_for_their_turn(
    node: ThumborServer, images: Path
) -> None:
    judged = add(images, "judged", (30, 140, 60))
    assert node.get(f"/unsafe/120x90/{judged}").header("X-Moderation-Status") == "approved"
    # Its turn used: the next call may start two seconds from now.
    new = [add(images, "new", (40 * n, 90, 200)) for n in range(1, 5)]
    finished: list[str] = []
    lock = threading.Lock()

    def ask(name: str) -> None:
        node.request("GET", f"/unsafe/100x80/{name}", timeout=60)
        with lock:
            finished.append(name)

    waiting = [threading.Thread(target=ask, args=(name,)) for name in new]
    for thread in waiting:
        thread.start()
    time.sleep(0.5)  # the new pictures are prepared and waiting for their turns
    hit = node.request("GET", f"/unsafe/64x48/{judged}", timeout=60)
    with lock:
        new_done_before_hit = list(finished)
    for thread in waiting:
        thread.join()

    assert hit.status == 200
    assert hit.header("X-Moderation-Status") == "approved"
    # The last new picture's turn is 6 s away: calls wait for their turns in threads of
    # their own, and the hit does not wait behind them (it used to wait behind them all).
    assert len(new_done_before_hit) < len(new)
