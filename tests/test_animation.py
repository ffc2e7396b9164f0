"""Animated images: every distinct frame that matters is judged, near-duplicates are not paid for.

Animations are made here with Pillow (`save_all=True`) as GIF, animated WebP and APNG.
Pillow's encoders merge consecutive identical frames, so frames meant as copies of one
scene carry a one-pixel counter in the corner, as a screen recording would.
"""

from __future__ import annotations

import io
import itertools
import math
import random
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from tests.fakes.rekognition import FakeRekognition
from tests.servers import ThumborServer, base_config
from tests.test_hostile import frame_bomb_gif
from tests.test_preparation import SWAPPED_PRIMARIES, opened, share_near, view
from thumbor_rekognition.preparation import (
    ALPHA_IGNORED,
    MAX_SCANNED_FRAMES,
    SHOWN,
    ImageTooLarge,
    PreparedImage,
    prepare,
)

SIZE = (160, 120)
RED = (255, 0, 0)
BLUE = (20, 40, 200)
GREEN = (20, 160, 60)
YELLOW = (230, 210, 30)
FORMATS = ["GIF", "WEBP", "PNG"]
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]

KNOWN_DEFECTS: list[str] = []

_names = itertools.count()


def animation(frames: Sequence[Image.Image], image_format: str) -> bytes:
    """The frames as one animated file (APNG for PNG)."""
    buffer = io.BytesIO()
    frames[0].save(
        buffer, image_format, save_all=True, append_images=list(frames[1:]), duration=40, loop=0
    )
    return buffer.getvalue()


def flat(color: tuple[int, int, int], counter: int = 0) -> Image.Image:
    """A solid frame; the counter pixel keeps encoders from merging it with its twins."""
    frame = Image.new("RGB", SIZE, color)
    frame.putpixel((counter % SIZE[0], 0), (counter * 7 % 256, 0, 0))
    return frame


def cartoon() -> Image.Image:
    """Flat colours and hard edges, as most animated GIFs are drawn."""
    frame = Image.new("RGB", SIZE, (30, 120, 200))
    draw = ImageDraw.Draw(frame)
    draw.rectangle((30, 20, 90, 80), fill=(200, 40, 40))
    draw.ellipse((100, 40, 150, 100), fill=(250, 250, 40))
    return frame


def photo(seed: int = 1, size: tuple[int, int] = SIZE) -> Image.Image:
    """Smooth texture everywhere, as a video still has."""
    rng = random.Random(seed)
    coarse = Image.frombytes("RGB", (20, 15), rng.randbytes(20 * 15 * 3))
    return coarse.resize(size, Image.Resampling.BICUBIC)


def grain(sigma: float, seed: int) -> Image.Image:
    """Faint sensor-like noise around 128, the same for a given seed."""
    normal = statistics.NormalDist(128, sigma)
    quantiles = [min(255, max(0, math.floor(normal.inv_cdf((u + 0.5) / 256)))) for u in range(256)]
    uniform = Image.frombytes("L", SIZE, random.Random(seed).randbytes(SIZE[0] * SIZE[1]))
    return uniform.point(quantiles)


def grainy(frame: Image.Image, sigma: float, seed: int) -> Image.Image:
    noise = grain(sigma, seed)
    return ImageChops.add(frame, Image.merge("RGB", [noise] * 3), offset=-128)


def recompressed(frame: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    frame.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def mean_colours(data: bytes, max_frames: int = 5) -> list[tuple[int, ...]]:
    """The mean colour of every frame prepare() would send to the backend, in order."""
    prepared = prepare(data, max_frames=max_frames)
    colours = []
    for frame in prepared.frames:
        with Image.open(io.BytesIO(frame.data)) as image:
            mean = ImageStat.Stat(image.convert("RGB")).mean
        colours.append(tuple(round(channel) for channel in mean))
    return colours


def close(colour: Sequence[int], expected: Sequence[int], tolerance: int = 20) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


@pytest.mark.parametrize("image_format", FORMATS)
def test_only_red_frame_in_the_middle_is_among_the_prepared_frames(image_format: str) -> None:
    frames = [flat(BLUE, index) for index in range(21)]
    frames[10] = flat(RED)
    data = animation(frames, image_format)

    colours = mean_colours(data)

    assert [close(colour, RED) for colour in colours].count(True) == 1
    assert all(close(colour, BLUE) for colour in colours if not close(colour, RED))


@pytest.mark.parametrize("image_format", FORMATS)
def test_frames_that_differ_by_recompression_and_grain_are_dropped(image_format: str) -> None:
    frames = [grainy(recompressed(photo(), 40 + 5 * index), 3, index) for index in range(12)]
    data = animation(frames, image_format)

    prepared = prepare(data, max_frames=12)

    assert prepared.frame_count == 12
    assert len(prepared.frames) == 1


@pytest.mark.parametrize("image_format", FORMATS)
def test_frames_shifted_by_a_pixel_or_two_are_dropped(image_format: str) -> None:
    scene = photo(seed=2, size=(480, 360))
    frames = [ImageChops.offset(scene, index % 3, index // 3) for index in range(9)]
    data = animation(frames, image_format)

    prepared = prepare(data, max_frames=9)

    assert prepared.frame_count == 9
    assert len(prepared.frames) == 1


def test_small_animation_shifted_by_one_pixel_is_one_frame() -> None:
    scene = photo(seed=2)
    frames = [ImageChops.offset(scene, index % 2, index // 2) for index in range(4)]
    data = animation(frames, "PNG")

    prepared = prepare(data, max_frames=4)

    assert len(prepared.frames) == 1


@pytest.mark.parametrize("image_format", FORMATS)
def test_grainy_copies_of_a_flat_colour_scene_are_dropped(image_format: str) -> None:
    frames = [grainy(cartoon(), 2, index) for index in range(12)]
    data = animation(frames, image_format)

    prepared = prepare(data, max_frames=12)

    assert len(prepared.frames) == 1


def grainy_cartoon_hiding_red(image_format: str) -> bytes:
    """61 grainy copies of a cartoon with three red frames in the middle."""
    scene = cartoon()
    frames = [grainy(scene, 2, index) for index in range(61)]
    frames[29:32] = [flat(RED, index) for index in range(3)]
    return animation(frames, image_format)


@pytest.mark.parametrize("image_format", FORMATS)
def test_red_frames_among_grainy_copies_of_a_cartoon_are_judged(image_format: str) -> None:
    data = grainy_cartoon_hiding_red(image_format)

    colours = mean_colours(data)

    assert any(close(colour, RED, tolerance=40) for colour in colours)


def test_300_frame_gif_of_three_scenes_yields_one_frame_per_scene() -> None:
    scenes = [BLUE, GREEN, YELLOW]
    frames = [flat(scenes[index // 100], index) for index in range(300)]
    data = animation(frames, "GIF")

    prepared = prepare(data)
    colours = mean_colours(data)

    assert prepared.frame_count == 300
    assert len(prepared.frames) == 3
    assert [close(colour, scene) for colour, scene in zip(colours, scenes, strict=True)] == [
        True
    ] * 3


@pytest.mark.parametrize("max_frames", [2, 5, 7])
@pytest.mark.parametrize("image_format", FORMATS)
def test_many_distinct_frames_yield_the_max_frames_least_alike(
    image_format: str, max_frames: int
) -> None:
    greys = [index * 20 for index in range(12)]
    frames = [Image.new("RGB", SIZE, (grey, grey, grey)) for grey in greys]
    data = animation(frames, image_format)

    colours = mean_colours(data, max_frames=max_frames)
    chosen = sorted({round(colour[0] / 20) for colour in colours})

    assert len(chosen) == max_frames
    assert chosen[0] == 0
    assert chosen[-1] == 11
    # Every frame left out is no farther from a chosen one than the two closest chosen
    # frames are from each other: nothing unlike the sample was skipped.
    closest_chosen = min(b - a for a, b in itertools.pairwise(chosen))
    left_out = [index for index in range(12) if index not in chosen]
    assert all(min(abs(index - c) for c in chosen) <= closest_chosen for index in left_out)


@pytest.mark.parametrize("image_format", ["PNG", "GIF"])
def test_colour_hidden_under_transparency_in_an_animation_is_judged(image_format: str) -> None:
    # A fully transparent red frame: white on a page, red once converted to JPEG.
    frames = [flat(BLUE, 0).convert("RGBA"), Image.new("RGBA", SIZE, (*RED, 0))]
    frames += [flat(GREEN, 2).convert("RGBA")]
    if image_format == "GIF":
        # Pillow shows a GIF's later frames over the earlier ones: only the first frame
        # shows its transparent colour, as Thumbor's first-frame conversions do.
        frames.insert(0, frames.pop(1))
    data = animation(frames, image_format)

    prepared = prepare(data)

    hiding = [frame for frame in prepared.frames if ALPHA_IGNORED in frame.views]
    assert any(share_near(view(frame, ALPHA_IGNORED), RED) > 0.85 for frame in hiding)


@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_animation_is_judged_through_its_colour_profile(image_format: str) -> None:
    frames = [flat(BLUE, 0), Image.new("RGB", SIZE, (0, 255, 0)), flat(BLUE, 2)]
    buffer = io.BytesIO()
    frames[0].save(
        buffer,
        image_format,
        save_all=True,
        append_images=frames[1:],
        duration=40,
        icc_profile=SWAPPED_PRIMARIES,
    )

    prepared = prepare(buffer.getvalue())

    assert any(share_near(view(frame, SHOWN), RED) > 0.85 for frame in prepared.frames)


def with_red_square(scene: Image.Image, share: float, corner: tuple[int, int]) -> Image.Image:
    """The scene with a red square over this share of the frame."""
    frame = scene.copy()
    width, height = round(SIZE[0] * math.sqrt(share)), round(SIZE[1] * math.sqrt(share))
    ImageDraw.Draw(frame).rectangle(
        (corner[0], corner[1], corner[0] + width - 1, corner[1] + height - 1), fill=RED
    )
    return frame


def nine_scenes_ending_like_the_first() -> bytes:
    """Nine scenes; the last is the first with a red square over a quarter of the frame,
    and it is shown 5 s."""
    first = photo(seed=10)
    scenes = [first, *(photo(seed=11 + index) for index in range(7))]
    scenes.append(with_red_square(first, 0.25, (40, 30)))
    buffer = io.BytesIO()
    scenes[0].save(
        buffer,
        "GIF",
        save_all=True,
        append_images=scenes[1:],
        duration=[500] * 8 + [5000],
        loop=0,
    )
    return buffer.getvalue()


def red_is_judged(prepared: PreparedImage, share: float) -> bool:
    return any(share_near(opened(frame), RED) >= share for frame in prepared.frames)


def test_nine_scene_gif_whose_bad_last_scene_resembles_the_first_is_judged_or_said_unjudged() -> (
    None
):
    data = nine_scenes_ending_like_the_first()

    prepared = prepare(data, max_frames=5)

    assert prepared.frame_count == 9
    assert red_is_judged(prepared, 0.2) or prepared.unjudged_scenes > 0
    assert len(prepared.frames) + prepared.unjudged_scenes == 9


@pytest.mark.parametrize("corner", [(0, 0), (61, 47), (120, 90)], ids=["corner", "middle", "edge"])
@pytest.mark.parametrize("image_format", FORMATS)
def test_scene_that_differs_from_the_first_in_a_sixteenth_of_the_frame_is_judged(
    image_format: str, corner: tuple[int, int]
) -> None:
    scenes = [photo(seed=10), with_red_square(photo(seed=10), 1 / 16, corner)]
    frames = [grainy(scenes[index // 4], 2, index) for index in range(8)]
    data = animation(frames, image_format)

    prepared = prepare(data, max_frames=5)

    assert red_is_judged(prepared, 0.05)
    assert len(prepared.frames) == 2
    assert prepared.unjudged_scenes == 0


@pytest.mark.parametrize(("max_frames", "unjudged"), [(5, 7), (11, 1), (12, 0), (20, 0)])
def test_distinct_scenes_beyond_max_frames_are_counted_as_unjudged(
    max_frames: int, unjudged: int
) -> None:
    greys = [index * 20 for index in range(12)]
    data = animation([Image.new("RGB", SIZE, (grey, grey, grey)) for grey in greys], "GIF")

    prepared = prepare(data, max_frames=max_frames)

    assert len(prepared.frames) == min(12, max_frames)
    assert prepared.unjudged_scenes == unjudged


@pytest.mark.timing
@pytest.mark.parametrize("frame_count", [MAX_SCANNED_FRAMES + 1, 50_000])
def test_gif_of_more_than_1000_frames_is_refused_quickly(frame_count: int) -> None:
    data = frame_bomb_gif(frame_count)

    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="animation too long"):
        prepare(data)
    elapsed = time.perf_counter() - started

    assert elapsed < 2.0


def test_gif_of_exactly_1000_frames_is_judged() -> None:
    data = frame_bomb_gif(MAX_SCANNED_FRAMES)

    prepared = prepare(data)

    assert prepared.frame_count == MAX_SCANNED_FRAMES
    assert len(prepared.frames) == 1


# End to end: the real Thumbor, the real boto3 client, the fake Rekognition endpoint.


@pytest.fixture(scope="module")
def server(
    module_root: Path, images: Path, module_fake: FakeRekognition
) -> Iterator[ThumborServer]:
    config = base_config(module_root, images, module_fake.url)
    # Preparing hundreds of frames can take a loaded machine past the default 10 s, and
    # then a first request answers 'pending': not what these tests are about.
    config["MODERATION_TIMEOUT_SECONDS"] = 60.0
    thumbor = ThumborServer(module_root, config)
    thumbor.start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def publish(images: Path, data: bytes, suffix: str) -> str:
    name = f"animation-{next(_names)}.{suffix}"
    (images / name).write_bytes(data)
    return name


def looks_like(body: bytes, colour: tuple[int, int, int]) -> bool:
    with Image.open(io.BytesIO(body)) as image:
        mean = ImageStat.Stat(image.convert("RGB")).mean
    return close(mean, colour, tolerance=40)


@pytest.mark.e2e
@pytest.mark.parametrize("image_format", FORMATS)
def test_animation_whose_only_objectionable_frame_is_in_the_middle_is_rejected(
    server: ThumborServer, images: Path, fake: FakeRekognition, image_format: str
) -> None:
    fake.respond(RED, NUDITY)
    frames = [flat(BLUE, index) for index in range(21)]
    frames[10] = flat(RED)
    name = publish(images, animation(frames, image_format), image_format.lower())

    response = server.get(f"/unsafe/100x75/{name}")

    assert response.status == 200
    assert response.header("X-Moderation-Status") == "rejected"
    assert not looks_like(response.body, BLUE)
    assert not looks_like(response.body, RED)
    assert fake.call_count == 2


@pytest.mark.e2e
def test_long_gif_of_few_distinct_frames_costs_one_call_per_distinct_frame(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    scenes = [BLUE, GREEN, YELLOW]
    frames = [flat(scenes[index // 100], index) for index in range(300)]
    name = publish(images, animation(frames, "GIF"), "gif")

    first = server.get(f"/unsafe/100x75/{name}")
    again = server.get(f"/unsafe/100x75/{name}")

    assert [first.header("X-Moderation-Status"), again.header("X-Moderation-Status")] == [
        "approved",
        "approved",
    ]
    assert fake.call_count == 3
    # The scenes are asked about together, so they arrive in any order.
    sent = [call.mean_color for call in fake.calls]
    assert [any(close(colour, scene, tolerance=10) for colour in sent) for scene in scenes] == [
        True
    ] * 3


@pytest.mark.e2e
def test_animated_webp_with_an_objectionable_frame_is_rejected(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    scenes = [BLUE, GREEN, RED, YELLOW]
    frames = [flat(scenes[index // 10], index) for index in range(40)]
    name = publish(images, animation(frames, "WEBP"), "webp")

    response = server.get(f"/unsafe/fit-in/120x120/{name}")

    assert response.status == 200
    assert response.header("X-Moderation-Status") == "rejected"
    assert not looks_like(response.body, RED)
    assert fake.call_count == 4


@pytest.mark.e2e
def test_grainy_gif_hiding_an_objectionable_frame_is_rejected(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    name = publish(images, grainy_cartoon_hiding_red("GIF"), "gif")

    response = server.get(f"/unsafe/100x75/{name}")

    assert response.header("X-Moderation-Status") == "rejected"
