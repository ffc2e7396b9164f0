"""Every door out of Thumbor, tried by someone who wants a rejected picture delivered.

Real Thumbor servers (``--processes=2``, file STORAGE and RESULT_STORAGE behind the
plugin's own modules, uploads on) and the fake Rekognition, which rejects red. Each
test opens one door Thumbor 7.8 has besides the image route, or one way a stored copy
could outlive a rejection, and measures what comes out: every response is decoded and
its red pixels counted, and STORAGE and RESULT_STORAGE are searched byte for byte for
what the rejected picture left there.
"""

from __future__ import annotations

import io
import itertools
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.servers import Response, ThumborServer, base_config, result_file, storage_file

pytestmark = pytest.mark.e2e

TOKEN = "doors-admin-token-3f0c2a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RED = (255, 0, 0)
BLUE = (0, 0, 255)
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]
SUGGESTIVE_60 = [
    {"Name": "Suggestive", "ParentName": "", "Confidence": 60.0},
    {"Name": "Revealing Clothes", "ParentName": "Suggestive", "Confidence": 60.0},
]
# Repeats of the reject-under-traffic race: it was lost in 2 of 7 runs before.
RACE_ROUNDS = 12

_names = itertools.count()
_sizes = itertools.count()


def add_picture(images: Path, color: tuple[int, int, int], stem: str) -> tuple[str, bytes]:
    """A new picture whose size makes its bytes differ from every other picture's."""
    name = f"{stem}-{next(_names)}.png"
    data = picture(color, size=(160, 100 + next(_sizes)))
    (images / name).write_bytes(data)
    return name, data


def red_pixels(response: Response) -> int:
    """How many pixels of a response are the rejected picture's red."""
    with Image.open(io.BytesIO(response.body)) as image:
        rgb = image.convert("RGB")
        return sum(
            count
            for count, (red, green, blue) in rgb.getcolors(rgb.width * rgb.height) or []
            if red > 200 and green < 60 and blue < 60
        )


def status_of(response: Response) -> str | None:
    return response.header("X-Moderation-Status")


def files_holding(root: Path, data: bytes) -> list[Path]:
    """Every file under a folder whose bytes contain these bytes."""
    if not root.exists():
        return []
    return [path for path in root.rglob("*") if path.is_file() and data in path.read_bytes()]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def decide(server: ThumborServer, name: str, status: str) -> Response:
    body = json.dumps({"status": status, "note": "doors", "actor": "tests"}).encode()
    return server.request(
        "PUT", f"/moderation/image?url={quote(name, safe='')}", body=body, headers=AUTH
    )


def doors_config(root: Path, images: Path, endpoint: str) -> dict[str, Any]:
    config = base_config(root, images, endpoint)
    config.update(
        {
            "UPLOAD_ENABLED": True,
            "UPLOAD_PUT_ALLOWED": True,
            "UPLOAD_DELETE_ALLOWED": True,
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_QUARANTINE_PATH": str(root / "quarantine"),
        }
    )
    return config


@pytest.fixture(scope="module")
def server(
    module_root: Path, images: Path, module_fake: FakeRekognition
) -> Iterator[ThumborServer]:
    root = module_root / "doors"
    thumbor = ThumborServer(root, doors_config(root, images, module_fake.url), processes=2)
    thumbor.start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


@pytest.fixture
def root(server: ThumborServer) -> Path:
    return server.root


# The upload route: POST /image writes through UPLOAD_PHOTO_STORAGE, GET /image/<id>
# reads STORAGE, neither passes the image route.


def test_upload_of_a_rejected_picture_is_answered_201_and_never_served(
    server: ThumborServer, root: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    data = picture(RED, size=(150, 110))

    posted = server.request("POST", "/image", body=data, headers={"Content-Type": "image/png"})
    location = posted.header("Location") or ""
    image_id = location.split("/")[2]
    raw = server.get(location)
    by_id = server.get(f"/image/{image_id}")
    rendered = server.get(f"/unsafe/60x40/{image_id}")

    assert posted.status == 201
    assert (raw.status, by_id.status) == (404, 404)
    assert red_pixels(rendered) == 0
    assert status_of(rendered) == "rejected"
    assert files_holding(root / "storage", data) == []
    assert len(files_holding(root / "quarantine", data)) == 1


def test_approved_upload_is_served_raw_and_at_every_size(
    server: ThumborServer, fake: FakeRekognition
) -> None:
    data = picture(BLUE, size=(150, 112))

    posted = server.request("POST", "/image", body=data, headers={"Content-Type": "image/png"})
    image_id = (posted.header("Location") or "").split("/")[2]
    raw = server.get(f"/image/{image_id}")
    sizes = [server.get(f"/unsafe/{size}/{image_id}") for size in ("40x30", "75x0", "0x56")]

    assert posted.status == 201
    assert (raw.status, raw.body) == (200, data)
    assert [status_of(response) for response in sizes] == ["approved"] * 3
    assert [Image.open(io.BytesIO(r.body)).size for r in sizes] == [(40, 30), (75, 56), (75, 56)]
    assert fake.call_count == 1


def test_upload_replacing_an_approved_picture_with_a_rejected_one_is_not_kept(
    server: ThumborServer, root: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    clean = picture(BLUE, size=(151, 112))
    bad = picture(RED, size=(151, 113))
    posted = server.request("POST", "/image", body=clean, headers={"Content-Type": "image/png"})
    image_id = (posted.header("Location") or "").split("/")[2]

    replaced = server.request(
        "PUT", f"/image/{image_id}", body=bad, headers={"Content-Type": "image/png"}
    )
    raw = server.get(f"/image/{image_id}")
    rendered = server.get(f"/unsafe/50x50/{image_id}")

    assert replaced.status == 204
    assert red_pixels(raw) == 0 if raw.status == 200 else raw.status == 404
    assert red_pixels(rendered) == 0
    assert files_holding(root / "storage", bad) == []


@pytest.mark.parametrize("first", ["HEAD", "GET"])
@pytest.mark.parametrize("judged", [False, True], ids=["never-judged", "rejected-before"])
def test_a_rejected_original_planted_in_storage_is_a_404_by_id_for_head_and_get(
    server: ThumborServer,
    root: Path,
    images: Path,
    fake: FakeRekognition,
    first: str,
    judged: bool,
) -> None:
    fake.respond(RED, NUDITY)
    name, data = add_picture(images, RED, "planted")
    if judged:
        assert status_of(server.get(f"/unsafe/50x50/{name}")) == "rejected"
    # Put there behind the plugin's back, as a stock Thumbor sharing the folder would.
    planted = storage_file(root, name)
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(data)

    answers = [
        server.request(method, f"/image/{name}")
        for method in (first, "GET" if first == "HEAD" else "HEAD")
    ]

    # README: the upload API answers 404 for anything not approved.
    assert [answer.status for answer in answers] == [404, 404]
    assert [data in answer.body for answer in answers] == [False, False]
    assert [answer.header("Content-Length") != str(len(data)) for answer in answers] == [
        True,
        True,
    ]
    # Judged once, by the image route or from what the upload API found in STORAGE.
    assert fake.call_count == 1


# Filters that load another picture: STORAGE first, then the loader.


@pytest.mark.parametrize("door", ["watermark({},0,0,0)", "frame({})"])
def test_a_rejected_picture_sitting_in_storage_is_never_pasted_into_another(
    server: ThumborServer, root: Path, images: Path, fake: FakeRekognition, door: str
) -> None:
    fake.respond(RED, NUDITY)
    main, _ = add_picture(images, BLUE, "main")
    bad, data = add_picture(images, RED, "pasted")
    # Put there behind the plugin's back, as a stock Thumbor sharing the folder would.
    planted = storage_file(root, bad)
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(data)

    response = server.get(f"/unsafe/120x120/filters:{door.format(bad)}/{main}")

    assert response.status == 200
    assert status_of(response) == "approved"
    assert red_pixels(response) == 0
    assert files_holding(root / "storage", data) == []
    assert len(files_holding(root / "quarantine", data)) == 1


def test_a_composite_cached_before_its_watermark_was_rejected_is_refused_and_purged(
    server: ThumborServer, root: Path, images: Path, fake: FakeRekognition
) -> None:
    main, _ = add_picture(images, BLUE, "main")
    mark, data = add_picture(images, RED, "mark")  # approved for now: the fake knows no red
    path = f"/unsafe/120x120/filters:watermark({mark},0,0,0)/{main}"
    before = server.get(path)
    wait_for(lambda: result_file(root, path).is_file())

    assert decide(server, mark, "rejected").status == 200
    # The other process hears of the rejection within a tenth of a second (README).
    wait_for(lambda: red_pixels(server.get(path)) == 0, timeout=1.0)
    after = [server.get(path) for _ in range(6)]

    assert red_pixels(before) > 1000
    assert [red_pixels(response) for response in after] == [0] * 6
    wait_for(lambda: not result_file(root, path).exists(), timeout=2.0)
    assert files_holding(root / "storage", data) == []


# Stored originals under other spellings of their URL.


def test_rejecting_a_picture_removes_it_under_every_spelling_thumbor_stored(
    server: ThumborServer, root: Path, images: Path, fake: FakeRekognition
) -> None:
    name, data = add_picture(images, BLUE, "spelt")
    spellings = [name, f"/{name}", f"%2F{name}"]
    for spelling in spellings:
        assert status_of(server.get(f"/unsafe/50x50/{spelling}")) == "approved"
    wait_for(lambda: len(files_holding(root / "storage", data)) >= 2)

    assert decide(server, name, "rejected").status == 200
    served = [server.get(f"/unsafe/51x51/{spelling}") for spelling in spellings]
    raw = [server.get(f"/image/{quote(spelling, safe='')}") for spelling in spellings]

    assert files_holding(root / "storage", data) == []
    assert [red_pixels(response) for response in served] == [0, 0, 0]
    assert all(response.status == 404 for response in raw)


def test_names_differing_by_a_trailing_space_keep_their_own_decisions(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    (images / "mint.png").write_bytes(picture(BLUE, size=(150, 99)))
    (images / "mint.png ").write_bytes(picture(RED, size=(150, 98)))

    clean = server.get("/unsafe/50x50/mint.png")
    spaced = server.get("/unsafe/50x50/mint.png%20")
    clean_again = server.get("/unsafe/52x52/mint.png")

    assert [status_of(clean), status_of(spaced), status_of(clean_again)] == [
        "approved",
        "rejected",
        "approved",
    ]
    assert red_pixels(spaced) == 0


# A reject racing traffic.


def test_a_reject_racing_traffic_leaves_nothing_in_storage_or_result_storage(
    server: ThumborServer, root: Path, images: Path, fake: FakeRekognition
) -> None:
    lost = []
    for round_ in range(RACE_ROUNDS):
        name, data = add_picture(images, RED, "raced")
        assert status_of(server.get(f"/unsafe/30x30/{name}")) == "approved"
        paths = [f"/unsafe/{40 + index}x{30 + index}/{name}" for index in range(48)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            futures = [pool.submit(server.get, path) for path in paths]
            time.sleep(0.01 * (round_ % 4))
            assert decide(server, name, "rejected").status == 200
            started_after = time.monotonic()
            for future in futures:
                future.result()
        # Thumbor stores a result after answering: give the last writes time to land.
        deadline = started_after + 3.0
        while time.monotonic() < deadline and (
            files_holding(root / "storage", data)
            or any(result_file(root, path).exists() for path in paths)
        ):
            time.sleep(0.05)
        left = files_holding(root / "storage", data) + [
            result_file(root, path) for path in paths if result_file(root, path).exists()
        ]
        if left:
            lost.append((round_, left))

    assert lost == []


# Animations whose bad scene the frame picker would leave out.


def scenes_gif(colours: list[tuple[int, int, int]]) -> bytes:
    """An animation of solid scenes, the last one shown for five seconds."""
    frames = [Image.new("RGB", (160, 120), colour) for colour in colours]
    buffer = io.BytesIO()
    durations = [200] * (len(frames) - 1) + [5000]
    frames[0].save(
        buffer, "GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0
    )
    return buffer.getvalue()


# Distinct scenes, none of them red; the first looks much like the last, the bad one.
SCENES = [(200, 40, 40)] + [
    (red, green, blue) for red in (0, 100) for green in (0, 80, 160, 240) for blue in (0, 120, 240)
]


@pytest.mark.parametrize(
    ("scenes", "expected"),
    [
        # Nine scenes, within MODERATION_MAX_FRAMES (20): all judged, the bad one rejects.
        ([*SCENES[:8], RED], ("rejected",)),
        # Twenty-six: some are left unjudged, so the animation is never approved.
        ([*SCENES, RED], ("rejected", "pending")),
    ],
)
def test_an_animation_is_never_approved_unless_every_distinct_scene_was_judged(
    server: ThumborServer,
    images: Path,
    fake: FakeRekognition,
    scenes: list[tuple[int, int, int]],
    expected: tuple[str, ...],
) -> None:
    fake.respond(RED, NUDITY)
    name = f"scenes-{next(_names)}.gif"
    (images / name).write_bytes(scenes_gif(scenes))

    response = server.get(f"/unsafe/80x60/{name}")

    assert status_of(response) in expected
    assert red_pixels(response) == 0


# Pictures re-judged under new thresholds.


@pytest.fixture
def own_fake() -> Iterator[FakeRekognition]:
    """An endpoint of the test's own: judgements other servers finish late never count."""
    with FakeRekognition() as fake:
        yield fake


def test_a_picture_rejudged_into_a_rejection_moves_from_storage_to_the_quarantine(
    tmp_path: Path, own_fake: FakeRekognition
) -> None:
    fake = own_fake
    fake.respond(BLUE, SUGGESTIVE_60)
    images = tmp_path / "images"
    images.mkdir()
    name, data = add_picture(images, BLUE, "rejudged")
    config = doors_config(tmp_path, images, fake.url)
    config["MODERATION_CATEGORY_THRESHOLDS"] = {"Suggestive": 0.8}
    thumbor = ThumborServer(tmp_path, config, processes=2).start()
    try:
        first = thumbor.get(f"/unsafe/70x50/{name}")
        wait_for(lambda: len(files_holding(tmp_path / "storage", data)) == 1)
        thumbor.stop()
        # Back to the default 0.5: Suggestive 60 is now above its threshold.
        del thumbor.config["MODERATION_CATEGORY_THRESHOLDS"]
        thumbor.start()
        again = [thumbor.get(f"/unsafe/{size}/{name}") for size in ("70x50", "71x50")]
        raw = thumbor.get(f"/image/{name}")
    finally:
        thumbor.stop()

    assert status_of(first) == "approved"
    assert [status_of(response) for response in again] == ["rejected", "rejected"]
    assert raw.status == 404
    assert files_holding(tmp_path / "storage", data) == []
    assert len(files_holding(tmp_path / "quarantine", data)) == 1
    assert fake.call_count == 1


# Result paths recorded again after a picture was approved anew.


def test_a_second_rejection_purges_results_written_since_the_approval(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    name, _ = add_picture(images, BLUE, "twice")
    path = f"/unsafe/60x60/{name}"
    # One process: the one that recorded the result path the first time writes it again.
    thumbor = ThumborServer(tmp_path, doors_config(tmp_path, images, fake.url)).start()
    try:
        thumbor.get(path)
        wait_for(lambda: result_file(tmp_path, path).is_file())
        decide(thumbor, name, "rejected")
        assert not result_file(tmp_path, path).exists()
        decide(thumbor, name, "approved")
        assert status_of(thumbor.get(path)) == "approved"
        wait_for(lambda: result_file(tmp_path, path).is_file())

        purged = decide(thumbor, name, "rejected")
    finally:
        thumbor.stop()

    assert purged.status == 200
    assert not result_file(tmp_path, path).exists()


def test_results_are_trusted_by_content_not_by_url(tmp_path: Path, fake: FakeRekognition) -> None:
    images = tmp_path / "images"
    images.mkdir()
    data = picture(RED, size=(160, 101))
    (images / "cv.png").write_bytes(data)
    (images / "cv_copy.png").write_bytes(data)
    config = doors_config(tmp_path, images, fake.url)
    config["STORAGE_EXPIRATION_SECONDS"] = 1
    thumbor = ThumborServer(tmp_path, config).start()
    try:
        for name in ("cv.png", "cv_copy.png"):
            assert status_of(thumbor.get(f"/unsafe/100x100/{name}")) == "approved"
        wait_for(lambda: result_file(tmp_path, "/unsafe/100x100/cv.png").is_file())
        # The origin replaces cv.png with a clean picture; once its stored copy expires,
        # a new size makes Thumbor fetch and judge it again.
        (images / "cv.png").write_bytes(picture(BLUE, size=(160, 101)))
        time.sleep(1.2)
        assert status_of(thumbor.get("/unsafe/90x90/cv.png")) == "approved"
        assert decide(thumbor, "cv_copy.png", "rejected").status == 200
        cached = thumbor.get("/unsafe/100x100/cv.png")
        copy = thumbor.get("/unsafe/100x100/cv_copy.png")
    finally:
        thumbor.stop()

    assert status_of(cached) == "approved"
    assert red_pixels(cached) == 0
    assert red_pixels(copy) == 0


# A reject on a storage that cannot delete.


def test_a_reject_on_mixed_storage_is_saved_for_every_url_and_answers_200(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    data = picture(RED, size=(160, 102))
    for name in ("m1.png", "m2.png"):
        (images / name).write_bytes(data)
    config = doors_config(tmp_path, images, fake.url)
    config.update(
        {
            "MODERATION_SOURCE_STORAGE": "thumbor.storages.mixed_storage",
            "MIXED_STORAGE_FILE_STORAGE": "thumbor.storages.file_storage",
            "MIXED_STORAGE_CRYPTO_STORAGE": "thumbor.storages.no_storage",
            "MIXED_STORAGE_DETECTOR_STORAGE": "thumbor.storages.no_storage",
        }
    )
    thumbor = ThumborServer(tmp_path, config).start()
    try:
        for name in ("m1.png", "m2.png"):
            assert status_of(thumbor.get(f"/unsafe/80x80/{name}")) == "approved"
        answer = decide(thumbor, "m2.png", "rejected")
        served = [
            thumbor.get(f"/unsafe/{size}/{name}")
            for name in ("m1.png", "m2.png")
            for size in ("80x80", "81x81")
        ]
    finally:
        thumbor.stop()

    assert answer.status == 200
    updated = json.loads(answer.body)["updated"]
    assert sorted((view["key"], view["status"]) for view in updated) == [
        ("m1.png", "rejected"),
        ("m2.png", "rejected"),
    ]
    assert [status_of(response) for response in served] == ["rejected"] * 4
    assert [red_pixels(response) for response in served] == [0] * 4
    assert "Traceback" not in thumbor.log


# Thumbor fetching its own renderings.


def test_a_rendering_fetched_from_a_moderated_thumbor_is_refused(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "nest.png").write_bytes(picture(RED, size=(200, 200)))
    config = doors_config(tmp_path, images, fake.url)
    config.update(
        {
            "MODERATION_SOURCE_LOADER": "thumbor.loaders.file_loader_http_fallback",
            "HTTP_LOADER_VALIDATE_CERTS": False,
        }
    )
    thumbor = ThumborServer(tmp_path, config).start()
    try:
        inner = f"127.0.0.1:{thumbor.port}/unsafe/10x10:190x190/nest.png"
        nested = thumbor.get(f"/unsafe/50x50/{inner}")
        assert decide(thumbor, "nest.png", "rejected").status == 200
        again = thumbor.get(f"/unsafe/60x60/{inner}")
    finally:
        thumbor.stop()

    assert nested.status == 403
    assert again.status == 403
    assert nested.body == again.body == b""


# Placeholder renderings are shared by transformation, never by picture or callback.


def test_meta_of_a_rejected_picture_names_that_picture_and_its_own_callback(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    first, _ = add_picture(images, RED, "meta")
    second, _ = add_picture(images, RED, "meta")
    server.get(f"/unsafe/50x50/{first}")
    server.get(f"/unsafe/50x50/{second}")

    answers = [
        server.get(f"/unsafe/meta/50x50/{name}?callback={callback}")
        for name, callback in ((first, "one"), (second, "two"), (first, "three"))
    ]

    bodies = [answer.body.decode() for answer in answers]
    # Thumbor writes the callback as it reads it, bytes: "b'one'(...)".
    assert [body.split("(", 1)[0].strip("b'") for body in bodies] == ["one", "two", "three"]
    assert [first in body for body in bodies] == [True, False, True]
    assert second in bodies[1]


# Configurations that would leave a door open do not start.


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"STORAGE": "thumbor.storages.file_storage"}, "Config 'STORAGE'"),
        ({"UPLOAD_PHOTO_STORAGE": "thumbor.storages.file_storage"}, "'UPLOAD_PHOTO_STORAGE'"),
        ({"RESULT_STORAGE": "thumbor.result_storages.file_storage"}, "'RESULT_STORAGE'"),
        (
            {
                "HANDLER_LISTS": [
                    "thumbor_rekognition.handler_list",
                    "thumbor.handler_lists.healthcheck",
                ]
            },
            "'HANDLER_LISTS'",
        ),
    ],
)
def test_a_configuration_that_bypasses_the_plugin_stops_start_up(
    tmp_path: Path, overrides: dict[str, Any], named: str
) -> None:
    config = doors_config(tmp_path, tmp_path, None)
    config.update(overrides)
    thumbor = ThumborServer(tmp_path, config)

    thumbor.start(wait=False)
    code = thumbor.wait_exit()

    assert code != 0
    assert named in thumbor.log
    assert "Traceback" not in thumbor.log


def test_the_loader_without_its_gate_refuses_every_picture_and_says_why(
    tmp_path: Path, own_fake: FakeRekognition
) -> None:
    fake = own_fake
    images = tmp_path / "images"
    images.mkdir()
    (images / "plain.png").write_bytes(picture(BLUE))
    config = doors_config(tmp_path, images, fake.url)
    config["HANDLER_LISTS"] = ["thumbor.handler_lists.healthcheck"]
    config.update({"STORAGE": "thumbor.storages.file_storage", "RESULT_STORAGE": None})
    thumbor = ThumborServer(tmp_path, config).start()
    try:
        answers = [thumbor.get(f"/unsafe/{size}/plain.png") for size in ("40x40", "41x41")]
    finally:
        thumbor.stop()

    assert [answer.status for answer in answers] == [503, 503]
    assert "thumbor_rekognition.handler_list' is added to HANDLER_LISTS" in thumbor.log
    assert "Traceback" not in thumbor.log
    assert fake.call_count == 0


def test_no_storage_and_no_result_storage_still_serve_moderated_pictures(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    images = tmp_path / "images"
    images.mkdir()
    (images / "plain.png").write_bytes(picture(BLUE))
    (images / "bad.png").write_bytes(picture(RED))
    config = doors_config(tmp_path, images, fake.url)
    config.update({"STORAGE": "thumbor.storages.no_storage", "RESULT_STORAGE": None})
    config.update({"UPLOAD_PHOTO_STORAGE": "thumbor.storages.no_storage"})
    thumbor = ThumborServer(tmp_path, config).start()
    try:
        plain = thumbor.get("/unsafe/40x40/plain.png")
        bad = thumbor.get("/unsafe/40x40/bad.png")
    finally:
        thumbor.stop()

    assert (status_of(plain), status_of(bad)) == ("approved", "rejected")
    assert red_pixels(bad) == 0
