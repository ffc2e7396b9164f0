"""Copies approved before their original is rejected, through the real Thumbor app: the
rejection finds them in the index of judged pictures and rejects them as its duplicates,
with webhooks and CDN purges; approving the original again lifts them.

One Thumbor per decision store (SQLite, Redis), the fake Rekognition endpoint (which
approves every picture here), a real receiver for webhooks and Fastly-style purges.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests import pictures
from tests.fakes.rekognition import FakeRekognition
from tests.receivers import Received, Receiver
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.servers import ThumborServer, base_config
from tests.test_cdn import FASTLY_PURGE, HTTP, TAG_HEADER, fastly_call
from tests.test_duplicates_end_to_end import (
    HOOK_PATH,
    TOKEN,
    add,
    admin,
    decision_of,
    status_of,
)
from thumbor_rekognition import cli

pytestmark = pytest.mark.e2e

_seeds = itertools.count(5000)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as started:
        yield started


def served(server: ThumborServer, name: str) -> str:
    """Fetch a picture, expect it approved and shown; the cache tag it was served with."""
    response = server.get(f"/unsafe/120x90/{name}")
    assert (response.status, response.header("X-Moderation-Status")) == (200, "approved")
    tag = response.header(TAG_HEADER)
    assert tag
    return tag


def good_and_its_copies(images: Path, stem: str) -> tuple[str, list[str], Image.Image]:
    """good.jpg, a copy saved again at quality 60 and a smaller copy: all approved once
    fetched, each judged by the backend."""
    seed = next(_seeds)
    stem = f"{stem}-{seed}"
    image = pictures.busy(seed)
    original = add(images, f"{stem}-good.jpg", pictures.encoded(image, "JPEG", quality=90))
    copies = [
        add(images, f"{stem}-good-q60.jpg", pictures.reencoded(image, 60)),
        add(images, f"{stem}-good-small.jpg", pictures.resized_jpeg(image, 0.5, 85)),
    ]
    return original, copies, image


def hooks_about(receiver: Receiver, name: str, count: int) -> list[dict[str, Any]]:
    def about(request: Received) -> bool:
        return request.path == HOOK_PATH and json.loads(request.body)["key"] == name

    return [json.loads(request.body) for request in receiver.wait_for(count, about)]


class BackwardsContract:
    """The same story on each decision store; subclasses name the store."""

    @pytest.fixture
    def store_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @pytest.fixture
    def server(
        self,
        tmp_path: Path,
        images: Path,
        module_fake: FakeRekognition,
        receiver: Receiver,
        store_config: dict[str, Any],
    ) -> Iterator[ThumborServer]:
        config = base_config(tmp_path, images, module_fake.url)
        config.update(
            {
                "MODERATION_ADMIN_TOKEN": TOKEN,
                "MODERATION_WEBHOOK_URL": receiver.url + HOOK_PATH,
                "MODERATION_OUTBOX_TIMEOUT_SECONDS": 2.0,
                "MODERATION_CACHE_TAG_HEADER": TAG_HEADER,
                "MODERATION_CDN_PURGERS": [HTTP],
                "MODERATION_HTTP_PURGE": fastly_call(receiver),
                **store_config,
            }
        )
        thumbor = ThumborServer(tmp_path, config).start()
        yield thumbor
        thumbor.stop()
        assert "Traceback" not in thumbor.log

    def test_copies_approved_before_a_human_rejects_the_original_are_rejected_as_its_duplicates(
        self,
        server: ThumborServer,
        images: Path,
        fake: FakeRekognition,
        receiver: Receiver,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        original, copies, _ = good_and_its_copies(images, "reported")
        served(server, original)
        tags = [served(server, name) for name in copies]
        calls = fake.call_count

        rejected = admin(server, "PUT", original, {"status": "rejected", "note": "reported"})
        answers = [server.get(f"/unsafe/120x90/{name}") for name in copies]
        decisions = [decision_of(server, name) for name in copies]
        listed = cli.main(["--conf", str(server.conf_path), "similar", original, "--json"])
        similar = json.loads(capsys.readouterr().out)

        assert rejected.status == 200
        assert [a.header("X-Moderation-Status") for a in answers] == ["rejected"] * 2
        assert fake.call_count == calls == 3
        for decision in decisions:
            assert (decision["status"], decision["source"]) == ("rejected", "duplicate")
            assert decision["duplicate_of"] == original
            assert decision["similarity"] >= 0.9
            assert f"resembles {original}" in decision["history"][-1]["note"]
        for name, tag in zip(copies, tags, strict=True):
            hooks = hooks_about(receiver, name, 2)
            assert [(hook["status"], hook["source"]) for hook in hooks] == [
                ("approved", "auto"),
                ("rejected", "duplicate"),
            ]
            assert hooks[1]["duplicate_of"] == original
            receiver.wait_for(1, lambda request, tag=tag: request.path == FASTLY_PURGE + tag)
        assert listed == 0
        assert sorted(item["key"] for item in similar["duplicates"]) == sorted(copies)

    def test_approving_the_original_again_lifts_the_copies_it_rejected(
        self, server: ThumborServer, images: Path, fake: FakeRekognition
    ) -> None:
        original, copies, _ = good_and_its_copies(images, "mistaken")
        for name in (original, *copies):
            served(server, name)
        admin(server, "PUT", original, {"status": "rejected", "note": "reported"})
        assert [status_of(server, name) for name in copies] == ["rejected"] * 2
        calls = fake.call_count

        approved = admin(server, "PUT", original, {"status": "approved", "note": "a mistake"})
        forgotten = [admin(server, "GET", name).status for name in copies]
        statuses = [status_of(server, name) for name in copies]

        assert approved.status == 200
        assert forgotten == [404, 404]
        assert statuses == ["approved", "approved"]
        assert fake.call_count == calls + 2
        assert {decision_of(server, name)["source"] for name in copies} == {"auto"}

    def test_a_copy_a_human_approved_stays_approved(
        self, server: ThumborServer, images: Path
    ) -> None:
        original, copies, _ = good_and_its_copies(images, "statue")
        for name in (original, *copies):
            served(server, name)
        admin(server, "PUT", copies[0], {"status": "approved", "note": "fine art"})

        admin(server, "PUT", original, {"status": "rejected", "note": "reported"})

        assert [status_of(server, name) for name in copies] == ["approved", "rejected"]
        assert decision_of(server, copies[0])["source"] == "manual"


class TestSQLite(BackwardsContract):
    @pytest.fixture
    def store_config(self) -> dict[str, Any]:
        return {}


class TestRedis(BackwardsContract):
    @pytest.fixture
    def store_config(self, redis_server: RedisServer) -> dict[str, Any]:  # noqa: F811
        return {
            "MODERATION_DECISION_STORE": "thumbor_rekognition.stores.redis",
            "MODERATION_REDIS_URL": redis_server.url,
            "MODERATION_REDIS_PREFIX": f"backwards-{uuid.uuid4().hex[:8]}:",
        }
