"""A first view: Thumbor renders the picture while the backend judges it, and nothing of it
leaves before the approval.

The fake Rekognition holds its answer until the test releases it, and the test releases it
only once Thumbor's log says the rendering is done and waiting for the decision (metric
``moderation.first_view.waiting``): the rendering has finished first, however slow the
machine. Every response is decoded and its pixels of the picture's colour counted, and
STORAGE and RESULT_STORAGE are searched for what the picture left there.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageSequence

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.servers import MAX_AGE, Response, ThumborServer, base_config, result_file, storage_file
from thumbor_rekognition.result_storage import unpack

pytestmark = pytest.mark.e2e

RED = (255, 0, 0)
BLUE = (0, 0, 255)
GREEN = (0, 160, 0)
# Colours of one test each: what a test finds of them in the caches is its own.
CYAN = (0, 200, 200)
MAGENTA = (200, 0, 200)
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]
WAITING = "METRICS: inc: moderation.first_view.waiting:1"
# Long enough for any hold here: only the budget test lets the budget run out.
PATIENT = {"REKOGNITION_TIMEOUT_SECONDS": 60.0, "MODERATION_TIMEOUT_SECONDS": 60.0}
BUDGET_SECONDS = 4.0

_names = itertools.count()
_sizes = itertools.count()


def add_picture(images: Path, color: tuple[int, int, int], stem: str) -> tuple[str, bytes]:
    """A new picture whose size makes its bytes differ from every other picture's."""
    name = f"{stem}-{next(_names)}.png"
    data = picture(color, size=(160, 100 + next(_sizes)))
    (images / name).write_bytes(data)
    return name, data


def add_animation(images: Path, colors: list[tuple[int, int, int]]) -> tuple[str, bytes]:
    """A new GIF with one scene per colour (a white disc moving across them)."""
    frames = []
    for index, color in enumerate(colors):
        frame = Image.new("RGB", (160, 100 + next(_sizes) % 3), color)
        ImageDraw.Draw(frame).ellipse((10 + 25 * index, 30, 40 + 25 * index, 60), fill="white")
        frames.append(frame)
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    name = f"scenes-{next(_names)}.gif"
    (images / name).write_bytes(buffer.getvalue())
    return name, buffer.getvalue()


def pixels_of(data: bytes, color: tuple[int, int, int]) -> int:
    """How many pixels near this colour any frame of an image shows."""
    count = 0
    with Image.open(io.BytesIO(data)) as image:
        for frame in ImageSequence.Iterator(image):
            rgb = frame.convert("RGB")
            count += sum(
                number
                for number, pixel in rgb.getcolors(rgb.width * rgb.height) or []
                if all(abs(channel - want) < 60 for channel, want in zip(pixel, color, strict=True))
            )
    return count


def results_showing(root: Path, color: tuple[int, int, int]) -> list[Path]:
    """Every result kept in RESULT_STORAGE that shows this colour."""
    folder = root / "result"
    if not folder.exists():
        return []
    return [
        path for path in folder.rglob("*") if path.is_file() and pixels_of(path.read_bytes(), color)
    ]


def files_holding(root: Path, data: bytes) -> list[Path]:
    """Every file under a folder whose bytes contain these bytes."""
    if not root.exists():
        return []
    return [path for path in root.rglob("*") if path.is_file() and data in path.read_bytes()]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def decided_after_rendering(
    server: ThumborServer,
    fake: FakeRekognition,
    path: str,
    answer: str | None = None,
    calls: int = 1,
) -> Response:
    """A first view whose decision comes only once Thumbor has rendered the picture."""
    waiting = server.log.count(WAITING)
    fake.fail("hold")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(server.get, path)
        try:
            wait_for(lambda: server.log.count(WAITING) > waiting)
            # Every call the picture needs is made before any is answered.
            wait_for(lambda: fake.call_count == calls)
        finally:
            fake.release(answer)
        return pending.result()


def calls_for(fake: FakeRekognition, color: tuple[int, int, int]) -> list[Any]:
    """The backend calls made for pictures of this colour."""
    return [call for call in fake.calls if math.dist(call.mean_color, color) < 30]


def settle(server: ThumborServer, images: Path) -> None:
    """Wait until the server has finished everything it does after a response."""
    name, _ = add_picture(images, GREEN, "settle")
    path = f"/unsafe/10x10/{name}"
    assert server.get(path).status == 200
    # One process: by the time a later request's result is written, every earlier one is.
    wait_for(lambda: result_file(server.root, path).is_file())


def serve(root: Path, images: Path, fake: FakeRekognition, **overrides: Any) -> ThumborServer:
    config = base_config(root, images, fake.url)
    config.update(PATIENT)
    config.update(overrides)
    return ThumborServer(root, config, log_level="debug").start()


@pytest.fixture(scope="module")
def server(
    module_root: Path, images: Path, module_fake: FakeRekognition
) -> Iterator[ThumborServer]:
    thumbor = serve(module_root / "placeholder", images, module_fake)
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


@pytest.fixture(scope="module")
def lenient(
    module_root: Path, images: Path, module_fake: FakeRekognition
) -> Iterator[ThumborServer]:
    """403 for rejected pictures, the picture itself (uncached) when no decision is made."""
    thumbor = serve(
        module_root / "lenient",
        images,
        module_fake,
        MODERATION_REJECTED_RESPONSE="forbidden",
        MODERATION_ON_ERROR="allow",
        MODERATION_TIMEOUT_SECONDS=BUDGET_SECONDS,
    )
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def assert_left_nothing(server: ThumborServer, images: Path, data: bytes, color: Any) -> None:
    settle(server, images)
    assert results_showing(server.root, color) == []
    assert files_holding(server.root / "storage", data) == []


def test_a_rejected_picture_rendered_before_its_decision_leaves_nothing_behind(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    name, data = add_picture(images, RED, "rejected")
    path = f"/unsafe/120x80/{name}"

    response = decided_after_rendering(server, fake, path)

    assert response.status == 200
    assert response.header("X-Moderation-Status") == "rejected"
    assert response.header("Cache-Control") == "max-age=60,public"
    assert pixels_of(response.body, RED) == 0
    with Image.open(io.BytesIO(response.body)) as image:
        assert image.size == (120, 80)
    assert_left_nothing(server, images, data, RED)
    assert not result_file(server.root, path).exists()
    assert not storage_file(server.root, name).exists()
    assert len(files_holding(server.root / "quarantine", data)) == 1


def test_an_approved_picture_rendered_before_its_decision_is_served_and_cached_as_before(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    name, data = add_picture(images, BLUE, "approved")
    path = f"/unsafe/120x80/{name}"

    response = decided_after_rendering(server, fake, path)
    # Kept before the response was written, as stock Thumbor does.
    stored = storage_file(server.root, name).read_bytes()
    wait_for(lambda: result_file(server.root, path).is_file())
    again = server.get(path)

    assert response.status == 200
    assert response.header("X-Moderation-Status") == "approved"
    assert response.header("Cache-Control") == f"max-age={MAX_AGE},public"
    assert pixels_of(response.body, BLUE) == 120 * 80
    assert stored == data
    kept = unpack(result_file(server.root, path).read_bytes())
    assert kept is not None
    assert kept == ([hashlib.sha256(data).digest()], response.body)
    assert again.body == response.body
    assert again.header("X-Moderation-Status") == "approved"
    assert fake.call_count == 1


def test_a_slow_backend_changes_nothing_viewers_or_caches_get(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    fake.fail("slow", delay=1.0)
    rejected, rejected_data = add_picture(images, RED, "slow-rejected")
    approved, approved_data = add_picture(images, BLUE, "slow-approved")
    paths = [f"/unsafe/100x60/{rejected}", f"/unsafe/100x60/{approved}"]

    with ThreadPoolExecutor(max_workers=2) as pool:
        refused, shown = pool.map(server.get, paths)
    fake.clear_faults()

    assert refused.header("X-Moderation-Status") == "rejected"
    assert pixels_of(refused.body, RED) == 0
    assert shown.header("X-Moderation-Status") == "approved"
    assert pixels_of(shown.body, BLUE) == 100 * 60
    assert_left_nothing(server, images, rejected_data, RED)
    assert storage_file(server.root, approved).read_bytes() == approved_data
    wait_for(lambda: result_file(server.root, paths[1]).is_file())


def test_a_backend_failure_while_rendering_is_pending_and_fails_closed(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    name, data = add_picture(images, CYAN, "failed")
    path = f"/unsafe/120x80/{name}"

    response = decided_after_rendering(server, fake, path, answer="internal")
    assert_left_nothing(server, images, data, CYAN)
    assert not result_file(server.root, path).exists()
    retried = server.get(path)

    assert response.status == 200
    assert response.header("X-Moderation-Status") == "pending"
    assert response.header("Cache-Control") == "max-age=60,public"
    assert pixels_of(response.body, CYAN) == 0
    assert retried.header("X-Moderation-Status") == "approved"
    assert pixels_of(retried.body, CYAN) == 120 * 80
    assert len(calls_for(fake, CYAN)) == 2


def test_an_animation_is_asked_about_in_one_round_trip_and_refused_whole(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    scenes = [BLUE, GREEN, (240, 200, 40), RED, (140, 40, 170)]
    name, data = add_animation(images, scenes)
    path = f"/unsafe/120x80/{name}"

    # All five scenes reach the backend before it answers any of them.
    response = decided_after_rendering(server, fake, path, calls=len(scenes))

    assert response.header("X-Moderation-Status") == "rejected"
    assert all(pixels_of(response.body, scene) == 0 for scene in scenes)
    assert_left_nothing(server, images, data, RED)
    assert not result_file(server.root, path).exists()


def test_a_watermark_is_judged_before_it_is_pasted(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    main, _ = add_picture(images, BLUE, "main")
    mark, mark_data = add_picture(images, RED, "mark")
    path = f"/unsafe/300x300/filters:watermark({mark},0,0,0,40,40)/{main}"
    waiting = server.log.count(WAITING)
    fake.fail("hold")

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(server.get, path)
        try:
            wait_for(lambda: fake.call_count == 2)
            # The watermark's call is out and unanswered: the rendering cannot be done.
            time.sleep(0.2)
            rendered_meanwhile = server.log.count(WAITING) > waiting
        finally:
            fake.release()
        response = pending.result()

    assert not rendered_meanwhile
    assert response.header("X-Moderation-Status") == "approved"
    assert pixels_of(response.body, RED) == 0
    assert pixels_of(response.body, BLUE) > 0
    assert_left_nothing(server, images, mark_data, RED)
    assert not result_file(server.root, path).exists()


def test_forbidden_mode_answers_403_for_a_picture_rejected_after_rendering(
    lenient: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    name, data = add_picture(images, RED, "forbidden")
    path = f"/unsafe/120x80/{name}"

    response = decided_after_rendering(lenient, fake, path)

    assert response.status == 403
    assert response.body == b""
    assert response.header("X-Moderation-Status") == "rejected"
    assert response.header("Cache-Control") == "max-age=60,public"
    assert_left_nothing(lenient, images, data, RED)


def test_fail_open_serves_a_picture_whose_judgement_failed_while_rendering_uncached(
    lenient: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    name, data = add_picture(images, MAGENTA, "open")
    path = f"/unsafe/120x80/{name}"

    response = decided_after_rendering(lenient, fake, path, answer="internal")

    assert response.status == 200
    assert response.header("X-Moderation-Status") == "pending"
    assert response.header("Cache-Control") == "max-age=60,public"
    assert pixels_of(response.body, MAGENTA) == 120 * 80
    assert_left_nothing(lenient, images, data, MAGENTA)


def test_the_request_budget_bounds_the_wait_after_rendering(
    lenient: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    name, _ = add_picture(images, BLUE, "budget")
    path = f"/unsafe/120x80/{name}"
    exceeded = lenient.log.count("METRICS: inc: moderation.budget.exceeded:1")
    fake.fail("hold")

    try:
        # Answered while the backend still holds the call: the budget ended the wait.
        response = lenient.get(path)
        assert fake.call_count == 1
    finally:
        fake.release()
    # The judgement went on, and later requests get its decision without a new call.
    wait_for(lambda: lenient.get(path).header("X-Moderation-Status") == "approved")

    assert response.header("X-Moderation-Status") == "pending"
    assert pixels_of(response.body, BLUE) == 120 * 80
    assert response.header("Cache-Control") == "max-age=60,public"
    assert lenient.log.count("METRICS: inc: moderation.budget.exceeded:1") == exceeded + 1
    assert fake.call_count == 1
