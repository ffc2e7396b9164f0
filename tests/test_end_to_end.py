"""The real Thumbor app over HTTP, the real boto3 client, a fake Rekognition on a socket."""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.servers import (
    MAX_AGE,
    Response,
    ThumborServer,
    base_config,
    result_file,
    stock_config,
    storage_file,
)
from thumbor_rekognition.decision import Event, Source, Status
from thumbor_rekognition.stores.sqlite import Store

pytestmark = pytest.mark.e2e

SEED_RULES = {
    "MODERATION_CATEGORY_THRESHOLDS": {
        "Female Swimwear Or Underwear": 0.75,
        "Explicit Nudity": 0.6,
    },
    "MODERATION_IGNORED_CATEGORIES": ["Revealing Clothes"],
}

_names = itertools.count()
_sizes = itertools.count()


def unique(stem: str, suffix: str = ".png") -> str:
    return f"{stem}-{next(_names)}{suffix}"


def size_of(response: Response) -> tuple[int, int]:
    with Image.open(io.BytesIO(response.body)) as image:
        return image.size


def size_of_file(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def label(name: str, parent: str, confidence: float, level: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"Name": name, "ParentName": parent, "Confidence": confidence}
    if level is not None:
        item["TaxonomyLevel"] = level
    return item


def v6(parent: str, child: str, confidence: float) -> list[dict[str, Any]]:
    """A model 6.x answer: the parent repeats its child's confidence, no levels."""
    return [label(parent, "", confidence), label(child, parent, confidence)]


def v7(path: tuple[str, ...], confidence: float) -> list[dict[str, Any]]:
    """A model 7.x answer: every level of the path, each with its level."""
    return [
        label(name, path[index - 1] if index else "", confidence, index + 1)
        for index, name in enumerate(path)
    ]


@pytest.fixture(scope="module")
def server(
    module_root: Path, images: Path, module_fake: FakeRekognition
) -> Iterator[ThumborServer]:
    config = base_config(module_root / "default", images, module_fake.url)
    config.update(SEED_RULES)
    thumbor = ThumborServer(module_root / "default", config).start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def add_picture(images: Path, color: tuple[int, int, int], stem: str = "picture") -> str:
    """A new picture: its size makes its bytes differ from every other picture's."""
    name = unique(stem)
    (images / name).write_bytes(picture(color, size=(160, 100 + next(_sizes))))
    return name


SEED_CASES = [
    # model 6.x
    ("6.x swimwear above 0.75", v6("Suggestive", "Female Swimwear Or Underwear", 75.5), "rejected"),
    ("6.x swimwear below 0.75", v6("Suggestive", "Female Swimwear Or Underwear", 74.5), "approved"),
    ("6.x nudity above 0.6", v6("Explicit Nudity", "Nudity", 60.5), "rejected"),
    ("6.x nudity below 0.6", v6("Explicit Nudity", "Nudity", 59.5), "approved"),
    ("6.x graphic nudity above 0.6", v6("Explicit Nudity", "Graphic Male Nudity", 61), "rejected"),
    ("6.x revealing clothes ignored", v6("Suggestive", "Revealing Clothes", 99), "approved"),
    ("6.x partial nudity above default", v6("Suggestive", "Partial Nudity", 50.5), "rejected"),
    ("6.x weapons below default", v6("Violence", "Weapons", 50.0), "approved"),
    # model 7.x
    (
        "7.x swimwear above 0.75",
        v7(("Swimwear or Underwear", "Female Swimwear or Underwear"), 75.5),
        "rejected",
    ),
    (
        "7.x swimwear below 0.75",
        v7(("Swimwear or Underwear", "Female Swimwear or Underwear"), 74.5),
        "approved",
    ),
    (
        "7.x nipple above 0.6 via explicit nudity",
        v7(("Explicit", "Explicit Nudity", "Exposed Female Nipple"), 60.5),
        "rejected",
    ),
    (
        "7.x nipple below 0.6 via explicit nudity",
        v7(("Explicit", "Explicit Nudity", "Exposed Female Nipple"), 59.5),
        "approved",
    ),
    # 6.x Sexual Activity sits under Explicit Nudity: the seed's 0.6 covers its 7.x
    # counterpart (it was judged at the 0.5 default before the 6.1 -> 7 translation).
    (
        "7.x sexual activity above 0.6 via explicit nudity",
        v7(("Explicit", "Explicit Sexual Activity"), 60.5),
        "rejected",
    ),
    (
        "7.x sexual activity below 0.6 via explicit nudity",
        v7(("Explicit", "Explicit Sexual Activity"), 59.5),
        "approved",
    ),
    # 6.x Revealing Clothes is 7.x Non-Explicit Nudity with no level-3 child: ignored.
    (
        "7.x revealing clothes ignored",
        v7(("Non-Explicit Nudity of Intimate parts and Kissing", "Non-Explicit Nudity"), 99),
        "approved",
    ),
    # 6.x Partial Nudity: Suggestive, at the default.
    (
        "7.x implied nudity above default",
        v7(
            (
                "Non-Explicit Nudity of Intimate parts and Kissing",
                "Non-Explicit Nudity",
                "Implied Nudity",
            ),
            50.5,
        ),
        "rejected",
    ),
    # AWS's v7-to-v6 helper maps Bare Back to 6.x Revealing Clothes, which the seed ignores.
    (
        "7.x bare back judged as revealing clothes, ignored",
        v7(
            (
                "Non-Explicit Nudity of Intimate parts and Kissing",
                "Non-Explicit Nudity",
                "Bare Back",
            ),
            50.5,
        ),
        "approved",
    ),
]

PALETTE = [(r, g, b) for r in (0, 128, 255) for g in (0, 128, 255) for b in (0, 128, 255)][
    : len(SEED_CASES)
]


def test_seed_thresholds_decide_both_model_generations(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    names = []
    for (_, labels, _), color in zip(SEED_CASES, PALETTE, strict=True):
        fake.respond(color, labels, model_version="7.0" if "TaxonomyLevel" in labels[0] else "6.1")
        names.append(add_picture(images, color, "seed"))

    statuses = {
        title: server.get(f"/unsafe/120x90/{name}").header("X-Moderation-Status")
        for (title, _, _), name in zip(SEED_CASES, names, strict=True)
    }

    assert statuses == {title: expected for title, _, expected in SEED_CASES}
    assert {call.min_confidence for call in fake.calls} == {50.0}


def test_rejected_image_gets_placeholder_at_requested_size_with_short_cache(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond((255, 0, 0), v6("Explicit Nudity", "Nudity", 99))
    name = add_picture(images, (255, 0, 0))

    sized = server.get(f"/unsafe/300x200/{name}")
    natural = server.get(f"/unsafe/{name}")

    assert sized.status == 200
    assert sized.header("X-Moderation-Status") == "rejected"
    assert size_of(sized) == (300, 200)
    assert sized.header("Cache-Control") == "max-age=60,public"
    assert sized.header("Expires") is None
    assert natural.status == 200
    assert size_of(natural) == size_of_file(images / name)
    with Image.open(io.BytesIO(sized.body)) as image:
        assert image.convert("RGB").getpixel((150, 10)) != (255, 0, 0)


@pytest.mark.parametrize(("size", "expected"), [("500x0", (500, 333)), ("0x200", (300, 200))])
def test_one_sided_placeholder_takes_the_shape_the_original_would_have(
    server: ThumborServer,
    images: Path,
    fake: FakeRekognition,
    size: str,
    expected: tuple[int, int],
) -> None:
    fake.respond((255, 0, 0), v6("Explicit Nudity", "Nudity", 99))
    rejected, approved = unique("wide-rejected"), unique("wide-approved")
    (images / rejected).write_bytes(picture((255, 0, 0), size=(1200, 800)))
    (images / approved).write_bytes(picture((0, 0, 255), size=(1200, 800)))

    placeholder = server.get(f"/unsafe/{size}/{rejected}")
    image = server.get(f"/unsafe/{size}/{approved}")

    assert placeholder.header("X-Moderation-Status") == "rejected"
    assert image.header("X-Moderation-Status") == "approved"
    assert size_of(placeholder) == size_of(image) == expected


def test_placeholder_renderings_are_reused_with_the_same_headers(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond((255, 0, 0), v6("Explicit Nudity", "Nudity", 99))
    first, second = add_picture(images, (255, 0, 0)), add_picture(images, (255, 0, 0))

    responses = [
        server.get(f"/unsafe/{size}/filters:format(webp)/{name}")
        for name in (first, second, first)
        for size in ("222x111", "111x222")
    ]

    assert {r.header("X-Moderation-Status") for r in responses} == {"rejected"}
    assert {r.header("Cache-Control") for r in responses} == {"max-age=60,public"}
    assert {r.header("Content-Type") for r in responses} == {"image/webp"}
    assert [size_of(r) for r in responses] == [(222, 111), (111, 222)] * 3
    assert len({r.body for r in responses}) == 2


def test_approved_image_is_served_with_thumbors_cache_headers(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    name = add_picture(images, (0, 0, 255))

    response = server.get(f"/unsafe/80x60/{name}")

    assert response.status == 200
    assert response.header("X-Moderation-Status") == "approved"
    assert response.header("Cache-Control") == f"max-age={MAX_AGE},public"
    assert size_of(response) == (80, 60)
    with Image.open(io.BytesIO(response.body)) as image:
        red, green, blue = image.convert("RGB").getpixel((40, 30))
    assert (red, green, blue) == pytest.approx((0, 0, 255), abs=30)


def test_rejected_and_pending_results_are_never_stored(
    server: ThumborServer, images: Path, fake: FakeRekognition, module_root: Path
) -> None:
    fake.respond((255, 0, 0), v6("Explicit Nudity", "Nudity", 99))
    rejected = add_picture(images, (255, 0, 0), "never-stored")
    pending = add_picture(images, (0, 255, 0), "never-stored")

    responses = [server.get(f"/unsafe/64x48/{rejected}")]
    fake.fail("internal")
    responses.append(server.get(f"/unsafe/64x48/{pending}"))

    assert [r.header("X-Moderation-Status") for r in responses] == ["rejected", "pending"]
    stored = [
        path.name
        for folder in ("storage", "result")
        for path in (module_root / "default" / folder).rglob("*")
        if "never-stored" in str(path)
    ]
    assert stored == []


def test_rejected_decision_refuses_result_storage_and_storage_hits(
    server: ThumborServer, images: Path, fake: FakeRekognition, module_root: Path
) -> None:
    name = add_picture(images, (0, 128, 255), "later-rejected")
    assert server.get(f"/unsafe/100x75/{name}").header("X-Moderation-Status") == "approved"
    assert server.get(f"/unsafe/100x75/{name}").header("X-Moderation-Status") == "approved"
    root = module_root / "default"
    cached_result = result_file(root, f"/unsafe/100x75/{name}")
    assert cached_result.is_file()
    assert storage_file(root, name).is_file()
    (images / name).unlink()
    store = Store(path=str(root / "decisions.sqlite3"))
    # Thumbor stores a result after answering, then the plugin records its path and reads
    # the decision once more (a rejection saved meanwhile removes it): let that finish.
    deadline = time.monotonic() + 5
    while f"/unsafe/100x75/{name}" not in store.results(name) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    decision = store.get(name)
    assert decision is not None
    store.save(
        decision.replace(status=Status.REJECTED, source=Source.MANUAL),
        Event(Status.REJECTED, Source.MANUAL, "test", "rejected after caching"),
    )
    time.sleep(0.3)

    cached_size = server.get(f"/unsafe/100x75/{name}")
    new_size = server.get(f"/unsafe/90x90/{name}")

    for response, size in ((cached_size, (100, 75)), (new_size, (90, 90))):
        assert response.status == 200
        assert response.header("X-Moderation-Status") == "rejected"
        assert size_of(response) == size
        with Image.open(io.BytesIO(response.body)) as image:
            corner = image.convert("RGB").getpixel((2, 2))
        assert corner != pytest.approx((0, 128, 255), abs=40)
    # The refused result stays on disk (refused on every read); the original moved from
    # STORAGE to the quarantine the first time it was refused.
    assert cached_result.is_file()
    assert not storage_file(root, name).exists()
    assert (root / "quarantine" / decision.sha256[:2] / decision.sha256).is_file()


def test_one_backend_call_per_picture_across_sizes_urls_and_concurrency(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    data = picture((128, 0, 128), size=(161, 121))
    first = unique("burst")
    (images / first).write_bytes(data)
    paths = [f"/unsafe/{40 + index}x{30 + index}/{first}" for index in range(20)]

    with ThreadPoolExecutor(max_workers=20) as pool:
        burst = list(pool.map(server.get, paths))
    copy = unique("burst-copy")
    (images / copy).write_bytes(data)
    again = server.get(f"/unsafe/33x33/{copy}")
    spelled = server.get(f"/unsafe/34x34//{first}")

    assert [r.status for r in burst] == [200] * 20
    assert {r.header("X-Moderation-Status") for r in burst} == {"approved"}
    assert again.header("X-Moderation-Status") == "approved"
    assert spelled.header("X-Moderation-Status") == "approved"
    assert fake.call_count == 1


def test_backend_failure_is_pending_fails_closed_and_is_retried(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond((255, 255, 0), v6("Drugs", "Pills", 90))
    name = add_picture(images, (255, 255, 0))
    fake.fail("throttle", times=1)

    during = server.get(f"/unsafe/50x50/{name}")
    after = server.get(f"/unsafe/50x50/{name}")

    assert during.status == 200
    assert during.header("X-Moderation-Status") == "pending"
    assert during.header("Cache-Control") == "max-age=60,public"
    assert after.header("X-Moderation-Status") == "rejected"
    assert fake.call_count == 2


def test_not_an_image_is_a_400_and_never_reaches_the_backend(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    name = unique("garbage", ".jpg")
    (images / name).write_bytes(b"<html><script>alert(1)</script></html>")

    response = server.get(f"/unsafe/50x50/{name}")

    assert response.status == 400
    assert fake.call_count == 0


def test_original_placed_in_storage_without_the_loader_is_judged(
    server: ThumborServer, fake: FakeRekognition, module_root: Path
) -> None:
    fake.respond((255, 0, 255), v6("Hate Symbols", "Nazi Party", 97))
    name = unique("uploaded")
    storage = module_root / "default" / "storage"
    upload_server_root = module_root / "upload-helper"
    # Anything that writes into STORAGE behind the plugin's back: a stock Thumbor.
    helper_config = stock_config(
        upload_server_root,
        upload_server_root,
        ["thumbor.handler_lists.healthcheck", "thumbor.handler_lists.upload"],
    )
    helper_config.update(
        {"FILE_STORAGE_ROOT_PATH": str(storage), "UPLOAD_ENABLED": True, "UPLOAD_PUT_ALLOWED": True}
    )
    uploader = ThumborServer(upload_server_root, helper_config).start()
    try:
        put = uploader.request(
            "PUT",
            f"/image/{name}",
            body=picture((255, 0, 255)),
            headers={"Content-Type": "image/png"},
        )
    finally:
        uploader.stop()
    assert put.status in (201, 204)

    response = server.get(f"/unsafe/60x60/{name}")

    assert response.header("X-Moderation-Status") == "rejected"
    assert fake.call_count == 1


@pytest.fixture
def fresh_root(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    return tmp_path


def test_forbidden_mode_answers_403_with_short_cache(
    fresh_root: Path, fake: FakeRekognition
) -> None:
    fake.respond((255, 0, 0), v6("Explicit Nudity", "Nudity", 99))
    (fresh_root / "images" / "bad.png").write_bytes(picture((255, 0, 0)))
    config = base_config(fresh_root, fresh_root / "images", fake.url)
    config["MODERATION_REJECTED_RESPONSE"] = "forbidden"
    config["MODERATION_REJECTED_MAX_AGE"] = 0
    thumbor = ThumborServer(fresh_root, config).start()
    try:
        first = thumbor.get("/unsafe/100x100/bad.png")
        gated = thumbor.get("/unsafe/200x100/bad.png")
    finally:
        thumbor.stop()

    for response in (first, gated):
        assert response.status == 403
        assert response.body == b""
        assert response.header("X-Moderation-Status") == "rejected"
        assert response.header("Cache-Control") == "no-store"
    assert fake.call_count == 1


def test_fail_open_serves_pending_images_uncached(fresh_root: Path, fake: FakeRekognition) -> None:
    (fresh_root / "images" / "blue.png").write_bytes(picture((0, 0, 255)))
    config = base_config(fresh_root, fresh_root / "images", fake.url)
    config["MODERATION_ON_ERROR"] = "allow"
    fake.fail("access_denied")
    thumbor = ThumborServer(fresh_root, config).start()
    try:
        response = thumbor.get("/unsafe/70x70/blue.png")
    finally:
        thumbor.stop()

    assert response.status == 200
    assert response.header("X-Moderation-Status") == "pending"
    assert size_of(response) == (70, 70)
    assert response.header("Cache-Control") == "max-age=60,public"
    assert not [p for p in (fresh_root / "result").rglob("*") if p.is_file()]
    assert not [p for p in (fresh_root / "storage").rglob("*") if p.is_file()]
    assert "AccessDeniedException" in thumbor.log


def test_decisions_survive_a_restart(fresh_root: Path, fake: FakeRekognition) -> None:
    fake.respond((255, 0, 0), v6("Explicit Nudity", "Nudity", 99))
    (fresh_root / "images" / "bad.png").write_bytes(picture((255, 0, 0)))
    (fresh_root / "images" / "good.png").write_bytes(picture((0, 0, 255)))
    config = base_config(fresh_root, fresh_root / "images", fake.url)
    thumbor = ThumborServer(fresh_root, config).start()
    try:
        before = [
            thumbor.get(f"/unsafe/{n}.png").header("X-Moderation-Status") for n in ("bad", "good")
        ]
        thumbor.restart()
        after = [
            thumbor.get(f"/unsafe/30x30/{n}.png").header("X-Moderation-Status")
            for n in ("bad", "good")
        ]
    finally:
        thumbor.stop()

    assert before == after == ["rejected", "approved"]
    assert fake.call_count == 2


def test_http_loader_keys_one_picture_under_every_spelling(
    fresh_root: Path, fake: FakeRekognition
) -> None:
    import http.server

    (fresh_root / "images" / "a.png").write_bytes(picture((0, 128, 0)))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(fresh_root / "images"), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{origin.server_address[1]}"
    config = base_config(fresh_root, fresh_root / "images", fake.url)
    config["MODERATION_SOURCE_LOADER"] = "thumbor.loaders.http_loader"
    config["STORAGE"] = "thumbor.storages.no_storage"
    thumbor = ThumborServer(fresh_root, config).start()
    try:
        spellings = [f"http://{host}/a.png", f"{host}/a.png", f"http%3A//{host}/a.png"]
        statuses = [
            thumbor.get(f"/unsafe/{20 + i}x20/{url}").header("X-Moderation-Status")
            for i, url in enumerate(spellings)
        ]
    finally:
        thumbor.stop()
        origin.shutdown()
        origin.server_close()

    assert statuses == ["approved"] * 3
    assert fake.call_count == 1
    store = Store(path=str(fresh_root / "decisions.sqlite3"))
    keys = [decision.key for decision in store.page()[0]]
    store.close()
    assert keys == [f"{host}/a.png"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"MODERATION_CATEGORY_THRESHOLDS": {"Explicit Nudityy": 0.6}},
            "MODERATION_CATEGORY_THRESHOLDS",
        ),
        ({"MODERATION_MIN_CONFIDENCE": 2}, "MODERATION_MIN_CONFIDENCE"),
        ({"MODERATION_REJECTED_RESPONSE": "blur"}, "MODERATION_REJECTED_RESPONSE"),
        ({"MODERATION_RULES": "aws_rek:violence:high"}, "MODERATION_RULES"),
        ({"LOADER": "thumbor.loaders.file_loader"}, "LOADER"),
    ],
)
def test_bad_configuration_stops_start_up_naming_the_key(
    fresh_root: Path, overrides: dict[str, Any], expected: str
) -> None:
    config = base_config(fresh_root, fresh_root / "images", None)
    config.update(overrides)
    thumbor = ThumborServer(fresh_root, config).start(wait=False)

    code = thumbor.wait_exit()

    assert code != 0
    assert expected in thumbor.log
    assert "Traceback" not in thumbor.log


def test_metrics_count_decisions_and_backend_calls(fresh_root: Path, fake: FakeRekognition) -> None:
    fake.respond((255, 0, 0), v6("Explicit Nudity", "Nudity", 99))
    (fresh_root / "images" / "bad.png").write_bytes(picture((255, 0, 0)))
    (fresh_root / "images" / "good.png").write_bytes(picture((0, 0, 255)))
    config = base_config(fresh_root, fresh_root / "images", fake.url)
    thumbor = ThumborServer(fresh_root, config, log_level="debug").start()
    try:
        thumbor.get("/unsafe/40x40/bad.png")
        thumbor.get("/unsafe/40x40/good.png")
        fake.fail("internal", times=1)
        (fresh_root / "images" / "new.png").write_bytes(picture((0, 255, 0)))
        thumbor.get("/unsafe/40x40/new.png")
    finally:
        thumbor.stop()

    log = thumbor.log
    assert log.count("METRICS: inc: moderation.backend.calls:1") == 3
    assert log.count("METRICS: inc: moderation.decision.rejected:1") == 1
    assert log.count("METRICS: inc: moderation.decision.approved:1") == 1
    assert log.count("METRICS: inc: moderation.decision.pending:1") == 1
    assert log.count("METRICS: inc: moderation.backend.errors.retryable:1") == 1
    assert log.count("METRICS: timing: moderation.backend.latency:") == 3


def test_several_thumbor_processes_share_the_sqlite_store(
    fresh_root: Path, fake: FakeRekognition
) -> None:
    fake.respond((255, 0, 0), v6("Explicit Nudity", "Nudity", 99))
    for index in range(6):
        color = (255, 0, 0) if index % 2 else (0, 0, 255)
        (fresh_root / "images" / f"p{index}.png").write_bytes(
            picture(color, size=(100 + index, 90))
        )
    config = base_config(fresh_root, fresh_root / "images", fake.url)
    thumbor = ThumborServer(fresh_root, config, processes=2).start()
    try:
        paths = [f"/unsafe/{30 + size}x30/p{index}.png" for index in range(6) for size in range(5)]
        with ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(pool.map(lambda p: thumbor.get(p).header("X-Moderation-Status"), paths))
    finally:
        thumbor.stop()

    expected = ["rejected" if index % 2 else "approved" for index in range(6) for _ in range(5)]
    assert statuses == expected
    assert 6 <= fake.call_count <= 12
    assert "database is locked" not in thumbor.log
    assert "Traceback" not in thumbor.log


def test_new_thresholds_rejudge_stored_labels_and_serve_from_quarantine(
    fresh_root: Path, fake: FakeRekognition
) -> None:
    fake.respond((255, 0, 0), v6("Suggestive", "Partial Nudity", 70))
    (fresh_root / "images" / "beach.png").write_bytes(picture((255, 0, 0)))
    config = base_config(fresh_root, fresh_root / "images", fake.url)
    config["MODERATION_QUARANTINE_PATH"] = str(fresh_root / "quarantine")
    thumbor = ThumborServer(fresh_root, config).start()
    try:
        before = thumbor.get("/unsafe/60x60/beach.png").header("X-Moderation-Status")
        (fresh_root / "images" / "beach.png").unlink()
        thumbor.config["MODERATION_CATEGORY_THRESHOLDS"] = {"suggestive": 0.8}
        thumbor.restart()
        after = thumbor.get("/unsafe/70x70/beach.png")
    finally:
        thumbor.stop()

    assert before == "rejected"
    assert after.status == 200
    assert after.header("X-Moderation-Status") == "approved"
    with Image.open(io.BytesIO(after.body)) as image:
        assert image.convert("RGB").getpixel((35, 35)) == pytest.approx((255, 0, 0), abs=10)
    assert fake.call_count == 1


ADAPTER = (
    "arn:aws:rekognition:us-east-1:111122223333:project/nsfw/version/nsfw.2024-05-01/1714521600000"
)


def test_a_configured_adapter_judges_every_picture_and_its_decision_names_it(
    fresh_root: Path, fake: FakeRekognition
) -> None:
    fake.add_adapter(ADAPTER)
    # What the adapter was trained to see and the base model does not.
    fake.respond(
        (0, 0, 255),
        v7(("Swimwear or Underwear", "Female Swimwear or Underwear"), 90),
        adapter=ADAPTER,
    )
    (fresh_root / "images" / "catalogue.png").write_bytes(picture((0, 0, 255)))
    (fresh_root / "images" / "plain.png").write_bytes(picture((0, 255, 0)))
    config = base_config(fresh_root, fresh_root / "images", fake.url)
    config["REKOGNITION_PROJECT_VERSION"] = ADAPTER
    config["MODERATION_ADMIN_TOKEN"] = "adapter-admin-token-5c2e91"
    thumbor = ThumborServer(fresh_root, config).start()
    try:
        catalogue = thumbor.get("/unsafe/60x60/catalogue.png").header("X-Moderation-Status")
        plain = thumbor.get("/unsafe/60x60/plain.png").header("X-Moderation-Status")
        shown = thumbor.get(
            "/moderation/image?url=catalogue.png",
            headers={"Authorization": "Bearer adapter-admin-token-5c2e91"},
        )
    finally:
        thumbor.stop()

    assert (catalogue, plain) == ("rejected", "approved")
    assert [call.project_version for call in fake.calls] == [ADAPTER, ADAPTER]
    decision = json.loads(shown.body)
    assert (decision["model_version"], decision["project_version"]) == ("7.0", ADAPTER)
    assert "Traceback" not in thumbor.log
