"""GET and HEAD /moderation/health through the real Thumbor app over HTTP: what a load
balancer or a readiness probe learns, with a real redis-server as the decision store and
the fake Rekognition endpoint as the backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.redis_server import RedisServer
from tests.servers import ThumborServer, base_config

pytestmark = pytest.mark.e2e

HEALTH = "/moderation/health"
GREEN = (0, 200, 0)


def redis_config(root: Path, images: Path, endpoint: str, redis_url: str) -> dict[str, Any]:
    config = base_config(root, images, endpoint)
    del config["MODERATION_SQLITE_PATH"]
    config.update(
        {
            "MODERATION_DECISION_STORE": "thumbor_rekognition.stores.redis",
            "MODERATION_REDIS_URL": redis_url,
            "MODERATION_ON_ERROR": "allow",
        }
    )
    return config


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def thumbor(
    tmp_path: Path, images: Path, fake: FakeRekognition, redis: RedisServer
) -> Iterator[ThumborServer]:
    # No MODERATION_ADMIN_TOKEN: the health check must answer without one.
    server = ThumborServer(
        tmp_path / "thumbor", redis_config(tmp_path, images, fake.url, redis.url)
    ).start()
    yield server
    server.stop()
    assert "Traceback" not in server.log


def health(server: ThumborServer) -> tuple[int, dict[str, Any]]:
    response = server.get(HEALTH)
    assert (response.header("Content-Type") or "").startswith("application/json")
    return response.status, json.loads(response.body)


def test_health_answers_without_a_token_with_each_part_ok(thumbor: ThumborServer) -> None:
    status, report = health(thumbor)
    head = thumbor.request("HEAD", HEALTH)

    assert status == 200
    assert report["status"] == "ok"
    assert report["can_judge_new_pictures"] is True
    assert report["store"]["status"] == "ok"
    assert report["store"]["module"] == "thumbor_rekognition.stores.redis"
    assert report["backend"] == {"status": "ok", "name": "rekognition", "calls": 0}
    assert report["quarantine"]["status"] == "ok"
    assert report["outbox"] == {"status": "off"}
    assert head.status == 200
    assert head.body == b""


def test_health_is_503_while_the_store_is_down_though_thumbors_healthcheck_is_not(
    thumbor: ThumborServer, redis: RedisServer
) -> None:
    redis.kill()

    status, report = health(thumbor)
    head = thumbor.request("HEAD", HEALTH)
    thumbors = thumbor.get("/healthcheck")
    redis.start()
    status_after, _ = health(thumbor)

    assert status == 503
    assert report["status"] == "down"
    assert report["can_judge_new_pictures"] is False
    assert report["store"]["status"] == "down"
    assert head.status == 503
    assert thumbors.status == 200
    assert status_after == 200


def test_health_is_503_while_the_backend_fails_and_200_once_a_call_succeeds(
    thumbor: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    for name in ("health-a.png", "health-b.png"):
        (images / name).write_bytes(picture(GREEN, size=(120, 90 + len(name))))
    fake.fail("internal")
    thumbor.get("/unsafe/health-a.png")

    status, report = health(thumbor)
    fake.clear_faults()
    thumbor.get("/unsafe/health-b.png")
    status_after, report_after = health(thumbor)

    assert status == 503
    assert report["backend"]["status"] == "failing"
    assert "InternalServerError" in report["backend"]["error"]
    assert report["store"]["status"] == "ok"
    assert status_after == 200
    assert report_after["backend"]["status"] == "ok"
