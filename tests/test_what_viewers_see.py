"""What the backend judges is what a viewer can be shown, whatever Thumbor makes of it.

The real Thumbor, the real boto3 client, and a fake Rekognition that, as Rekognition does,
finds what a picture shows in any part of it, not only in its average colour.
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

import pytest
from PIL import Image, ImageChops

from tests.fakes.rekognition import FakeRekognition
from tests.servers import ThumborServer, base_config
from tests.test_preparation import GREEN, SWAPPED_PRIMARIES

pytestmark = pytest.mark.e2e

RED = (255, 0, 0)
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]
# The parts of a picture the fake looks at, besides the whole: a grid this many a side.
PARTS = 4

_names = itertools.count()


class RegionalRekognition(FakeRekognition):
    """FakeRekognition that also finds a colour filling one part of a 4x4 grid of the picture."""

    def __init__(self) -> None:
        super().__init__()
        self._parts = threading.local()

    def _handle(self, target: str | None, body: bytes) -> Any:
        self._parts.colours = _part_colours(body)
        return super()._handle(target, body)

    def _scenario_for(self, color: tuple[int, int, int], adapter: str | None = None) -> Any:
        for candidate in (color, *getattr(self._parts, "colours", ())):
            scenario = super()._scenario_for(candidate, adapter)
            if scenario.labels:
                return scenario
        return super()._scenario_for(color, adapter)


def _part_colours(body: bytes) -> list[tuple[int, int, int]]:
    """The mean colour of each part of the picture a DetectModerationLabels body carries."""
    try:
        data = base64.b64decode(json.loads(body)["Image"]["Bytes"])
        with Image.open(io.BytesIO(data)) as image:
            small = image.convert("RGB").resize((PARTS, PARTS), Image.Resampling.BOX)
    except (ValueError, KeyError, TypeError, OSError):
        return []
    pixels = small.tobytes()
    return [(pixels[i], pixels[i + 1], pixels[i + 2]) for i in range(0, len(pixels), 3)]


@pytest.fixture(scope="module")
def regional() -> Iterator[RegionalRekognition]:
    with RegionalRekognition() as fake:
        yield fake


@pytest.fixture
def backend(regional: RegionalRekognition) -> Iterator[RegionalRekognition]:
    regional.reset()
    regional.respond(RED, NUDITY)
    yield regional
    regional.reset()


@pytest.fixture(scope="module")
def server(
    module_root: Path, images: Path, regional: RegionalRekognition
) -> Iterator[ThumborServer]:
    thumbor = ThumborServer(module_root, base_config(module_root, images, regional.url))
    thumbor.start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def publish(images: Path, data: bytes, name: str | None = None) -> str:
    name = name or f"viewers-{next(_names)}.png"
    (images / name).write_bytes(data)
    return name


def red_pixels(body: bytes) -> int:
    """How many pixels of a served picture a viewer sees as red."""
    with Image.open(io.BytesIO(body)) as image:
        bands = image.convert("RGB").split()
    masks = [
        band.point(lambda value, red=red: 255 if (value > 180) == red else 0)
        for band, red in zip(bands, (True, False, False), strict=True)
    ]
    red = ImageChops.multiply(ImageChops.multiply(masks[0], masks[1]), masks[2])
    return red.histogram()[255]


def png(image: Image.Image, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def test_fake_finds_a_colour_that_fills_only_part_of_a_picture(
    server: ThumborServer, images: Path, backend: RegionalRekognition
) -> None:
    half_red = Image.new("RGB", (160, 120), (255, 255, 255))
    half_red.paste(RED, (0, 0, 80, 120))
    name = publish(images, png(half_red))

    response = server.get(f"/unsafe/{name}")

    assert response.header("X-Moderation-Status") == "rejected"


def test_transparent_red_png_converted_to_jpeg_is_refused_and_shows_no_red(
    server: ThumborServer, images: Path, backend: RegionalRekognition
) -> None:
    # White on a page; 100% red once Thumbor's JPEG output drops the alpha channel.
    name = publish(images, png(Image.new("RGBA", (160, 120), (*RED, 0))), "hidden.png")

    response = server.get(f"/unsafe/filters:format(jpeg)/{name}")

    assert response.status == 200
    assert response.header("X-Moderation-Status") == "rejected"
    assert red_pixels(response.body) == 0
    assert backend.call_count == 1


def jpeg(image: Image.Image, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **params)
    return buffer.getvalue()


def test_green_picture_whose_profile_shows_it_red_is_refused(
    server: ThumborServer, images: Path, backend: RegionalRekognition
) -> None:
    # Thumbor copies the profile into what it serves: colour-managed viewers see red.
    data = jpeg(Image.new("RGB", (160, 120), GREEN), icc_profile=SWAPPED_PRIMARIES)
    name = publish(images, data, f"swapped-{next(_names)}.jpg")

    response = server.get(f"/unsafe/{name}")

    assert response.status == 200
    assert response.header("X-Moderation-Status") == "rejected"
    assert backend.call_count == 1


def test_red_picture_whose_profile_shows_it_green_is_refused_without_its_profile_too(
    server: ThumborServer, images: Path, backend: RegionalRekognition
) -> None:
    # Colour-managed viewers see green; strip_icc() serves the stored red.
    data = jpeg(Image.new("RGB", (160, 120), RED), icc_profile=SWAPPED_PRIMARIES)
    name = publish(images, data, f"swapped-{next(_names)}.jpg")

    response = server.get(f"/unsafe/filters:strip_icc()/{name}")

    assert response.status == 200
    assert response.header("X-Moderation-Status") == "rejected"
    assert red_pixels(response.body) == 0
