"""More new pictures than the call rate allows, through the real Thumbor app: they are
answered 'pending' at once, queued, and judged in the background as turns come, one
call each; nothing waits for a turn in a thread, so pictures already judged are answered
meanwhile.

Two calls a second and a turn wait of half a second: of eight new pictures asked at
once, the one or two whose turn comes within half a second are judged at once, the
others are answered pending without waiting and judged by the process on its own.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.servers import ThumborServer, base_config
from tests.test_call_rate import busiest_second

pytestmark = [pytest.mark.e2e, pytest.mark.timing]

TOKEN = "overload-admin-token-3c9a81f0e2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 2
NEW = 8

_sizes = itertools.count()


@pytest.fixture
def node(tmp_path: Path, images: Path, fake: FakeRekognition) -> Iterator[ThumborServer]:
    config = base_config(tmp_path, images, fake.url)
    config.update(
        {
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_WORKERS": 1,
            "REKOGNITION_MAX_CALLS_PER_SECOND": LIMIT,
            "MODERATION_TURN_WAIT_SECONDS": 0.5,
            "MODERATION_TIMEOUT_SECONDS": 12.0,
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


def in_memory(node: ThumborServer) -> dict[str, Any]:
    response = node.request("GET", "/moderation/stats", headers=AUTH)
    assert response.status == 200
    process: dict[str, Any] = json.loads(response.body)["process"]
    return process


def wait_for(condition: Any, seconds: float = 60.0) -> bool:
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


def test_a_spike_is_answered_pending_at_once_and_judged_in_the_background(
    node: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    judged = add(images, "judged", (30, 140, 60))
    assert node.get(f"/unsafe/120x90/{judged}").header("X-Moderation-Status") == "approved"
    new = [add(images, "new", (30 * n, 90, 200)) for n in range(1, NEW + 1)]

    with ThreadPoolExecutor(max_workers=NEW) as pool:
        first = list(pool.map(lambda name: node.get(f"/unsafe/100x80/{name}"), new))
    pending = [
        name
        for name, r in zip(new, first, strict=True)
        if r.header("X-Moderation-Status") == "pending"
    ]
    # Answered while the backlog is judged: a picture already judged, at a new size.
    hit = node.get(f"/unsafe/64x48/{judged}")
    queueing = in_memory(node)
    # No request asks again: the process judges the queued pictures on its own.
    all_called = wait_for(lambda: fake.call_count == 1 + NEW)
    queue_emptied = wait_for(lambda: in_memory(node)["backlog_pictures"] == 0)
    emptied = in_memory(node)
    calls = fake.call_count
    later = [node.get(f"/unsafe/100x80/{name}").header("X-Moderation-Status") for name in new]

    assert [r.status for r in first] == [200] * NEW
    assert {r.header("X-Moderation-Status") for r in first} <= {"approved", "pending"}
    # Turns come every half second, and a request waits for one half a second at most.
    assert len(pending) >= NEW - 3
    assert (hit.status, hit.header("X-Moderation-Status")) == (200, "approved")
    assert all_called
    assert queue_emptied
    # The queued originals waited in the spool, not in memory, and it was emptied.
    assert queueing["backlog_in_memory_bytes"] == 0
    assert (emptied["backlog_bytes"], emptied["backlog_in_memory_bytes"]) == (0, 0)
    assert later == ["approved"] * NEW
    # One call per picture, spaced by the rate, and none more once they are judged.
    assert calls == fake.call_count == 1 + NEW
    assert busiest_second(fake.calls) <= LIMIT + 1
    assert "queued picture" not in node.log
    assert "the spool failed" not in node.log


def test_stats_show_what_the_process_holds(node: ThumborServer, images: Path) -> None:
    name = add(images, "shown", (200, 200, 40))
    assert node.get(f"/unsafe/90x90/{name}").header("X-Moderation-Status") == "approved"

    process = in_memory(node)

    for key in (
        "judgements_in_flight",
        "backend_calls_out",
        "decode_budget_held_bytes",
        "decode_budget_waiting",
        "backlog_pictures",
        "backlog_bytes",
        "backlog_in_memory_bytes",
        "backlog_dropped",
        "decisions_cached",
    ):
        assert isinstance(process[key], int), key
    assert process["decisions_cached"] >= 1
    assert process["decode_budget_held_bytes"] == 0


def test_first_views_wait_for_room_before_they_load_their_originals(
    tmp_path: Path, images: Path, fake: FakeRekognition, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each picture costs more than the whole budget once decoded (1200x1000 pixels,
    # 4.8 MB): one first view at a time holds its original, from its loading until its
    # request ends (Thumbor decodes it too), as stock Thumbor's file loader and decoding,
    # which never yield, hold one at a time.
    log = tmp_path / "loads.jsonl"
    monkeypatch.setenv("COUNTING_LOADER_LOG", str(log))
    # Thumbor imports the counting loader from this checkout's tests package.
    root = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    config = base_config(tmp_path, images, fake.url)
    config.update(
        {
            "MODERATION_SOURCE_LOADER": "tests.fakes.counting_loader",
            "MODERATION_DECODE_BUDGET_MB": 1,
            "MODERATION_TURN_WAIT_SECONDS": 60.0,
            "MODERATION_TIMEOUT_SECONDS": 120.0,
        }
    )
    names = []
    for index in range(4):
        name = f"large-{index}-{next(_sizes)}.png"
        (images / name).write_bytes(picture((40 + 30 * index, 90, 200), size=(1200, 1000)))
        names.append(name)
    node = ThumborServer(tmp_path, config).start()
    try:
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            answers = list(pool.map(lambda name: node.get(f"/unsafe/100x80/{name}"), names))
    finally:
        node.stop()
    loads = [json.loads(line) for line in log.read_text().splitlines()]

    assert [(r.status, r.header("X-Moderation-Status")) for r in answers] == [
        (200, "approved")
    ] * len(names)
    assert sorted(load["path"] for load in loads) == sorted(names)
    # No original was loaded while another first view still held its own.
    assert [load["held"] for load in loads] == [0] * len(names)
