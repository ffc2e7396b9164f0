"""Copies of a rejected picture through the real Thumbor app: rejected at first fetch,
without a backend call, naming the original; lifted when the original is approved.

One Thumbor on the SQLite store, the fake Rekognition endpoint (which approves every
picture here: only the index can reject a copy), a real webhook receiver. Pictures have
detail (tests/pictures.py) and are re-encoded as a re-upload would be.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image

from tests import pictures
from tests.fakes.rekognition import FakeRekognition
from tests.receivers import Received, Receiver
from tests.servers import MAX_AGE, Response, ThumborServer, base_config

pytestmark = pytest.mark.e2e

TOKEN = "duplicates-admin-token-3f9a7c21"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOOK_PATH = "/hooks/moderation"

_seeds = itertools.count(1000)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as started:
        yield started


@pytest.fixture(scope="module")
def server(
    module_root: Path, images: Path, module_fake: FakeRekognition, receiver: Receiver
) -> Iterator[ThumborServer]:
    root = module_root / "duplicates"
    config = base_config(root, images, module_fake.url)
    config.update(
        {
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_WEBHOOK_URL": receiver.url + HOOK_PATH,
            "MODERATION_OUTBOX_TIMEOUT_SECONDS": 2.0,
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


def admin(server: ThumborServer, method: str, name: str, body: Any = None) -> Response:
    payload = json.dumps(body).encode() if body is not None else None
    return server.request(
        method, f"/moderation/image?url={quote(name, safe='')}", body=payload, headers=AUTH
    )


def decision_of(server: ThumborServer, name: str) -> dict[str, Any]:
    response = admin(server, "GET", name)
    assert response.status == 200, response.body
    found: dict[str, Any] = json.loads(response.body)
    return found


def rejected_by_hand(server: ThumborServer, images: Path, stem: str) -> tuple[str, Image.Image]:
    """A busy picture, judged (and approved) at its first fetch, then rejected by hand."""
    image = pictures.busy(next(_seeds))
    name = add(images, f"{stem}.png", pictures.encoded(image, "PNG"))
    assert status_of(server, name) == "approved"
    assert admin(server, "PUT", name, {"status": "rejected", "note": "reported"}).status == 200
    return name, image


def copies_of(images: Path, image: Image.Image, stem: str) -> list[str]:
    """The copies a re-upload makes, each under a URL of its own."""
    return [
        add(images, f"{stem}-resized-q70.jpg", pictures.resized_jpeg(image, 0.75, 70)),
        add(images, f"{stem}-brighter.png", pictures.brighter(image, 1.06)),
        add(images, f"{stem}-q45.jpg", pictures.reencoded(image, 45)),
    ]


def webhooks_about(receiver: Receiver, name: str, count: int) -> list[dict[str, Any]]:
    def about(request: Received) -> bool:
        return request.path == HOOK_PATH and json.loads(request.body)["key"] == name

    return [json.loads(request.body) for request in receiver.wait_for(count, about)]


def test_copies_of_a_picture_rejected_by_hand_are_rejected_without_a_backend_call(
    server: ThumborServer, images: Path, fake: FakeRekognition, receiver: Receiver
) -> None:
    original, image = rejected_by_hand(server, images, "reported")
    copies = copies_of(images, image, "reupload")
    calls = fake.call_count

    statuses = [status_of(server, name) for name in copies]
    decisions = [decision_of(server, name) for name in copies]

    assert statuses == ["rejected"] * 3
    assert fake.call_count == calls == 1
    for decision in decisions:
        assert (decision["status"], decision["source"]) == ("rejected", "duplicate")
        assert decision["duplicate_of"] == original
        assert 0.9 <= decision["similarity"] <= 1.0
        assert decision["backend"] == ""
        assert "resembles reported.png" in decision["history"][-1]["note"]
    hook = webhooks_about(receiver, copies[0], 1)[0]
    assert (hook["status"], hook["source"], hook["duplicate_of"]) == (
        "rejected",
        "duplicate",
        original,
    )
    assert hook["similarity"] == decisions[0]["similarity"]


def test_copies_are_refused_at_every_size_and_never_served(
    server: ThumborServer, images: Path
) -> None:
    _, image = rejected_by_hand(server, images, "refused")
    copy = copies_of(images, image, "refused-copy")[2]

    answers = [server.get(f"/unsafe/{size}/{copy}") for size in ("300x200", "64x48", "0x0")]

    assert [answer.header("X-Moderation-Status") for answer in answers] == ["rejected"] * 3
    assert all(f"max-age={MAX_AGE}" not in (a.header("Cache-Control") or "") for a in answers)


def test_ten_unrelated_busy_pictures_are_approved(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    rejected_by_hand(server, images, "banned")
    calls = fake.call_count
    names = [
        add(images, f"unrelated-{n}.png", pictures.encoded(pictures.busy(next(_seeds)), "PNG"))
        for n in range(10)
    ]

    statuses = [status_of(server, name) for name in names]

    assert statuses == ["approved"] * 10
    assert fake.call_count == calls + 10
    assert {decision_of(server, name)["source"] for name in names} == {"auto"}


def test_approving_the_original_lifts_its_duplicates(
    server: ThumborServer, images: Path, fake: FakeRekognition, receiver: Receiver
) -> None:
    original, image = rejected_by_hand(server, images, "mistaken")
    copies = copies_of(images, image, "mistaken-copy")
    assert [status_of(server, name) for name in copies] == ["rejected"] * 3
    calls = fake.call_count

    assert admin(server, "PUT", original, {"status": "approved"}).status == 200
    after_approval = [admin(server, "GET", name).status for name in copies]
    statuses = [status_of(server, name) for name in copies]

    assert after_approval == [404] * 3
    assert statuses == ["approved"] * 3
    assert fake.call_count == calls + 3
    assert status_of(server, original) == "approved"
    assert {decision_of(server, name)["source"] for name in copies} == {"auto"}
    lifted = webhooks_about(receiver, copies[1], 3)
    assert [(hook["event"], hook["status"]) for hook in lifted] == [
        ("decision.changed", "rejected"),
        ("decision.forgotten", None),
        ("decision.changed", "approved"),
    ]
    assert "no longer rejected" in lifted[1]["note"]


def test_a_mirrored_copy_is_rejected_as_a_duplicate_without_a_backend_call(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    original, image = rejected_by_hand(server, images, "mirrored")
    name = add(
        images,
        "mirrored-copy.jpg",
        pictures.resized_jpeg(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 0.8, 80),
    )
    calls = fake.call_count

    status = status_of(server, name)

    decision = decision_of(server, name)
    assert status == "rejected"
    assert fake.call_count == calls
    assert decision["source"] == "duplicate"
    assert decision["duplicate_of"] == original


def test_copies_fetched_from_another_process_are_rejected_through_the_store_index(
    tmp_path: Path, images: Path, fake: FakeRekognition
) -> None:
    # Two Thumbor processes on one SQLite store: nothing but the store's index of PDQ
    # hashes carries the rejection from the first to the second.
    config = base_config(tmp_path, images, fake.url)
    config["MODERATION_ADMIN_TOKEN"] = TOKEN
    first = ThumborServer(tmp_path / "first", config).start()
    second = ThumborServer(tmp_path / "second", config).start()
    try:
        original, image = rejected_by_hand(first, images, "cross-process")
        copies = [
            add(images, "cross-process-q45.jpg", pictures.reencoded(image, 45)),
            add(images, "cross-process-half.jpg", pictures.resized_jpeg(image, 0.5, 80)),
            add(
                images,
                "cross-process-mirrored.jpg",
                pictures.resized_jpeg(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 0.8, 80),
            ),
            add(
                images,
                "cross-process-rotated.jpg",
                pictures.resized_jpeg(image.transpose(Image.Transpose.ROTATE_90), 0.8, 80),
            ),
        ]
        calls = fake.call_count

        statuses = [status_of(second, name) for name in copies]
        decisions = [decision_of(second, name) for name in copies]
    finally:
        first.stop()
        second.stop()

    assert statuses == ["rejected"] * 4
    assert fake.call_count == calls
    for decision in decisions:
        assert (decision["source"], decision["duplicate_of"]) == ("duplicate", original)
        assert decision["backend"] == ""
    assert "Traceback" not in first.log + second.log
