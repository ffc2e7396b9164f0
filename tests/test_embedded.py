"""Nothing unjudged rides along a served picture, and a picture is judged as Thumbor turns it.

The real Thumbor over HTTP, the real boto3 client, and the fake Rekognition: a rejected
picture hidden in a clean one's colour profile or EXIF thumbnail reaches no output, and a
decision made before such bytes were removed stands for the cleaned picture.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import piexif
import pytest
from PIL import Image

from tests.fakes.rekognition import FakeRekognition
from tests.servers import ThumborServer, base_config
from thumbor_rekognition import embedded
from thumbor_rekognition.decision import Decision, Event, Source, Status
from thumbor_rekognition.stores.sqlite import Store

pytestmark = pytest.mark.e2e

RED = (255, 0, 0)
GREEN = (0, 128, 0)
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]
# What Thumbor is asked for: the original's format, another size, and each output format.
OUTPUTS = [
    "/unsafe/{name}",
    "/unsafe/100x75/{name}",
    "/unsafe/filters:format(jpeg)/{name}",
    "/unsafe/filters:format(png)/{name}",
    "/unsafe/filters:format(webp)/{name}",
]

_names = itertools.count()


def encoded(colour: tuple[int, int, int], image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (160, 120), colour).save(buffer, image_format, **options)
    return buffer.getvalue()


REJECTED = encoded(RED, "JPEG")


def with_thumbnail(thumbnail: bytes, image_format: str = "JPEG") -> bytes:
    """A green picture whose EXIF block carries thumbnail as its IFD1 thumbnail."""
    block = piexif.dump(
        {"0th": {piexif.ImageIFD.Make: b"camera"}, "1st": {}, "thumbnail": thumbnail}
    )
    return encoded(GREEN, image_format, exif=block)


def embedded_pictures(body: bytes) -> list[bytes]:
    """The colour profile and the EXIF thumbnail a served picture carries, as stored."""
    with Image.open(io.BytesIO(body)) as image:
        found = [image.info.get("icc_profile") or b""]
        block = image.info.get("exif")
    if block:
        found.append(
            piexif.load(block if block.startswith(b"Exif") else b"Exif\0\0" + block)["thumbnail"]
            or b""
        )
    return found


def carries(body: bytes, secret: bytes) -> bool:
    """Whether a served picture holds secret: as its bytes, inflated, or embedded."""
    inflated = b""
    position = body.find(b"iCCP")
    if position != -1:
        start = body.index(b"\0", position + 4) + 2
        inflated = zlib.decompressobj().decompress(body[start:], 10_000_000)
    return (
        secret in body
        or secret in inflated
        or any(secret in part for part in embedded_pictures(body))
    )


@pytest.fixture(scope="module")
def server(
    module_root: Path, images: Path, module_fake: FakeRekognition
) -> Iterator[ThumborServer]:
    root = module_root / "embedded"
    config = base_config(root, images, module_fake.url)
    config["PRESERVE_EXIF_INFO"] = True
    config["MODERATION_REJECTED_RESPONSE"] = "forbidden"
    thumbor = ThumborServer(root, config).start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


@pytest.fixture
def backend(fake: FakeRekognition) -> FakeRekognition:
    fake.respond(RED, NUDITY)
    return fake


def publish(images: Path, data: bytes, suffix: str) -> str:
    name = f"embedded-{next(_names)}.{suffix}"
    (images / name).write_bytes(data)
    return name


def test_the_hidden_picture_is_one_the_backend_rejects(
    server: ThumborServer, images: Path, backend: FakeRekognition
) -> None:
    name = publish(images, REJECTED, "jpg")

    response = server.get(f"/unsafe/{name}")

    assert response.status == 403


@pytest.mark.parametrize(
    "original",
    [
        pytest.param(encoded(GREEN, "JPEG", icc_profile=REJECTED), id="jpeg-profile"),
        pytest.param(encoded(GREEN, "PNG", icc_profile=REJECTED), id="png-profile"),
        pytest.param(encoded(GREEN, "WEBP", icc_profile=REJECTED), id="webp-profile"),
    ],
)
def test_a_rejected_picture_as_colour_profile_reaches_no_output(
    server: ThumborServer, images: Path, backend: FakeRekognition, original: bytes
) -> None:
    assert carries(original, REJECTED)
    name = publish(images, original, "img")

    responses = [server.get(path.format(name=name)) for path in OUTPUTS]

    assert [response.status for response in responses] == [200] * len(OUTPUTS)
    assert not [
        path
        for path, response in zip(OUTPUTS, responses, strict=True)
        if carries(response.body, REJECTED)
    ]


@pytest.mark.parametrize("image_format", ["JPEG", "WEBP"])
def test_a_rejected_exif_thumbnail_reaches_no_output_under_preserve_exif_info(
    server: ThumborServer, images: Path, backend: FakeRekognition, image_format: str
) -> None:
    original = with_thumbnail(REJECTED, image_format)
    (thumbnail,) = embedded_pictures(original)[1:]
    with Image.open(io.BytesIO(thumbnail)) as hidden:
        assert hidden.convert("RGB").getpixel((10, 10)) == pytest.approx(RED, abs=8)
    name = publish(images, original, "img")

    responses = [server.get(path.format(name=name)) for path in OUTPUTS]

    assert [response.status for response in responses] == [200] * len(OUTPUTS)
    assert not [
        path
        for path, response in zip(OUTPUTS, responses, strict=True)
        if carries(response.body, thumbnail)
    ]
    # The rest of the EXIF block is kept, as PRESERVE_EXIF_INFO asks.
    with Image.open(io.BytesIO(responses[0].body)) as served:
        assert served.getexif().get(piexif.ImageIFD.Make) == "camera"


def test_the_original_kept_in_storage_holds_no_hidden_picture(
    server: ThumborServer, images: Path, backend: FakeRekognition
) -> None:
    name = publish(images, encoded(GREEN, "JPEG", icc_profile=REJECTED), "jpg")
    assert server.get(f"/unsafe/{name}").status == 200

    stored = (server.root / "storage").rglob("*")
    kept = [path.read_bytes() for path in stored if path.is_file() and path.suffix != ".ttl"]

    assert kept
    assert not [data for data in kept if REJECTED in data]


# Decisions made before what rides along was removed


def hidden_preview(colour: tuple[int, int, int]) -> bytes:
    """A picture of colour carrying an EXIF thumbnail: cleaning changes its bytes."""
    block = piexif.dump({"0th": {}, "1st": {}, "thumbnail": encoded(GREEN, "JPEG")})
    return encoded(colour, "JPEG", exif=block)


def test_a_human_approval_of_the_bytes_as_they_came_stands_for_the_cleaned_picture(
    server: ThumborServer, images: Path, backend: FakeRekognition
) -> None:
    original = hidden_preview(RED)
    assert embedded.cleaned(original).data != original
    name = publish(images, original, "jpg")
    store = Store(path=str(server.root / "decisions.sqlite3"))
    sha256 = hashlib.sha256(original).hexdigest()
    decided = Decision(name, name, sha256, Status.APPROVED, Source.MANUAL)
    store.save(decided, Event(Status.APPROVED, Source.MANUAL, "admin", "before cleaning"))

    responses = [server.get(path.format(name=name)) for path in OUTPUTS[:2]]

    assert [response.status for response in responses] == [200, 200]
    assert backend.call_count == 0
    kept = store.get(name)
    store.close()
    assert kept is not None
    assert (kept.status, kept.source) == (Status.APPROVED, Source.MANUAL)
    assert kept.sha256 == hashlib.sha256(embedded.cleaned(original).data).hexdigest()


def test_a_copy_of_bytes_decided_before_cleaning_takes_that_decision(
    server: ThumborServer, images: Path, backend: FakeRekognition
) -> None:
    original = hidden_preview(GREEN)
    first, copy = publish(images, original, "jpg"), publish(images, original, "jpg")
    store = Store(path=str(server.root / "decisions.sqlite3"))
    sha256 = hashlib.sha256(original).hexdigest()
    decided = Decision(first, first, sha256, Status.REJECTED, Source.MANUAL)
    store.save(decided, Event(Status.REJECTED, Source.MANUAL, "admin", "before cleaning"))
    store.close()

    response = server.get(f"/unsafe/{copy}")

    assert response.status == 403
    assert backend.call_count == 0
