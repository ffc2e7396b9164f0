"""Nothing unjudged rides along a served picture, and a picture is judged as Thumbor turns it.

The real Thumbor over HTTP, the real boto3 client, and the fake Rekognition: a rejected
picture hidden in a clean one's colour profile or EXIF thumbnail reaches no output, and a
decision made before such bytes were removed stands for the cleaned picture.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import piexif
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from tests.fakes.rekognition import FakeRekognition
from tests.servers import ThumborServer, base_config, result_file
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
    assert server.get(f"/unsafe/{publish(images, REJECTED, 'jpg')}").status == 403
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


def test_a_result_kept_before_originals_were_cleaned_is_rendered_again(
    server: ThumborServer, images: Path, backend: FakeRekognition
) -> None:
    original = encoded(GREEN, "JPEG", icc_profile=REJECTED)
    name = publish(images, original, "jpg")
    path = f"/unsafe/{name}"
    store = Store(path=str(server.root / "decisions.sqlite3"))
    sha256 = hashlib.sha256(original).hexdigest()
    store.save(
        Decision(name, name, sha256, Status.APPROVED, Source.AUTO),
        Event(Status.APPROVED, Source.AUTO, "system", "judged before cleaning"),
    )
    store.close()
    # As the result storage of the previous version kept it: the rendering, its
    # original's hash, the count and that version's mark.
    kept = result_file(server.root, path)
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(original + bytes.fromhex(sha256) + b"\x01\n\x89thumbor-moderation\x01")

    response = server.get(path)

    assert response.status == 200
    assert not carries(response.body, REJECTED)


# What is removed, format by format (embedded.cleaned on its own)


def jpeg_with(*segments: bytes, after: bytes = b"") -> bytes:
    """A green JPEG with these APPn/COM segments inserted after SOI, and after its end."""
    plain = encoded(GREEN, "JPEG")
    return plain[:2] + b"".join(segments) + plain[2:] + after


def segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload


@pytest.mark.parametrize(
    ("inserted", "after"),
    [
        pytest.param(segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + REJECTED), b"", id="xmp"),
        pytest.param(segment(0xE2, b"MPF\0" + b"\0" * 16), REJECTED, id="mpf-preview"),
        pytest.param(segment(0xED, b"Photoshop 3.0\0" + REJECTED), b"", id="app13"),
        pytest.param(segment(0xFE, base64.b64encode(REJECTED)), b"", id="comment-base64"),
        pytest.param(segment(0xE0, b"JFXX\0\x10" + REJECTED), b"", id="jfxx-thumbnail"),
        pytest.param(b"", REJECTED, id="after-end-of-image"),
        pytest.param(segment(0xF7, REJECTED), b"", id="reserved-marker"),
    ],
)
def test_jpeg_previews_comments_and_trailing_pictures_are_removed_losslessly(
    inserted: bytes, after: bytes
) -> None:
    original = jpeg_with(inserted, after=after)

    kept = embedded.cleaned(original)

    assert kept.removed
    assert not embedded.holds_picture(kept.data[3:])
    assert kept.data == encoded(GREEN, "JPEG")
    assert kept.was == hashlib.sha256(original).hexdigest()


def test_a_picture_in_an_exif_value_is_zeroed_and_the_rest_kept() -> None:
    block = piexif.dump(
        {
            "0th": {piexif.ImageIFD.Make: b"camera", piexif.ImageIFD.Orientation: 6},
            "Exif": {piexif.ExifIFD.MakerNote: REJECTED},
        }
    )
    original = encoded(GREEN, "JPEG", exif=block)

    kept = embedded.cleaned(original)

    assert REJECTED not in kept.data
    with Image.open(io.BytesIO(kept.data)) as image:
        exif = image.getexif()
        assert (exif[piexif.ImageIFD.Make], exif[piexif.ImageIFD.Orientation]) == ("camera", 6)
        image.load()


def test_a_usable_colour_profile_is_kept_and_cleaning_is_idempotent() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    originals = [
        encoded(GREEN, "JPEG", icc_profile=srgb),
        encoded(GREEN, "PNG", icc_profile=srgb),
        encoded(GREEN, "WEBP", icc_profile=srgb),
        with_thumbnail(REJECTED),
        encoded(GREEN, "PNG", icc_profile=REJECTED),
    ]

    once = [embedded.cleaned(original) for original in originals]
    twice = [embedded.cleaned(kept.data) for kept in once]

    assert [kept.data for kept in once[:3]] == originals[:3]
    assert [kept.data for kept in twice] == [kept.data for kept in once]
    assert [kept.was for kept in twice] == [""] * len(originals)


def test_a_profile_for_other_pixels_is_removed() -> None:
    grey = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()

    kept = embedded.cleaned(encoded(GREEN, "JPEG", icc_profile=grey))

    assert kept.removed == ("colour profile",)


def test_png_text_chunks_and_data_after_iend_are_removed() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", base64.b64encode(REJECTED).decode())
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>", zip=True)
    original = encoded(GREEN, "PNG", pnginfo=info) + REJECTED

    kept = embedded.cleaned(original)

    assert kept.data == encoded(GREEN, "PNG")
    assert set(kept.removed) == {"tEXt chunk", "iTXt chunk", "data after the end of the image"}


def test_gif_comments_are_removed_and_its_loop_kept() -> None:
    frames = [Image.new("RGB", (100, 80), colour) for colour in (GREEN, RED)]
    buffer = io.BytesIO()
    frames[0].save(
        buffer,
        "GIF",
        save_all=True,
        append_images=frames[1:],
        loop=0,
        comment=base64.b64encode(REJECTED),
    )

    kept = embedded.cleaned(buffer.getvalue())

    assert kept.removed == ("GIF comment",)
    with Image.open(io.BytesIO(kept.data)) as image:
        assert (image.n_frames, image.info.get("loop"), image.info.get("comment")) == (2, 0, None)


@pytest.mark.parametrize(
    "damaged",
    [
        pytest.param(encoded(GREEN, "JPEG")[:2] + b"\xff\xe1\xff\xff" + b"\0" * 10, id="jpeg"),
        pytest.param(encoded(GREEN, "PNG")[:40] + b"\xff" * 8, id="png"),
        pytest.param(encoded(GREEN, "GIF") + b"<html>", id="gif-polyglot"),
        pytest.param(REJECTED[:-2] + encoded(GREEN, "JPEG"), id="jpeg-in-jpeg"),
        pytest.param(
            encoded(GREEN, "JPEG")[:-2] + encoded(RED, "PNG") + b"\xff\xd9", id="png-in-scan"
        ),
    ],
)
def test_a_structure_that_cannot_be_followed_is_refused(damaged: bytes) -> None:
    with pytest.raises(embedded.UnsupportedImage):
        embedded.cleaned(damaged)


def test_an_unknown_chunk_inside_a_webp_frame_is_removed() -> None:
    frames = [Image.new("RGB", (100, 80), colour) for colour in (GREEN, RED)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    plain = buffer.getvalue()
    frame = plain.index(b"ANMF")
    length = int.from_bytes(plain[frame + 4 : frame + 8], "little")
    hidden = b"XTRA" + len(REJECTED).to_bytes(4, "little") + REJECTED + b"\0" * (len(REJECTED) & 1)
    end = frame + 8 + length + (length & 1)
    grown = (
        plain[: frame + 4]
        + (length + len(hidden)).to_bytes(4, "little")
        + plain[frame + 8 : frame + 8 + length]
        + b"\0" * (length & 1)
        + hidden
        + plain[end:]
    )
    original = b"RIFF" + (len(grown) - 8).to_bytes(4, "little") + grown[8:]

    kept = embedded.cleaned(original)

    assert kept.removed == ("XTRA chunk",)
    assert REJECTED not in kept.data
    assert kept.data == plain


def test_a_picture_spread_over_two_exif_values_removes_the_block() -> None:
    block = piexif.dump(
        {
            "0th": {piexif.ImageIFD.Make: b"camera"},
            "Exif": {
                piexif.ExifIFD.MakerNote: b"notes" + REJECTED[:2],
                piexif.ExifIFD.UserComment: REJECTED[2:],
            },
        }
    )
    assert REJECTED in block
    original = encoded(GREEN, "JPEG", exif=block)

    kept = embedded.cleaned(original)

    assert kept.removed == ("picture in EXIF",)
    assert REJECTED[2:] not in kept.data
