"""HMA as the matcher, through the real Thumbor app and a fake HMA speaking its lookup
API: a picture HMA knows is rejected naming HMA's bank, without a backend call; HMA
unreachable, the backend judges alone and the failure is counted."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests import pictures
from tests.fakes.hma import FakeHMA
from tests.fakes.rekognition import FakeRekognition
from tests.servers import ThumborServer, base_config
from thumbor_rekognition import hma, pdq

pytestmark = pytest.mark.e2e

TOKEN = "hma-admin-token-77e1c0d9a3"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

_seeds = itertools.count(3000)


@pytest.fixture(scope="module")
def fake_hma() -> Iterator[FakeHMA]:
    with FakeHMA() as started:
        yield started


@pytest.fixture(scope="module")
def server(
    module_root: Path, images: Path, module_fake: FakeRekognition, fake_hma: FakeHMA
) -> Iterator[ThumborServer]:
    root = module_root / "hma"
    config = base_config(root, images, module_fake.url)
    config.update(
        {
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_HMA_URL": fake_hma.url,
            "MODERATION_HMA_TIMEOUT_SECONDS": 2.0,
        }
    )
    thumbor = ThumborServer(root, config).start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def add(images: Path, name: str, data: bytes) -> str:
    (images / name).write_bytes(data)
    return name


def status_of(server: ThumborServer, name: str) -> str | None:
    return server.get(f"/unsafe/120x90/{quote(name)}").header("X-Moderation-Status")


def decision_of(server: ThumborServer, name: str) -> dict[str, Any]:
    response = server.request("GET", f"/moderation/image?url={quote(name, safe='')}", headers=AUTH)
    assert response.status == 200, response.body
    found: dict[str, Any] = json.loads(response.body)
    return found


def stats(server: ThumborServer) -> dict[str, Any]:
    response = server.request("GET", "/moderation/stats", headers=AUTH)
    assert response.status == 200, response.body
    found: dict[str, Any] = json.loads(response.body)
    return found


def test_picture_hma_knows_is_rejected_naming_its_bank_without_a_backend_call(
    server: ThumborServer, images: Path, fake: FakeRekognition, fake_hma: FakeHMA
) -> None:
    image = pictures.busy(next(_seeds))
    content_id = fake_hma.add("NCMEC_SAMPLE", pdq.of(image).hex())
    name = add(images, "hma-known.jpg", pictures.resized_jpeg(image, 0.8, 80))
    calls = fake.call_count

    status = status_of(server, name)

    decision = decision_of(server, name)
    assert status == "rejected"
    assert fake.call_count == calls
    assert decision["source"] == "bank"
    assert decision["reasons"][0]["name"] == "hma:NCMEC_SAMPLE"
    assert decision["reasons"][0]["parent"] == f"HMA content {content_id}"
    assert decision["pdq"][0]["hash"] in fake_hma.lookups


def test_picture_hma_does_not_know_is_judged_by_the_backend(
    server: ThumborServer, images: Path, fake: FakeRekognition, fake_hma: FakeHMA
) -> None:
    name = add(images, "hma-unknown.png", pictures.encoded(pictures.busy(next(_seeds))))
    calls = fake.call_count

    status = status_of(server, name)

    assert status == "approved"
    assert fake.call_count == calls + 1
    assert decision_of(server, name)["pdq"][0]["hash"] in fake_hma.lookups


def test_hma_unavailable_leaves_the_backend_to_judge_and_is_counted(
    server: ThumborServer, images: Path, fake: FakeRekognition, fake_hma: FakeHMA
) -> None:
    image = pictures.busy(next(_seeds))
    fake_hma.add("NCMEC_SAMPLE", pdq.of(image).hex())
    name = add(images, "hma-down.png", pictures.encoded(image))
    counted = stats(server)["hma_unreachable"]
    calls = fake.call_count
    fake_hma.unavailable = True
    try:
        status = status_of(server, name)
    finally:
        fake_hma.unavailable = False

    assert status == "approved"
    assert fake.call_count == calls + 1
    assert decision_of(server, name)["source"] == "auto"
    assert stats(server)["hma_unreachable"] == counted + 1


def test_both_answer_shapes_of_hma_are_read() -> None:
    current = {"BANK_A": [{"bank_content_id": 1001, "distance": "4"}], "BANK_B": []}
    earlier = ["BANK_A"]

    assert hma.matches(current) == [hma.Match("BANK_A", "1001", "4")]
    assert hma.matches(earlier) == [hma.Match("BANK_A")]
    assert hma.matches({}) == []
    with pytest.raises(ValueError):
        hma.matches({"BANK_A": "yes"})
