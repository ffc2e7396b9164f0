"""A cluster on AWS without Redis: two Thumbor nodes sharing one DynamoDB table (moto's
server) and one Rekognition endpoint (the fake).

Each node has its own STORAGE and RESULT_STORAGE, as two machines would. Decisions stay
in each node's memory for 30 s: only the table's change feed can explain a node
enforcing, within seconds, an override made on the other.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.moto_server import moto_server_process
from tests.receivers import Receiver
from tests.servers import Response, ThumborServer, base_config
from thumbor_rekognition.stores import dynamodb

pytestmark = pytest.mark.e2e

TOKEN = "dynamodb-cluster-token-5c2e8a1f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TTL = 30.0
BURST = 60
BLUE = (20, 40, 210)


def status_of(response: Response) -> str | None:
    return response.header("X-Moderation-Status")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def nodes(
    module_root: Path, module_fake: FakeRekognition, receiver: Receiver
) -> Iterator[tuple[ThumborServer, ThumborServer, Path]]:
    images = module_root / "origin"
    images.mkdir()
    with moto_server_process() as endpoint:
        table = f"moderation-{uuid.uuid4().hex[:8]}"
        built = []
        for name in ("a", "b"):
            config = base_config(module_root / name, images, module_fake.url)
            del config["MODERATION_SQLITE_PATH"]
            config.update(
                {
                    "MODERATION_DECISION_STORE": "thumbor_rekognition.stores.dynamodb",
                    "MODERATION_DYNAMODB_TABLE": table,
                    "MODERATION_DYNAMODB_ENDPOINT_URL": endpoint,
                    "MODERATION_DYNAMODB_CREATE_TABLE": True,
                    "MODERATION_STORE_TIMEOUT_SECONDS": 5.0,
                    "MODERATION_CACHE_TTL_SECONDS": TTL,
                    "MODERATION_ADMIN_TOKEN": TOKEN,
                    # Both nodes deliver from the outbox in the table.
                    "MODERATION_WEBHOOK_URL": receiver.url + "/hook",
                }
            )
            # Debug level: the metrics show which node waited for the other's decision.
            built.append(ThumborServer(module_root / name, config, log_level="debug"))
        a, b = built
        a.start(wait=False)
        b.start()
        a.wait_ready()
        yield a, b, images
        a.stop()
        b.stop()
    for node in (a, b):
        assert "Traceback" not in node.log


def add_picture(images: Path, height: int) -> str:
    name = f"dyn-{uuid.uuid4().hex[:8]}.png"
    (images / name).write_bytes(picture(BLUE, size=(160, height)))
    return name


def test_a_burst_of_first_requests_over_two_nodes_makes_one_backend_call(
    nodes: tuple[ThumborServer, ThumborServer, Path], fake: FakeRekognition
) -> None:
    a, b, images = nodes
    fake.fail("slow", delay=0.5)
    name = add_picture(images, 121)
    requests = [((a, b)[index % 2], f"/unsafe/{40 + index}x30/{name}") for index in range(BURST)]
    logged = [len(a.log), len(b.log)]

    with ThreadPoolExecutor(max_workers=BURST) as pool:
        responses = list(pool.map(lambda request: request[0].get(request[1]), requests))

    assert fake.call_count == 1
    assert [(r.status, status_of(r)) for r in responses] == [(200, "approved")] * BURST
    waited = [
        "moderation.single_flight.waited" in node.log[start:]
        for node, start in zip((a, b), logged, strict=True)
    ]
    # One node judged; the other waited on the lease in the table for its decision.
    assert sorted(waited) == [False, True]


def test_an_override_on_one_node_is_enforced_by_the_other_well_within_the_ttl(
    nodes: tuple[ThumborServer, ThumborServer, Path], fake: FakeRekognition
) -> None:
    a, b, images = nodes
    name = add_picture(images, 122)
    path = f"/unsafe/80x60/{name}"
    assert status_of(a.get(path)) == "approved"
    # B now holds "approved" in memory for 30 s, and the result in its result storage.
    assert status_of(b.get(path)) == "approved"
    assert status_of(b.get(path)) == "approved"

    started = time.monotonic()
    body = json.dumps({"status": "rejected", "note": "cluster test", "actor": "tests"}).encode()
    answer = a.request(
        "PUT", f"/moderation/image?url={quote(name, safe='')}", body=body, headers=AUTH
    )
    while status_of(b.get(path)) != "rejected":
        assert time.monotonic() - started < TTL / 2, "B still serves the picture"
        time.sleep(0.02)
    enforced = time.monotonic() - started

    assert answer.status == 200
    # The change feed is polled every POLL_SECONDS: two polls and the override's own time.
    assert enforced < 2 * dynamodb.Store.propagation_seconds + 1.0
    assert status_of(b.get(f"/unsafe/81x61/{name}")) == "rejected"
    assert fake.call_count == 1


def test_each_change_is_delivered_once_and_in_order_from_the_outbox_in_the_table(
    nodes: tuple[ThumborServer, ThumborServer, Path], receiver: Receiver
) -> None:
    a, b, images = nodes
    name = add_picture(images, 123)

    assert status_of(a.get(f"/unsafe/50x50/{name}")) == "approved"
    for status, node in (("rejected", b), ("approved", a), ("rejected", b)):
        body = json.dumps({"status": status, "note": "outbox test", "actor": "tests"}).encode()
        answer = node.request(
            "PUT", f"/moderation/image?url={quote(name, safe='')}", body=body, headers=AUTH
        )
        assert answer.status == 200

    def delivered() -> list[tuple[str | None, str | None]]:
        bodies = [json.loads(request.body) for request in receiver.requests]
        return [(b["previous_status"], b["status"]) for b in bodies if b["key"] == name]

    started = time.monotonic()
    while len(delivered()) < 4 and time.monotonic() - started < 30:
        time.sleep(0.1)
    # Long enough for a second delivery of any of them to arrive.
    time.sleep(2.0)

    assert delivered() == [
        (None, "approved"),
        ("approved", "rejected"),
        ("rejected", "approved"),
        ("approved", "rejected"),
    ]
