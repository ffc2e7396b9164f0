"""Original bytes -> a JPEG or PNG of 80..10,000 px a side and at most 5 MB, or a refusal."""

from __future__ import annotations

import io
import itertools
import logging
import struct
import zlib
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageCms, ImageFile

from tests import pictures
from thumbor_rekognition import fingerprint, pdq, preparation
from thumbor_rekognition.preparation import (
    ALPHA_IGNORED,
    MAX_BYTES,
    ON_WHITE,
    SHOWN,
    WITHOUT_PROFILE,
    Frame,
    ImageTooLarge,
    UnsupportedImage,
    prepare,
)

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
CYAN = (0, 255, 255)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
# Pillow's own default, set explicitly: thumbor's PIL engine overwrites it process-wide.
PILLOW_MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3


def encode(image: Image.Image, image_format: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def noise(size: tuple[int, int]) -> Image.Image:
    """A picture that compresses badly, so that byte sizes mean something."""
    return Image.merge("RGB", [Image.effect_noise(size, 80) for _ in range(3)])


def opened(frame: Frame) -> Image.Image:
    """The frame as the backend will decode it, checked to be a JPEG or PNG."""
    image = Image.open(io.BytesIO(frame.data))
    image.load()
    assert image.format in ("JPEG", "PNG")
    assert image.format == frame.format
    assert image.size == (frame.width, frame.height)
    return image


def view(frame: Frame, name: str) -> Image.Image:
    """The part of a prepared frame that shows one of its views, in RGB."""
    image = opened(frame).convert("RGB")
    columns, rows = frame.grid
    width, height = image.width // columns, image.height // rows
    position = frame.views.index(name)
    left, top = position % columns * width, position // columns * height
    return image.crop((left, top, left + width, top + height))


def share_near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 40) -> float:
    """The share of the picture's pixels within tolerance of a colour."""
    rgb = image.convert("RGB")
    bands = [
        band.point(lambda value, want=want: 255 if abs(value - want) <= tolerance else 0)
        for band, want in zip(rgb.split(), colour, strict=True)
    ]
    matching = ImageChops.multiply(ImageChops.multiply(bands[0], bands[1]), bands[2])
    return matching.histogram()[255] / (rgb.width * rgb.height)


def near(pixel: Any, expected: tuple[int, ...], tolerance: int = 6) -> bool:
    values = pixel if isinstance(pixel, tuple) else (pixel,)
    return len(values) == len(expected) and all(
        abs(value - want) <= tolerance for value, want in zip(values, expected, strict=True)
    )


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims this size over pixel data far too short for it."""
    data = bytearray(encode(Image.new("RGB", (8, 8), RED), "PNG"))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


@pytest.fixture(scope="module")
def camera_jpeg() -> bytes:
    """A 4000x3000 photo-like JPEG: textured, about 4 MB."""
    texture = noise((500, 375)).resize((4000, 3000), Image.Resampling.BICUBIC)
    return encode(texture, "JPEG", quality=90)


@pytest.mark.parametrize(
    ("mode", "image_format"), [("RGB", "JPEG"), ("RGB", "PNG"), ("L", "PNG"), ("L", "JPEG")]
)
def test_picture_the_backend_accepts_is_still_reencoded_as_it_looks(
    mode: str, image_format: str
) -> None:
    data = encode(Image.new(mode, (160, 120), 90), image_format)

    prepared = prepare(data)

    assert len(prepared.frames) == 1
    frame = prepared.frames[0]
    assert frame.data != data
    assert (frame.format, frame.width, frame.height) == ("JPEG", 160, 120)
    assert (prepared.format, prepared.width, prepared.height) == (image_format, 160, 120)
    assert prepared.frame_count == 1
    with Image.open(io.BytesIO(data)) as original:
        expected = original.convert("L").getpixel((80, 60))
    assert near(opened(frame).convert("L").getpixel((80, 60)), (expected,))


def test_camera_metadata_never_reaches_the_backend() -> None:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x8825] = {2: (48.0, 51.0, 30.0), 4: (2.0, 17.0, 40.0)}  # GPS position
    buffer = io.BytesIO()
    Image.new("RGB", (160, 120), BLUE).save(buffer, "JPEG", exif=exif)

    prepared = prepare(buffer.getvalue())

    frame = prepared.frames[0].data
    assert b"CameraMaker" not in frame
    assert not opened(prepared.frames[0]).getexif()


@pytest.mark.parametrize("max_side", [1600, 1000])
def test_large_jpeg_is_reduced_towards_max_side_and_reencoded(
    camera_jpeg: bytes, max_side: int
) -> None:
    prepared = prepare(camera_jpeg, max_side=max_side)

    image = opened(prepared.frames[0])
    assert image.format == "JPEG"
    assert max_side <= max(image.size) < 2 * max_side
    assert image.width * 3 == image.height * 4
    assert len(prepared.frames[0].data) <= MAX_BYTES
    assert (prepared.width, prepared.height) == (4000, 3000)


@pytest.mark.parametrize(
    ("size", "max_side"),
    [
        ((2000, 500), 1000),
        ((500, 4000), 1000),
        ((2500, 500), 1000),
        ((3000, 1000), 1600),
    ],
    ids=["2000x500-at-1000", "500x4000-at-1000", "2500x500-at-1000", "3000x1000-at-1600"],
)
def test_png_longer_than_max_side_is_reduced_towards_it(
    size: tuple[int, int], max_side: int
) -> None:
    data = encode(Image.new("RGB", size, BLUE), "PNG")

    prepared = prepare(data, max_side=max_side)

    image = opened(prepared.frames[0])
    assert max_side <= max(image.size) < 2 * max_side
    assert abs(image.width / image.height - size[0] / size[1]) < 0.05
    assert near(image.getpixel((image.width // 2, image.height // 2)), BLUE)


def test_jpeg_over_the_byte_limit_is_reencoded_under_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The 5 MB limit scaled down, so that a small picture can exceed it.
    monkeypatch.setattr(preparation, "MAX_BYTES", 150_000)
    data = encode(noise((400, 300)), "JPEG", quality=100)
    assert len(data) > 150_000

    prepared = prepare(data, max_side=400)

    frame = prepared.frames[0]
    assert frame.data != data
    assert len(frame.data) <= 150_000
    assert opened(frame).size == (400, 300)


def test_reencoded_frame_never_exceeds_the_byte_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # The 5 MB limit scaled down, so that a small picture can exceed it.
    monkeypatch.setattr(preparation, "MAX_BYTES", 50_000)
    data = encode(noise((400, 300)), "JPEG", quality=100)

    prepared = prepare(data, max_side=400)

    assert len(prepared.frames[0].data) <= 50_000


def test_cmyk_jpeg_is_converted_to_rgb_keeping_its_colours() -> None:
    data = encode(Image.new("CMYK", (160, 120), (0, 255, 255, 0)), "JPEG")

    prepared = prepare(data)

    image = opened(prepared.frames[0])
    assert image.mode == "RGB"
    assert near(image.getpixel((10, 10)), RED)
    assert prepared.format == "JPEG"


def test_16_bit_png_mid_grey_comes_out_mid_grey() -> None:
    data = encode(Image.new("I;16", (160, 120), 32768), "PNG")

    prepared = prepare(data)

    image = opened(prepared.frames[0]).convert("L")
    low, high = image.getextrema()
    assert 124 <= low <= high <= 132


def test_16_bit_png_keeps_black_black_and_white_white() -> None:
    source = Image.new("I;16", (160, 120), 0)
    source.paste(65535, (80, 0, 160, 120))
    data = encode(source, "PNG")

    prepared = prepare(data)

    image = opened(prepared.frames[0]).convert("L")
    assert near(image.getpixel((2, image.height // 2)), (0,))
    assert near(image.getpixel((image.width - 3, image.height // 2)), (255,))


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (160, 120), 0)
    image.putpalette([0, 0, 0, *RED] + [0] * 762)
    image.paste(1, (80, 0, 160, 120))
    return encode(image, "PNG", transparency=0)


def _rgba_half_transparent() -> bytes:
    image = Image.new("RGBA", (160, 120), (0, 0, 0, 0))
    image.paste((*RED, 255), (80, 0, 160, 120))
    return encode(image, "PNG")


@pytest.mark.parametrize(
    "data", [_palette_with_transparency(), _rgba_half_transparent()], ids=["palette", "rgba"]
)
def test_transparent_png_is_flattened_on_white(data: bytes) -> None:
    prepared = prepare(data)

    image = view(prepared.frames[0], ON_WHITE)
    assert near(image.getpixel((3, image.height // 2)), WHITE)
    assert near(image.getpixel((image.width - 4, image.height // 2)), RED)


def _transparent_red_rgba() -> bytes:
    return encode(Image.new("RGBA", (160, 120), (*RED, 0)), "PNG")


def _palette_whose_transparent_colour_is_red() -> bytes:
    image = Image.new("P", (160, 120), 0)
    image.putpalette([*RED, *BLUE] + [0] * 762)
    image.paste(1, (0, 0, 16, 120))
    return encode(image, "PNG", transparency=0)


def _rgb_whose_transparent_colour_is_red() -> bytes:
    image = Image.new("RGB", (160, 120), RED)
    image.paste(BLUE, (0, 0, 16, 120))
    return encode(image, "PNG", transparency=RED)


def _webp_with_transparent_red() -> bytes:
    # exact: the encoder keeps the colours under alpha 0, as a hostile file would.
    return encode(Image.new("RGBA", (160, 120), (*RED, 0)), "WEBP", lossless=True, exact=True)


def _grey_with_transparent_black() -> bytes:
    return encode(Image.new("LA", (160, 120), (0, 0)), "PNG")


def _sixteen_bit_grey_with_transparent_black() -> bytes:
    return encode(Image.new("I;16", (160, 120), 0), "PNG", transparency=0)


@pytest.mark.parametrize(
    ("data", "hidden"),
    [
        (_transparent_red_rgba(), RED),
        (_palette_whose_transparent_colour_is_red(), RED),
        (_rgb_whose_transparent_colour_is_red(), RED),
        (_webp_with_transparent_red(), RED),
        (_grey_with_transparent_black(), (0, 0, 0)),
        (_sixteen_bit_grey_with_transparent_black(), (0, 0, 0)),
    ],
    ids=["rgba-png", "palette-trns", "rgb-trns", "webp-alpha", "la", "16-bit-grey-trns"],
)
def test_colours_under_transparency_are_judged_as_a_jpeg_conversion_shows_them(
    data: bytes, hidden: tuple[int, int, int]
) -> None:
    prepared = prepare(data)

    frame = prepared.frames[0]
    assert frame.views == prepared.views == (ON_WHITE, ALPHA_IGNORED)
    assert share_near(opened(frame), hidden) > 0.4
    assert share_near(view(frame, ALPHA_IGNORED), hidden) > 0.85
    assert share_near(view(frame, ON_WHITE), WHITE) > 0.85


def test_picture_drawn_by_its_alpha_alone_is_judged_on_white_too() -> None:
    # Black everywhere; only the alpha channel draws a shape, which only a browser shows.
    image = Image.new("RGBA", (160, 120), (0, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 80, 120))
    data = encode(image, "PNG")

    prepared = prepare(data)

    on_white = view(prepared.frames[0], ON_WHITE)
    assert near(on_white.getpixel((20, 60)), WHITE)
    assert near(on_white.getpixel((140, 60)), (0, 0, 0))
    assert share_near(view(prepared.frames[0], ALPHA_IGNORED), (0, 0, 0)) > 0.95


@pytest.mark.parametrize(
    "data",
    [
        encode(Image.new("RGBA", (160, 120), (*BLUE, 255)), "PNG"),
        encode(Image.new("RGB", (160, 120), BLUE), "PNG", transparency=RED),
        encode(Image.new("P", (160, 120), 1), "PNG", transparency=0),
    ],
    ids=["rgba-all-opaque", "rgb-unused-trns", "palette-unused-trns"],
)
def test_opaque_picture_that_could_hold_transparency_is_one_view_of_its_own_size(
    data: bytes,
) -> None:
    prepared = prepare(data)

    frame = prepared.frames[0]
    assert (frame.views, frame.grid) == ((SHOWN,), (1, 1))
    assert opened(frame).size == (160, 120)


@pytest.mark.parametrize(
    ("size", "grid"),
    [((3200, 2400), (1, 2)), ((2400, 3200), (2, 1)), ((9000, 300), (1, 2))],
    ids=["landscape-stacked", "portrait-side-by-side", "long"],
)
def test_two_views_together_are_reduced_towards_max_side_as_one_picture_is(
    size: tuple[int, int], grid: tuple[int, int]
) -> None:
    data = encode(Image.new("RGBA", size, (*RED, 0)), "PNG")

    prepared = prepare(data, max_side=1000)

    frame = prepared.frames[0]
    image = opened(frame)
    assert frame.grid == grid
    assert 1000 <= max(image.size) < 2000
    view_size = view(frame, ALPHA_IGNORED).size
    assert abs(view_size[0] * size[1] / (view_size[1] * size[0]) - 1) < 0.05
    assert share_near(view(frame, ALPHA_IGNORED), RED) > 0.95


def test_tiny_transparent_picture_comes_out_at_least_80_px_with_both_views() -> None:
    data = encode(Image.new("RGBA", (10, 10), (*RED, 0)), "PNG")

    prepared = prepare(data)

    frame = prepared.frames[0]
    assert opened(frame).size == (80, 160)
    assert share_near(view(frame, ALPHA_IGNORED), RED) > 0.95
    assert share_near(view(frame, ON_WHITE), WHITE) > 0.95


# Colour profiles. Pillow writes no profile but sRGB, so the odd ones are built here by hand
# (ICC.1 v2): a 128-byte header, a table of tags, then each tag's data on 4-byte bounds.


def s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + s15(x) + s15(y) + s15(z)


def curve(*points: int) -> bytes:
    """A tone curve: no points is gamma 1.0 (values as they are); else a table of points."""
    return b"curv" + bytes(4) + struct.pack(f">I{len(points)}H", len(points), *points)


def icc_profile(
    colour_space: bytes,
    tags: dict[bytes, bytes],
    device_class: bytes = b"mntr",
    connection: bytes = b"XYZ ",
) -> bytes:
    """A profile of the given colour space with these tags; nothing a converter can do
    without (no description, no copyright)."""
    table = b""
    body = b""
    offset = 128 + 4 + 12 * len(tags)
    for signature, data in tags.items():
        table += struct.pack(">4sII", signature, offset + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    size = offset + len(body)
    header = struct.pack(
        ">I4sI4s4s4s", size, b"none", 0x02100000, device_class, colour_space, connection
    )
    header += bytes(12) + b"acsp" + bytes(24)  # no date, no platform, flags, device, attributes
    header += struct.pack(">I", 0) + s15(0.9642) + s15(1.0) + s15(0.8249)  # intent, D50
    header += bytes(128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + body


D50 = xyz(0.9642, 1.0, 0.8249)
# sRGB's primaries as XYZ seen under D50, the profile connection space.
SRGB_RED = xyz(0.4361, 0.2225, 0.0139)
SRGB_GREEN = xyz(0.3851, 0.7169, 0.0971)
SRGB_BLUE = xyz(0.1431, 0.0606, 0.7141)
# An RGB profile whose green channel is sRGB's red and red channel sRGB's green: a picture
# stored green is shown red by every colour-managed viewer, and the other way round.
SWAPPED_PRIMARIES = icc_profile(
    b"RGB ",
    {
        b"wtpt": D50,
        b"rXYZ": SRGB_GREEN,
        b"gXYZ": SRGB_RED,
        b"bXYZ": SRGB_BLUE,
        b"rTRC": curve(),
        b"gTRC": curve(),
        b"bTRC": curve(),
    },
)
# A grey profile whose tone curve runs backwards: grey level 0 is shown white.
INVERTED_GREY = icc_profile(b"GRAY", {b"wtpt": D50, b"kTRC": curve(65535, 0)})


def _cyan_shown_red() -> bytes:
    """A CMYK profile (one 2x2x2x2 table to Lab): pure cyan is shown red, white white,
    every other ink mix dark grey."""

    def lab(lightness: float, a: float, b: float) -> bytes:
        return bytes([round(lightness * 255 / 100), round(a + 128), round(b + 128)])

    shown = {(0, 0, 0, 0): lab(100, 0, 0), (1, 0, 0, 0): lab(54, 80, 67)}
    corners = b"".join(
        shown.get(inks, lab(30, 0, 0)) for inks in itertools.product((0, 1), repeat=4)
    )
    identity = b"".join(s15(value) for value in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ramp = bytes(range(256))
    # lut8Type: 4 inputs, 3 outputs, 2 grid points; a matrix, input curves, the table
    # of every corner, output curves.
    table = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + identity + ramp * 4 + corners + ramp * 3
    return icc_profile(b"CMYK", {b"wtpt": D50, b"A2B0": table}, b"prtr", b"Lab ")


CYAN_SHOWN_RED = _cyan_shown_red()


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_picture_stored_green_is_judged_red_as_colour_managed_viewers_show_it(
    image_format: str,
) -> None:
    data = encode(Image.new("RGB", (160, 120), GREEN), image_format, icc_profile=SWAPPED_PRIMARIES)

    prepared = prepare(data)

    frame = prepared.frames[0]
    assert frame.views == (SHOWN, f"{SHOWN} {WITHOUT_PROFILE}")
    assert share_near(view(frame, SHOWN), RED) > 0.85
    assert share_near(view(frame, f"{SHOWN} {WITHOUT_PROFILE}"), GREEN) > 0.85


def test_picture_a_profile_shows_green_is_judged_as_stored_too() -> None:
    # The same profile the other way round: colour-managed viewers see green, while
    # Thumbor's strip_icc() output and viewers without colour management see red.
    data = encode(Image.new("RGB", (160, 120), RED), "JPEG", icc_profile=SWAPPED_PRIMARIES)

    prepared = prepare(data)

    frame = prepared.frames[0]
    assert share_near(view(frame, SHOWN), GREEN) > 0.85
    assert share_near(view(frame, f"{SHOWN} {WITHOUT_PROFILE}"), RED) > 0.85


def test_transparent_picture_with_a_profile_is_judged_in_four_views() -> None:
    data = encode(Image.new("RGBA", (160, 120), (*GREEN, 0)), "PNG", icc_profile=SWAPPED_PRIMARIES)

    prepared = prepare(data)

    frame = prepared.frames[0]
    assert frame.grid == (2, 2)
    assert share_near(view(frame, ALPHA_IGNORED), RED) > 0.85
    assert share_near(view(frame, f"{ALPHA_IGNORED} {WITHOUT_PROFILE}"), GREEN) > 0.85
    assert share_near(view(frame, ON_WHITE), WHITE) > 0.85


def test_grey_picture_is_judged_through_its_grey_profile() -> None:
    data = encode(Image.new("L", (160, 120), 0), "JPEG", icc_profile=INVERTED_GREY)

    prepared = prepare(data)

    frame = prepared.frames[0]
    assert share_near(view(frame, SHOWN), WHITE) > 0.85
    assert share_near(view(frame, f"{SHOWN} {WITHOUT_PROFILE}"), BLACK) > 0.85


def test_cmyk_picture_is_judged_through_its_cmyk_profile() -> None:
    data = encode(Image.new("CMYK", (160, 120), (255, 0, 0, 0)), "JPEG", icc_profile=CYAN_SHOWN_RED)

    prepared = prepare(data)

    frame = prepared.frames[0]
    assert share_near(view(frame, SHOWN), RED) > 0.85
    # Thumbor converts CMYK to RGB without the profile, and keeps it where it no longer applies.
    assert share_near(view(frame, f"{SHOWN} {WITHOUT_PROFILE}"), CYAN) > 0.85


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_srgb_profile_leaves_the_picture_one_view_of_its_own_size(image_format: str) -> None:
    data = encode(
        Image.new("RGB", (160, 120), (30, 120, 200)), image_format, icc_profile=srgb_profile()
    )

    prepared = prepare(data)

    frame = prepared.frames[0]
    assert (frame.views, frame.grid) == ((SHOWN,), (1, 1))
    assert opened(frame).size == (160, 120)
    assert near(opened(frame).getpixel((80, 60)), (30, 120, 200))


def srgb_tone(level: int) -> int:
    """sRGB's tone curve: a stored level's light, out of 65535."""
    value = level / 255
    light = value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4
    return round(light * 65535)


def test_profile_that_changes_a_few_grey_levels_only_is_applied() -> None:
    # sRGB's, but for levels 100..110, which are shown white.
    levels = [srgb_tone(level) for level in range(256)]
    levels[100:111] = [65535] * 11
    tones = curve(*levels)
    tags = {b"rXYZ": SRGB_RED, b"gXYZ": SRGB_GREEN, b"bXYZ": SRGB_BLUE}
    icc = icc_profile(
        b"RGB ", {b"wtpt": D50, **tags, b"rTRC": tones, b"gTRC": tones, b"bTRC": tones}
    )
    data = encode(Image.new("RGB", (160, 120), (105, 105, 105)), "PNG", icc_profile=icc)

    prepared = prepare(data)

    frame = prepared.frames[0]
    assert share_near(view(frame, SHOWN), WHITE) > 0.85
    assert share_near(view(frame, f"{SHOWN} {WITHOUT_PROFILE}"), (105, 105, 105)) > 0.85


@pytest.mark.parametrize(
    "icc",
    [b"not a colour profile" * 8, SWAPPED_PRIMARIES[:200], INVERTED_GREY],
    ids=["garbage", "truncated", "grey-profile-on-rgb"],
)
def test_picture_whose_profile_cannot_be_used_is_judged_as_stored(
    icc: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    data = encode(Image.new("RGB", (160, 120), GREEN), "PNG", icc_profile=icc)

    with caplog.at_level(logging.WARNING, "thumbor_rekognition.preparation"):
        prepared = prepare(data)

    frame = prepared.frames[0]
    assert frame.views == (SHOWN,)
    assert share_near(opened(frame), GREEN) > 0.85
    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert "colour profile" in caplog.records[0].getMessage()


def test_exif_rotated_jpeg_is_turned_the_way_a_viewer_shows_it() -> None:
    stored = Image.new("RGB", (200, 100), RED)
    stored.paste(BLUE, (100, 0, 200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(stored, "JPEG", exif=exif.tobytes())

    prepared = prepare(data)

    image = opened(prepared.frames[0])
    assert image.height > image.width
    assert image.height * 100 == image.width * 200
    assert near(image.getpixel((image.width // 2, 4)), RED)
    assert near(image.getpixel((image.width // 2, image.height - 5)), BLUE)


@pytest.mark.parametrize("image_format", ["GIF", "WEBP", "TIFF", "BMP"])
def test_other_formats_are_converted_to_jpeg(image_format: str) -> None:
    data = encode(Image.new("RGB", (160, 120), (0, 128, 255)), image_format)

    prepared = prepare(data)

    image = opened(prepared.frames[0])
    assert image.format == "JPEG"
    assert near(image.getpixel((10, 10)), (0, 128, 255))
    assert (prepared.format, prepared.width, prepared.height) == (image_format, 160, 120)


def test_animated_gif_reports_its_frame_count() -> None:
    frames = [Image.new("RGB", (160, 120), color) for color in (RED, BLUE, WHITE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)

    prepared = prepare(data)

    assert prepared.frame_count == 3
    assert opened(prepared.frames[0]).format == "JPEG"


@pytest.mark.parametrize(
    ("size", "image_format"),
    [((10, 10), "PNG"), ((10, 10), "JPEG"), ((100, 79), "JPEG"), ((79, 300), "PNG")],
)
def test_picture_with_a_side_under_80_px_comes_out_at_least_80_px(
    size: tuple[int, int], image_format: str
) -> None:
    data = encode(Image.new("RGB", size, BLUE), image_format)

    prepared = prepare(data)

    image = opened(prepared.frames[0])
    assert min(image.size) >= 80
    assert max(image.size) <= 10_000
    assert near(image.getpixel((image.width // 2, image.height // 2)), BLUE)


@pytest.mark.parametrize("size", [(20_000, 20), (20, 20_000)])
def test_extremely_long_picture_comes_out_within_80_to_10000_px(size: tuple[int, int]) -> None:
    data = encode(Image.new("RGB", size, BLUE), "PNG")

    prepared = prepare(data)

    image = opened(prepared.frames[0])
    assert 80 <= min(image.size) <= max(image.size) <= 10_000


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_rgba_half_transparent(), (160, 120)),
        (encode(Image.new("RGB", (300, 200), BLUE), "GIF"), (300, 200)),
        (encode(Image.new("RGB", (300, 200), BLUE), "BMP"), (300, 200)),
    ],
    ids=["rgba-png", "gif", "bmp"],
)
def test_converted_picture_smaller_than_max_side_keeps_its_size(
    data: bytes, expected: tuple[int, int]
) -> None:
    prepared = prepare(data)

    frame = prepared.frames[0]
    assert all(view(frame, name).size == expected for name in frame.views)


def test_picture_with_more_pixels_than_max_pixels_is_refused_before_decoding() -> None:
    # Decoding this would fail as truncated; only the header has been read.
    data = png_claiming(5000, 5000)

    with pytest.raises(ImageTooLarge) as info:
        prepare(data, max_pixels=10_000_000)

    assert "5000x5000" in str(info.value)
    assert "MODERATION_MAX_PIXELS" in str(info.value)


def test_picture_one_pixel_over_max_pixels_is_refused() -> None:
    data = encode(Image.new("RGB", (200, 100), BLUE), "PNG")

    with pytest.raises(ImageTooLarge):
        prepare(data, max_pixels=19_999)


def test_picture_of_exactly_max_pixels_is_accepted() -> None:
    data = encode(Image.new("RGB", (200, 100), BLUE), "PNG")

    prepared = prepare(data, max_pixels=20_000)

    assert (prepared.frames[0].width, prepared.frames[0].height) == (200, 100)


def test_decompression_bomb_is_refused_whatever_max_pixels_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOW_MAX_IMAGE_PIXELS)
    data = png_claiming(30_000, 30_000)

    with pytest.raises(ImageTooLarge):
        prepare(data, max_pixels=10**12)


@pytest.mark.parametrize("size", [(150, 100), (300, 100)], ids=["over-limit", "over-twice-limit"])
def test_picture_over_pillows_bomb_limit_is_refused_as_too_large(
    monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]
) -> None:
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice it; both must refuse.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    data = encode(Image.new("RGB", size, BLUE), "PNG")

    with pytest.raises(ImageTooLarge):
        prepare(data)


def _truncated(image_format: str) -> bytes:
    data = encode(noise((400, 300)), image_format)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(range(256)) * 8,
        b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><rect/></svg>',
        b"<!DOCTYPE html><html><body><img src='a.jpg'></body></html>",
        _truncated("JPEG"),
        _truncated("PNG"),
    ],
    ids=["empty", "random", "svg", "html", "truncated-jpeg", "truncated-png"],
)
def test_bytes_that_are_no_readable_picture_are_unsupported(
    monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    # Pillow's default; thumbor's PIL engine turns it on process-wide when imported.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)

    with pytest.raises(UnsupportedImage) as info:
        prepare(data)

    assert type(info.value) is UnsupportedImage


def test_truncated_jpeg_is_unsupported_inside_a_thumbor_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = _truncated("JPEG")

    with pytest.raises(UnsupportedImage):
        prepare(data)


# Fingerprints (PDQ hashes with their variants): one per judged frame of PDQ quality 50 or
# more, from the first view, before padding.


def test_still_picture_has_the_fingerprint_of_what_it_shows() -> None:
    image = pictures.busy(21)

    prepared = prepare(encode(image, "PNG"))

    assert prepared.fingerprints == {0: fingerprint.of(pdq.of(image))}


def test_transparent_picture_is_fingerprinted_as_shown_on_white() -> None:
    image = pictures.busy(22).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    on_white = Image.new("RGB", image.size, "white")
    on_white.paste(image, mask=image.getchannel("A"))

    prepared = prepare(encode(image, "PNG"))

    assert prepared.frames[0].grid == (1, 2)
    assert prepared.fingerprints == {0: fingerprint.of(pdq.of(on_white))}


def test_small_picture_padded_for_the_backend_is_fingerprinted_unpadded() -> None:
    image = pictures.busy(23, size=(300, 30))

    prepared = prepare(encode(image, "PNG"))

    assert prepared.frames[0].height == preparation.MIN_SIDE
    assert prepared.fingerprints[0] == fingerprint.of(pdq.of(image))


def test_each_judged_frame_of_an_animation_has_its_own_fingerprint() -> None:
    frames = [pictures.busy(30), pictures.busy(31), Image.new("RGB", pictures.SIZE, "white")]
    data = io.BytesIO()
    frames[0].save(
        data, "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True
    )

    prepared = prepare(data.getvalue(), max_frames=5)

    assert len(prepared.frames) == 3
    assert prepared.fingerprints == {
        0: fingerprint.of(pdq.of(frames[0])),
        1: fingerprint.of(pdq.of(frames[1])),
    }
