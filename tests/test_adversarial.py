"""An uploader who wants a banned picture out, through the real Thumbor app over HTTP.

Attacks on the decision core beyond the ones its own tests replay: bytes swapped under a
URL a human approved, a human's approval of one picture reached through a near-copy or
through the same bytes under another URL, and the order of a human and the model on two
URLs of one picture. Each test states the attack and what must hold.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests import pictures
from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.servers import Response, ThumborServer, base_config
from tests.test_decision_core import AUTH, TOKEN, shown

pytestmark = pytest.mark.e2e

NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]
_sizes = itertools.count()
_seeds = itertools.count(9100)


def flagged(fake: FakeRekognition, color: tuple[int, int, int]) -> bytes:
    """A picture the model rejects."""
    fake.respond(color, NUDITY)
    return picture(color, size=(150, 90 + next(_sizes)))


def clean(color: tuple[int, int, int]) -> bytes:
    return picture(color, size=(150, 90 + next(_sizes)))


def put(node: ThumborServer, name: str, status: str, **extra: Any) -> Response:
    body = json.dumps({"status": status, "note": "review", **extra}).encode()
    return node.request("PUT", f"/moderation/image?url={name}", body=body, headers=AUTH)


def status(node: ThumborServer, name: str, size: str = "120x90") -> str | None:
    return node.get(f"/unsafe/{size}/{name}").header("X-Moderation-Status")


@pytest.fixture
def node(tmp_path: Path, origin: Path, fake: FakeRekognition) -> Iterator[ThumborServer]:
    """A node that keeps no originals: every request fetches from the origin, as a site
    with short storage expiry does, so bytes swapped there are what Thumbor gets."""
    config = base_config(tmp_path / "node", origin, fake.url)
    config.update(
        {
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_SOURCE_STORAGE": "thumbor.storages.no_storage",
            "MODERATION_CACHE_TTL_SECONDS": 0.0,
        }
    )
    thumbor = ThumborServer(tmp_path / "node", config).start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def test_bytes_swapped_under_a_url_a_human_approved_are_judged_not_approved(
    node: ThumborServer, origin: Path, fake: FakeRekognition
) -> None:
    # The attack: get a harmless picture approved by hand under a URL, then replace what
    # the origin serves there. A human approved those bytes, not the URL.
    harmless = clean((20, 120, 220))
    banned = flagged(fake, (240, 10, 120))
    (origin / "avatar.png").write_bytes(harmless)
    assert status(node, "avatar.png") == "approved"
    assert put(node, "avatar.png", "approved").status == 200

    (origin / "avatar.png").write_bytes(banned)
    after_swap = [status(node, "avatar.png", size) for size in ("64x64", "0x0", "200x100")]
    decision = shown(node, "avatar.png")
    # The size rendered before the swap: the approved picture's result, or the refusal.
    cached = node.get("/unsafe/120x90/avatar.png")

    assert after_swap == ["rejected"] * 3
    assert (decision["status"], decision["source"]) == ("rejected", "auto")
    with Image.open(io.BytesIO(cached.body)) as shown_image:
        assert shown_image.convert("RGB").getpixel((60, 45)) != (240, 10, 120)


def test_a_human_approval_of_a_picture_does_not_approve_bytes_rejected_under_another_url(
    node: ThumborServer, origin: Path, fake: FakeRekognition
) -> None:
    # The attack: the banned bytes are rejected at one URL; the uploader asks a reviewer
    # to approve "their" copy at another URL before anyone has fetched it.
    banned = flagged(fake, (200, 40, 40))
    (origin / "first.png").write_bytes(banned)
    assert status(node, "first.png") == "rejected"

    approved = put(node, "second.png", "approved", unseen=True)
    (origin / "second.png").write_bytes(banned)
    seen = status(node, "second.png")

    assert approved.status == 200
    assert seen != "approved"
    assert status(node, "first.png") == "rejected"


def test_a_near_copy_of_a_picture_rejected_by_hand_stays_rejected_when_its_twin_is_approved(
    node: ThumborServer, origin: Path, fake: FakeRekognition
) -> None:
    # The attack: two near-copies of one banned picture; the human approves one of them
    # (a mistake, or a reviewer fooled by a caption). The other copy is still the banned
    # picture's copy, and the original stays rejected.
    image = pictures.busy(next(_seeds))
    (origin / "banned.png").write_bytes(pictures.encoded(image, "PNG"))
    assert status(node, "banned.png") == "approved"
    assert put(node, "banned.png", "rejected").status == 200
    (origin / "copy-a.jpg").write_bytes(pictures.reencoded(image, 45))
    (origin / "copy-b.jpg").write_bytes(pictures.resized_jpeg(image, 0.75, 70))
    assert [status(node, "copy-a.jpg"), status(node, "copy-b.jpg")] == ["rejected"] * 2

    assert put(node, "copy-a.jpg", "approved").status == 200

    assert status(node, "copy-a.jpg") == "approved"
    assert status(node, "copy-b.jpg") == "rejected"
    assert status(node, "banned.png") == "rejected"
    assert shown(node, "copy-b.jpg")["duplicate_of"] == "banned.png"
