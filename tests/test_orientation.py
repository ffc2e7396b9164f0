"""A picture is judged turned as Thumbor serves it: by its EXIF orientation under
RESPECT_ORIENTATION = True, as stored under Thumbor's default False.

The real Thumbor over HTTP, the real boto3 client, and a fake Rekognition that finds
what the left half of the picture it receives shows.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import piexif
import pytest
from PIL import Image

from tests.fakes.rekognition import FakeRekognition
from tests.pictures import busy
from tests.servers import ThumborServer, base_config

pytestmark = pytest.mark.e2e

RED = (255, 0, 0)
GREEN = (0, 128, 0)
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]
# EXIF orientation 3: shown turned by 180 degrees.
UPSIDE_DOWN = 3

_names = itertools.count()


class LeftHalfRekognition(FakeRekognition):
    """FakeRekognition answering by the mean colour of the left half of the picture sent."""

    def __init__(self) -> None:
        super().__init__()
        self._seen = threading.local()

    def _handle(self, target: str | None, body: bytes) -> Any:
        try:
            data = base64.b64decode(json.loads(body)["Image"]["Bytes"])
            with Image.open(io.BytesIO(data)) as image:
                left = image.convert("RGB").crop((0, 0, image.width // 2, image.height))
                red, green, blue = left.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
            self._seen.left = (red, green, blue)
        except (ValueError, KeyError, TypeError, OSError):
            self._seen.left = (0, 0, 0)
        return super()._handle(target, body)

    def _scenario_for(self, color: tuple[int, int, int], adapter: str | None = None) -> Any:
        return super()._scenario_for(self._seen.left, adapter)


@pytest.fixture(scope="module")
def left_half() -> Iterator[LeftHalfRekognition]:
    with LeftHalfRekognition() as fake:
        yield fake


@pytest.fixture
def backend(left_half: LeftHalfRekognition) -> Iterator[LeftHalfRekognition]:
    left_half.reset()
    left_half.respond(RED, NUDITY)
    yield left_half
    left_half.reset()


@pytest.fixture(scope="module", params=[False, True], ids=["as-stored", "turned"])
def server(
    request: pytest.FixtureRequest, module_root: Path, images: Path, left_half: FakeRekognition
) -> Iterator[ThumborServer]:
    root = module_root / f"orientation-{request.param}"
    config = base_config(root, images, left_half.url)
    config["RESPECT_ORIENTATION"] = request.param
    config["PRESERVE_EXIF_INFO"] = True
    config["UPLOAD_ENABLED"] = True
    config["MODERATION_REJECTED_RESPONSE"] = "forbidden"
    thumbor = ThumborServer(root, config).start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def red_on_the_left_stored(images: Path) -> str:
    """A JPEG stored red on the left, green on the right, that viewers turning it by its
    EXIF orientation see the other way round."""
    index = next(_names)
    # Bytes of its own: the same picture under another name would take its decision.
    image = Image.new("RGB", (200, 120), (0, 128, index % 64))
    image.paste(RED, (0, 0, 100, 120))
    buffer = io.BytesIO()
    image.save(
        buffer, "JPEG", exif=piexif.dump({"0th": {piexif.ImageIFD.Orientation: UPSIDE_DOWN}})
    )
    name = f"orientation-{index}.jpg"
    (images / name).write_bytes(buffer.getvalue())
    return name


def left_is_red(body: bytes) -> bool:
    with Image.open(io.BytesIO(body)) as image:
        red, green, _ = image.convert("RGB").getpixel((10, image.height // 2))
    return red > 180 and green < 80


def test_a_picture_is_judged_turned_as_thumbor_serves_it(
    server: ThumborServer, images: Path, backend: LeftHalfRekognition
) -> None:
    name = red_on_the_left_stored(images)
    turned = server.config["RESPECT_ORIENTATION"]

    response = server.get(f"/unsafe/{name}")

    assert backend.call_count == 1
    if turned:
        # Red is on the right of what viewers get: judged so, approved.
        assert response.status == 200
        assert not left_is_red(response.body)
    else:
        # Served as stored, red on the left: judged so, rejected.
        assert response.status == 403


def orientation(body: bytes) -> int:
    with Image.open(io.BytesIO(body)) as image:
        return int(image.getexif().get(piexif.ImageIFD.Orientation, 1))


MARK = (255, 0, 255)


def marked_upside_down(images: Path) -> str:
    """A busy JPEG marked in its top-left corner as stored, EXIF orientation 3."""
    index = next(_names)
    image = busy(f"orientation-{index}", (200, 120))
    image.paste(MARK, (0, 0, 40, 30))
    buffer = io.BytesIO()
    image.save(
        buffer, "JPEG", exif=piexif.dump({"0th": {piexif.ImageIFD.Orientation: UPSIDE_DOWN}})
    )
    name = f"orientation-{index}.jpg"
    (images / name).write_bytes(buffer.getvalue())
    return name


def marked_top_left(body: bytes) -> bool:
    with Image.open(io.BytesIO(body)) as image:
        red, green, blue = image.convert("RGB").getpixel((10, 10))
    return red > 200 and green < 60 and blue > 200


def test_no_viewer_turns_what_thumbor_serves_unturned(
    server: ThumborServer, images: Path, left_half: LeftHalfRekognition
) -> None:
    left_half.reset()
    name = marked_upside_down(images)
    upload = server.request(
        "POST", "/image", body=(images / name).read_bytes(), headers={"Content-Type": "image/jpeg"}
    )
    turned = server.config["RESPECT_ORIENTATION"]

    served = server.get(f"/unsafe/{name}")
    original = server.get(upload.header("Location") or "")

    assert (served.status, original.status) == (200, 200)
    # Thumbor turned the pixels, or no one is told to: what viewers see is what was judged.
    assert orientation(served.body) == 1
    assert orientation(original.body) == (UPSIDE_DOWN if turned else 1)
    assert marked_top_left(served.body) is not turned
