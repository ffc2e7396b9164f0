"""REKOGNITION_MAX_CALLS_PER_SECOND end to end: real Thumbor servers sharing one decision
store (a real redis-server, one SQLite file under ``--processes=2``, DynamoDB on moto's
server) and the fake Rekognition endpoint, which records when each call arrives.

The limit is judged where AWS would judge it, at the endpoint: in no second do more
calls arrive than the limit, one call of slack allowed for the network. Nothing here
times a request.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import picture
from tests.fakes.rekognition import Call, FakeRekognition
from tests.moto_server import moto_server_process
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.servers import Response, ThumborServer, aws_test_environment, base_config

# Every test here counts calls per second of wall-clock time: run alone (`make test`).
pytestmark = [pytest.mark.e2e, pytest.mark.timing]

LIMIT = 2
PICTURES = 12
BLUE = (20, 40, 210)

_sizes = itertools.count()


def add_pictures(images: Path, count: int) -> list[str]:
    """New pictures, each with bytes of its own (so each needs a call of its own)."""
    images.mkdir(parents=True, exist_ok=True)
    names = []
    for _ in range(count):
        name = f"rate-{uuid.uuid4().hex[:8]}.png"
        (images / name).write_bytes(picture(BLUE, size=(160, 100 + next(_sizes))))
        names.append(name)
    return names


def status_of(response: Response) -> str | None:
    return response.header("X-Moderation-Status")


def busiest_second(calls: list[Call]) -> int:
    """The most calls that arrived at the endpoint within any one second."""
    times = sorted(call.at for call in calls)
    return max(sum(1 for other in times if start <= other < start + 1.0) for start in times)


def limited_config(root: Path, images: Path, fake: FakeRekognition, **extra: Any) -> dict[str, Any]:
    config = base_config(root, images, fake.url)
    config.update(
        {
            "REKOGNITION_MAX_CALLS_PER_SECOND": LIMIT,
            # Long enough for every picture of a burst to get its turn.
            "MODERATION_TIMEOUT_SECONDS": 60.0,
            "MODERATION_TURN_WAIT_SECONDS": 60.0,
            **extra,
        }
    )
    return config


def burst(nodes: list[ThumborServer], names: list[str]) -> list[Response]:
    """A first request for every picture at once, spread over the nodes."""
    requests = [
        (nodes[index % len(nodes)], f"/unsafe/60x60/{name}") for index, name in enumerate(names)
    ]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(
            pool.map(lambda request: request[0].request("GET", request[1], timeout=90), requests)
        )


def run_nodes(
    configs: list[dict[str, Any]], roots: list[Path], processes: int = 1
) -> list[ThumborServer]:
    nodes = [
        ThumborServer(root, config, processes=processes)
        for root, config in zip(roots, configs, strict=True)
    ]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready()
    return nodes


def stop(nodes: list[ThumborServer]) -> None:
    for node in nodes:
        node.stop()
    for node in nodes:
        assert "Traceback" not in node.log


def test_two_nodes_on_one_redis_keep_to_the_limit_and_answer_every_request(
    tmp_path: Path,
    fake: FakeRekognition,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    images = tmp_path / "origin"
    names = add_pictures(images, PICTURES)
    store = {
        "MODERATION_DECISION_STORE": "thumbor_rekognition.stores.redis",
        "MODERATION_REDIS_URL": redis_server.url,
        "MODERATION_REDIS_PREFIX": f"rate-{uuid.uuid4().hex[:8]}:",
    }
    roots = [tmp_path / "a", tmp_path / "b"]
    nodes = run_nodes([limited_config(root, images, fake, **store) for root in roots], roots)
    try:
        responses = burst(nodes, names)
    finally:
        stop(nodes)

    assert [(r.status, status_of(r)) for r in responses] == [(200, "approved")] * PICTURES
    assert fake.call_count == PICTURES
    assert busiest_second(fake.calls) <= LIMIT + 1


def test_two_processes_on_one_sqlite_file_keep_to_the_limit_and_answer_every_request(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    images = tmp_path / "origin"
    names = add_pictures(images, PICTURES)
    [thumbor] = run_nodes([limited_config(tmp_path, images, fake)], [tmp_path], processes=2)
    try:
        responses = burst([thumbor], names)
    finally:
        stop([thumbor])

    assert [(r.status, status_of(r)) for r in responses] == [(200, "approved")] * PICTURES
    assert fake.call_count == PICTURES
    assert busiest_second(fake.calls) <= LIMIT + 1


@pytest.fixture(scope="module")
def dynamodb_endpoint() -> Iterator[str]:
    # Out of the test process, whose clock the fake endpoint reads.
    with moto_server_process() as url:
        yield url


def test_two_nodes_on_one_dynamodb_table_keep_to_the_limit_and_answer_every_request(
    tmp_path: Path, fake: FakeRekognition, dynamodb_endpoint: str
) -> None:
    images = tmp_path / "origin"
    names = add_pictures(images, PICTURES)
    store = {
        "MODERATION_DECISION_STORE": "thumbor_rekognition.stores.dynamodb",
        "MODERATION_DYNAMODB_TABLE": f"rate-{uuid.uuid4().hex[:8]}",
        "MODERATION_DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
        "MODERATION_DYNAMODB_CREATE_TABLE": True,
        "MODERATION_STORE_TIMEOUT_SECONDS": 5.0,
    }
    roots = [tmp_path / "a", tmp_path / "b"]
    nodes = run_nodes([limited_config(root, images, fake, **store) for root in roots], roots)
    try:
        responses = burst(nodes, names)
    finally:
        stop(nodes)

    assert [(r.status, status_of(r)) for r in responses] == [(200, "approved")] * PICTURES
    assert fake.call_count == PICTURES
    assert busiest_second(fake.calls) <= LIMIT + 1


def judged_later(thumbor: ThumborServer, name: str) -> str | None:
    """The status a picture answered pending is served with once judged: in the
    background, as turns come, or by one of these requests."""
    for _ in range(120):
        status = status_of(thumbor.get(f"/unsafe/61x61/{name}"))
        if status != "pending":
            return status
        time.sleep(0.25)
    return "pending"


def test_requests_whose_turn_is_past_their_budget_answer_pending_and_are_judged_later(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    images = tmp_path / "origin"
    names = add_pictures(images, 6)
    config = limited_config(
        tmp_path, images, fake, REKOGNITION_MAX_CALLS_PER_SECOND=1, MODERATION_TIMEOUT_SECONDS=1.0
    )
    [thumbor] = run_nodes([config], [tmp_path])
    try:
        first = burst([thumbor], names)
        answered_pending = [
            name for name, r in zip(names, first, strict=True) if status_of(r) == "pending"
        ]
        later = {name: judged_later(thumbor, name) for name in answered_pending}
    finally:
        stop([thumbor])

    assert [r.status for r in first] == [200] * len(names)
    assert {status_of(r) for r in first} <= {"approved", "pending"}
    # Six pictures at one call a second cannot all be judged within one second.
    assert len(answered_pending) >= 3
    assert set(later.values()) == {"approved"}
    # A request that got no turn made no call: one call per picture in all.
    assert fake.call_count == len(names)
    assert busiest_second(fake.calls) <= 1 + 1


def test_backfill_keeps_to_the_limit_and_shows_the_rate_on_its_progress_bar(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    images = tmp_path / "origin"
    names = add_pictures(images, 8)
    config = limited_config(tmp_path, images, fake)
    conf = tmp_path / "thumbor.conf"
    conf.write_text("".join(f"{key} = {value!r}\n" for key, value in config.items()))
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(names) + "\n")
    # A terminal for standard error, 200 columns wide: tqdm draws its bar only there.
    reader, writer = os.openpty()
    fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
    shown: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(reader, 65536)
            except OSError:
                return
            if not chunk:
                return
            shown.append(chunk)

    drainer = threading.Thread(target=drain)
    drainer.start()
    try:
        backfill = subprocess.run(
            [
                str(Path(sys.executable).with_name("thumbor-moderation")),
                "--conf",
                str(conf),
                "backfill",
                str(urls),
                "--concurrency",
                "8",
            ],
            stdout=subprocess.PIPE,
            stderr=writer,
            text=True,
            timeout=120,
            check=False,
            env=aws_test_environment(),
        )
    finally:
        os.close(writer)
        drainer.join(timeout=10)
        os.close(reader)
    bar = b"".join(shown).decode("utf-8", "replace")

    assert backfill.returncode == 0, bar
    assert "approved: 8" in backfill.stdout.splitlines()
    assert fake.call_count == 8
    assert busiest_second(fake.calls) <= LIMIT + 1
    assert "8/8" in bar
    assert f"(limit {LIMIT}/s)" in bar
    assert "calls " in bar
