"""Decisions are about bytes, through the real Thumbor app over HTTP (docs/decisions.md).

Each test replays one way a decision made before a picture's first fetch used to let a
banned picture out: a human's rejection undone by the model judging at the same moment
(on one node, and on two sharing Redis), a rejection made before the first fetch that
never reached the bytes, and an approval made before anyone saw the picture that
approved bytes rejected elsewhere.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.redis_server import RedisServer
from tests.servers import Response, ThumborServer, base_config

pytestmark = pytest.mark.e2e

TOKEN = "decision-core-token-0c4d1f7a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RED = (255, 0, 0)
BLUE = (0, 0, 255)
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]
# How long the model takes in the race tests: the human decides meanwhile.
JUDGING = 3.0

_names = itertools.count()
_sizes = itertools.count()


def new_picture(color: tuple[int, int, int]) -> tuple[str, bytes]:
    """A name never used before and bytes no other picture of the run has."""
    return f"pic-{next(_names)}.png", picture(color, size=(150, 90 + next(_sizes)))


def config(root: Path, images: Path, endpoint: str, **extra: Any) -> dict[str, Any]:
    settings = base_config(root, images, endpoint)
    settings.update(
        {
            "MODERATION_ADMIN_TOKEN": TOKEN,
            # Every request reads the store: what the test sees is what is stored.
            "MODERATION_CACHE_TTL_SECONDS": 0.0,
            # A generous budget: the race tests' model answers in 2 s on a loaded machine.
            "MODERATION_TIMEOUT_SECONDS": 10.0,
            "REKOGNITION_TIMEOUT_SECONDS": 10.0,
        }
    )
    settings.update(extra)
    return settings


def decide(node: ThumborServer, name: str, status: str) -> Response:
    # Each decision here races or precedes the first fetch: the store has not seen the URL.
    body = json.dumps(
        {"status": status, "note": "abuse report", "actor": "reports", "unseen": True}
    ).encode()
    return node.request("PUT", f"/moderation/image?url={name}", body=body, headers=AUTH)


def shown(node: ThumborServer, name: str) -> dict[str, Any]:
    response = node.request("GET", f"/moderation/image?url={name}", headers=AUTH)
    assert response.status == 200, response.body
    answer: dict[str, Any] = json.loads(response.body)
    return answer


def status(node: ThumborServer, path: str) -> str | None:
    return node.get(path).header("X-Moderation-Status")


@pytest.fixture
def node(tmp_path: Path, origin: Path, fake: FakeRekognition) -> Iterator[ThumborServer]:
    thumbor = ThumborServer(tmp_path / "node", config(tmp_path / "node", origin, fake.url))
    yield thumbor.start()
    thumbor.stop()
    assert "Traceback" not in thumbor.log


@pytest.fixture
def pair(tmp_path: Path, origin: Path, fake: FakeRekognition) -> Iterator[list[ThumborServer]]:
    """Two nodes sharing a real redis-server, each with its own caches and quarantine."""
    with RedisServer(tmp_path / "redis") as redis:
        nodes = [
            ThumborServer(
                tmp_path / name,
                config(
                    tmp_path / name,
                    origin,
                    fake.url,
                    MODERATION_DECISION_STORE="thumbor_rekognition.stores.redis",
                    MODERATION_REDIS_URL=redis.url,
                ),
            )
            for name in ("a", "b")
        ]
        for thumbor in nodes:
            del thumbor.config["MODERATION_SQLITE_PATH"]
            thumbor.start()
        yield nodes
        for thumbor in nodes:
            thumbor.stop()
            assert "Traceback" not in thumbor.log


def reject_while_judged(
    fake: FakeRekognition, origin: Path, viewer: ThumborServer, human: ThumborServer
) -> tuple[str, Response, Response]:
    """A first view on one node while the model takes JUDGING seconds; a human rejects the
    URL on another (or the same) node meanwhile. The human's answer and the first view's."""
    name, data = new_picture(BLUE)
    (origin / name).write_bytes(data)
    fake.fail("slow", times=1, delay=JUDGING)
    calls = fake.call_count
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first_view = pool.submit(viewer.get, f"/unsafe/100x80/{name}")
        # The human acts once the model has the picture: not after a fixed time, which a
        # loaded machine can spend before the first view reaches the backend.
        deadline = time.monotonic() + 30
        while fake.call_count == calls and time.monotonic() < deadline:
            time.sleep(0.02)
        answer = decide(human, name, "rejected")
        return name, answer, first_view.result(timeout=30)


def test_a_rejection_made_while_the_model_judges_is_not_undone(
    node: ThumborServer, origin: Path, fake: FakeRekognition
) -> None:
    name, answer, _ = reject_while_judged(fake, origin, node, node)

    later = [status(node, f"/unsafe/{size}/{name}") for size in ("100x80", "64x48", "30x30")]
    decision = shown(node, name)

    assert answer.status == 200
    assert fake.call_count == 1
    assert later == ["rejected"] * 3
    assert (decision["status"], decision["source"]) == ("rejected", "manual")
    assert decision["content_hash"] == hashlib.sha256((origin / name).read_bytes()).hexdigest()
    assert [event["status"] for event in decision["history"]][-1] == "rejected"


def test_a_rejection_on_one_node_while_another_judges_stands_on_both(
    pair: list[ThumborServer], origin: Path, fake: FakeRekognition
) -> None:
    a, b = pair

    name, answer, _ = reject_while_judged(fake, origin, viewer=a, human=b)
    later = [
        status(node, f"/unsafe/{size}/{name}") for node in pair for size in ("100x80", "50x50")
    ]
    decision = shown(a, name)

    assert answer.status == 200
    assert later == ["rejected"] * 4
    assert (decision["status"], decision["source"]) == ("rejected", "manual")
    assert decision["content_hash"]


def test_a_rejection_made_before_the_first_fetch_rejects_the_bytes_under_every_url(
    node: ThumborServer, origin: Path, fake: FakeRekognition
) -> None:
    name, data = new_picture(BLUE)
    copy, later_copy = f"copy-{name}", f"later-{name}"
    answer = decide(node, name, "rejected")
    (origin / name).write_bytes(data)
    (origin / copy).write_bytes(data)

    first = node.get(f"/unsafe/100x80/{name}")
    (origin / later_copy).write_bytes(data)
    copies = [status(node, f"/unsafe/80x60/{other}") for other in (copy, later_copy)]
    decision = shown(node, name)

    assert answer.status == 200
    assert first.header("X-Moderation-Status") == "rejected"
    assert copies == ["rejected", "rejected"]
    assert decision["content_hash"] == hashlib.sha256(data).hexdigest()
    assert (decision["source"], decision["blind"]) == ("manual", True)
    assert fake.call_count == 0
    assert (node.root / "quarantine").is_dir()


def test_a_copy_judged_before_a_blind_rejection_binds_is_rejected_when_it_binds(
    node: ThumborServer, origin: Path, fake: FakeRekognition
) -> None:
    name, data = new_picture(BLUE)
    copy = f"copy-{name}"
    (origin / copy).write_bytes(data)
    assert status(node, f"/unsafe/80x60/{copy}") == "approved"
    decide(node, name, "rejected")
    (origin / name).write_bytes(data)

    first = status(node, f"/unsafe/100x80/{name}")
    again = node.get(f"/unsafe/80x60/{copy}")

    assert first == "rejected"
    assert again.header("X-Moderation-Status") == "rejected"
    assert (shown(node, copy)["status"], shown(node, copy)["source"]) == ("rejected", "manual")


def test_an_approval_made_before_anyone_saw_the_picture_launders_no_rejected_bytes(
    node: ThumborServer, origin: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    bad, data = new_picture(RED)
    (origin / bad).write_bytes(data)
    assert status(node, f"/unsafe/100x80/{bad}") == "rejected"
    future, bad_copy = f"future-{bad}", f"copy-{bad}"
    answer = decide(node, future, "approved")
    (origin / future).write_bytes(data)
    (origin / bad_copy).write_bytes(data)

    served = node.get(f"/unsafe/100x80/{future}")
    copy = status(node, f"/unsafe/100x80/{bad_copy}")
    held = shown(node, future)

    assert answer.status == 200
    assert served.header("X-Moderation-Status") == "pending"
    assert data not in served.body
    assert copy == "rejected"
    assert held["status"] == "pending"
    assert [reason["category"] for reason in held["reasons"]] == ["approved_unseen"]
    assert status(node, f"/unsafe/100x80/{bad}") == "rejected"
    assert fake.call_count == 1


def test_an_approval_made_before_anyone_saw_clean_bytes_is_kept_once_they_are_judged(
    node: ThumborServer, origin: Path, fake: FakeRekognition
) -> None:
    name, data = new_picture(BLUE)
    answer = decide(node, name, "approved")
    (origin / name).write_bytes(data)

    served = status(node, f"/unsafe/100x80/{name}")
    decision = shown(node, name)

    assert answer.status == 200
    assert served == "approved"
    assert (decision["status"], decision["source"], decision["blind"]) == (
        "approved",
        "manual",
        True,
    )
    assert decision["content_hash"] == hashlib.sha256(data).hexdigest()
    # Judged once: a blind approval is bound by a judgement, not by the fetch alone.
    assert fake.call_count == 1
