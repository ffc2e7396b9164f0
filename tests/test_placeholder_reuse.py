"""A placeholder already rendered at a size answers every later pending or rejected new
picture at that size as it is, through the loader, without being rendered again: the
same bytes and headers as a fresh rendering, the box of each request kept."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.servers import ThumborServer, base_config

pytestmark = pytest.mark.e2e

_sizes = itertools.count()


@pytest.fixture
def node(tmp_path: Path, images: Path, fake: FakeRekognition) -> Iterator[ThumborServer]:
    config = base_config(tmp_path, images, fake.url)
    # One call every 100 s: after the first, every new picture is answered pending at once.
    config.update({"REKOGNITION_MAX_CALLS_PER_SECOND": 0.01, "MODERATION_TURN_WAIT_SECONDS": 0.1})
    thumbor = ThumborServer(tmp_path, config).start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def add(images: Path) -> str:
    name = f"new-{next(_sizes)}.png"
    (images / name).write_bytes(picture((20, 90, 200), size=(160, 120 + next(_sizes))))
    return name


def test_pending_new_pictures_share_one_rendering_of_the_placeholder_per_size(
    node: ThumborServer, images: Path
) -> None:
    assert node.get(f"/unsafe/90x90/{add(images)}").header("X-Moderation-Status") == "approved"
    answers = [node.get(f"/unsafe/120x80/{add(images)}") for _ in range(3)]
    other_size = node.get(f"/unsafe/60x40/{add(images)}")

    for answer in [*answers, other_size]:
        assert answer.status == 200
        assert answer.header("X-Moderation-Status") == "pending"
        assert (answer.header("Content-Type") or "").startswith("image/")
        assert "max-age=" in (answer.header("Cache-Control") or "")
    first, *later = answers
    assert all(answer.body == first.body for answer in later)
    assert [answer.header("Cache-Control") for answer in later] == [
        first.header("Cache-Control")
    ] * len(later)
    assert Image.open(io.BytesIO(first.body)).size == (120, 80)
    assert Image.open(io.BytesIO(other_size.body)).size == (60, 40)
