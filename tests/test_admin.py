"""The admin API and review page through the real Thumbor app over HTTP.

Overrides are checked where they matter to viewers: what Thumbor serves next, what is
left in STORAGE, RESULT_STORAGE and the quarantine, and what the backend is asked.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import itertools
import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.servers import MAX_AGE, Response, ThumborServer, base_config, result_file, storage_file
from thumbor_rekognition.decision import Decision, Event, Source, Status
from thumbor_rekognition.stores import result_paths
from thumbor_rekognition.stores.sqlite import Store

pytestmark = pytest.mark.e2e

TOKEN = "admin-token-for-tests-5f0c2a9e41"
PREFIX = "/moderation"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHALLENGE = 'Bearer realm="moderation"'
MAX_BODY = 16384
REVIEW_BAND = 0.1

RED = (255, 0, 0)
BLUE = (0, 0, 255)
GREEN = (0, 255, 0)
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]
# 45 is below the default threshold (50) but inside a band of 0.1 under it.
BORDERLINE = [
    {"Name": "Violence", "ParentName": "", "Confidence": 45.0},
    {"Name": "Weapons", "ParentName": "Violence", "Confidence": 45.0},
]
HOSTILE = "<script>alert(1)</script>\"'"

_names = itertools.count()
_sizes = itertools.count()


def unique(stem: str) -> str:
    return f"{stem}-{next(_names)}.png"


def add_picture(images: Path, color: tuple[int, int, int], stem: str) -> str:
    """A new picture whose size makes its bytes differ from every other picture's."""
    name = unique(stem)
    (images / name).write_bytes(picture(color, size=(160, 100 + next(_sizes))))
    return name


def admin_config(root: Path, images: Path, endpoint: str) -> dict[str, Any]:
    config = base_config(root, images, endpoint)
    config.update(
        {
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_QUARANTINE_PATH": str(root / "quarantine"),
            "MODERATION_ADMIN_MAX_BODY_BYTES": MAX_BODY,
            "MODERATION_REVIEW_BAND": REVIEW_BAND,
            "MODERATION_ON_ERROR": "allow",
        }
    )
    return config


def call(
    server: ThumborServer,
    method: str,
    route: str,
    body: Any = None,
    headers: Mapping[str, str] = AUTH,
) -> Response:
    """An admin API request; a body that is not bytes is sent as JSON."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    return server.request(method, PREFIX + route, body=data, headers=headers)


def arg(url: str) -> str:
    return quote(url, safe="")


def json_of(response: Response) -> Any:
    assert (response.header("Content-Type") or "").startswith("application/json")
    return json.loads(response.body)


def status_of(server: ThumborServer, path: str) -> str | None:
    return server.get(path).header("X-Moderation-Status")


def size_of(response: Response) -> tuple[int, int]:
    with Image.open(io.BytesIO(response.body)) as image:
        return image.size


def centre_of(response: Response) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(response.body)) as image:
        rgb = image.convert("RGB")
        red, green, blue = rgb.getpixel((rgb.width // 2, rgb.height // 2))
    return red, green, blue


def quarantined(root: Path, data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()
    return root / "quarantine" / digest[:2] / digest


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    # Thumbor writes a result to the client before it stores it (and the gate records it).
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def walk(server: ThumborServer, status: str | None, limit: int = 37) -> tuple[list[str], list[int]]:
    """Every key GET /images lists, following next_cursor, and the size of each page."""
    keys: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(1000):
        route = f"/images?limit={limit}"
        if status:
            route += f"&status={status}"
        if cursor is not None:
            route += f"&cursor={arg(cursor)}"
        page = json_of(call(server, "GET", route))
        keys += [image["key"] for image in page["images"]]
        sizes.append(len(page["images"]))
        cursor = page["next_cursor"]
        if cursor is None:
            return keys, sizes
    raise AssertionError("pagination never ended")


def queue(server: ThumborServer, name: str) -> list[str]:
    """The keys of the first page of a review queue, as the review page asks for it."""
    response = call(server, "GET", f"/images?queue={name}&limit=100")
    assert response.status == 200
    return [image["key"] for image in json_of(response)["images"]]


@pytest.fixture(scope="module")
def admin_root(module_root: Path) -> Path:
    return module_root / "admin"


@pytest.fixture(scope="module")
def server(admin_root: Path, images: Path, module_fake: FakeRekognition) -> Iterator[ThumborServer]:
    # Debug level: the token must stay out of even the most talkative log.
    thumbor = ThumborServer(
        admin_root, admin_config(admin_root, images, module_fake.url), log_level="debug"
    ).start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log
    assert TOKEN not in thumbor.log


@pytest.fixture(scope="module")
def known(server: ThumborServer, images: Path, module_fake: FakeRekognition) -> str:
    """A rejected picture the admin API has data about."""
    module_fake.respond(RED, NUDITY, model_version="6.1")
    name = add_picture(images, RED, "known")
    assert status_of(server, f"/unsafe/64x48/{name}") == "rejected"
    return name


@pytest.fixture
def fresh(tmp_path: Path, fake: FakeRekognition) -> Iterator[tuple[ThumborServer, Path]]:
    """A server of its own, with an empty decision store, and its originals folder."""
    (tmp_path / "images").mkdir()
    thumbor = ThumborServer(tmp_path, admin_config(tmp_path, tmp_path / "images", fake.url))
    yield thumbor.start(), tmp_path / "images"
    thumbor.stop()


# Overrides


def test_approving_a_rejected_image_serves_its_quarantined_original_without_the_origin(
    server: ThumborServer, images: Path, admin_root: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY, model_version="6.1")
    name = add_picture(images, RED, "approve")
    original = (images / name).read_bytes()
    assert status_of(server, f"/unsafe/100x80/{name}") == "rejected"
    assert quarantined(admin_root, original).read_bytes() == original
    (images / name).unlink()

    put = call(
        server,
        "PUT",
        f"/image?url={arg(name)}",
        {"status": "approved", "note": "a red square, not nudity", "actor": "alice"},
    )
    requested_before = server.get(f"/unsafe/100x80/{name}")
    never_requested = server.get(f"/unsafe/57x43/{name}")
    shown = json_of(call(server, "GET", f"/image?url={arg(name)}"))

    assert put.status == 200
    assert [(d["key"], d["status"], d["source"]) for d in json_of(put)["updated"]] == [
        (name, "approved", "manual")
    ]
    for response, size in ((requested_before, (100, 80)), (never_requested, (57, 43))):
        assert response.status == 200
        assert response.header("X-Moderation-Status") == "approved"
        assert size_of(response) == size
        assert centre_of(response) == pytest.approx(RED, abs=30)
    assert (shown["status"], shown["source"]) == ("approved", "manual")
    assert shown["history"][0]["status"] == "rejected"
    assert {k: shown["history"][-1][k] for k in ("status", "source", "actor", "note")} == {
        "status": "approved",
        "source": "manual",
        "actor": "alice",
        "note": "a red square, not nudity",
    }
    assert fake.call_count == 1


def test_rejecting_an_approved_image_refuses_it_at_once_and_purges_its_copies(
    server: ThumborServer, images: Path, admin_root: Path, fake: FakeRekognition
) -> None:
    name = add_picture(images, BLUE, "reject")
    original = (images / name).read_bytes()
    paths = [f"/unsafe/{size}/{name}" for size in ("100x75", "60x45", "30x20")]
    assert [status_of(server, path) for path in paths] == ["approved"] * 3
    results = [result_file(admin_root, path) for path in paths]
    stored = storage_file(admin_root, name)
    store = Store(path=str(admin_root / "decisions.sqlite3"))
    wait_for(
        lambda: all(r.is_file() for r in results) and len(result_paths(store.results(name))) == 3
    )
    assert stored.is_file()
    (images / name).unlink()

    put = call(server, "PUT", f"/image?url={arg(name)}", {"status": "rejected", "note": "spam"})
    refused = [server.get(path) for path in (paths[0], f"/unsafe/41x41/{name}")]
    kept = call(server, "GET", f"/original?url={arg(name)}")

    assert put.status == 200
    assert [r.header("X-Moderation-Status") for r in refused] == ["rejected", "rejected"]
    assert [centre_of(r) != pytest.approx(BLUE, abs=40) for r in refused] == [True, True]
    assert [r.is_file() for r in results] == [False, False, False]
    assert not stored.exists()
    assert quarantined(admin_root, original).read_bytes() == original
    assert kept.status == 200
    assert kept.body == original
    assert kept.header("Content-Type") == "image/png"
    assert "sandbox" in (kept.header("Content-Security-Policy") or "")


def test_rejecting_a_picture_rejects_it_at_every_url_and_at_urls_seen_later(
    server: ThumborServer, images: Path, admin_root: Path, fake: FakeRekognition
) -> None:
    data = picture((0, 128, 255), size=(171, 99))
    first, second, third = unique("twin"), unique("twin"), unique("twin")
    for name in (first, second):
        (images / name).write_bytes(data)
    paths = {name: f"/unsafe/50x50/{name}" for name in (first, second, third)}
    assert [status_of(server, paths[n]) for n in (first, second)] == ["approved"] * 2
    cached = [result_file(admin_root, paths[n]) for n in (first, second)]
    cached += [storage_file(admin_root, n) for n in (first, second)]
    wait_for(lambda: all(path.is_file() for path in cached))
    store = Store(path=str(admin_root / "decisions.sqlite3"))
    wait_for(lambda: all(store.results(name) for name in (first, second)))

    put = call(server, "PUT", f"/image?url={arg(first)}", {"status": "rejected"})
    (images / third).write_bytes(data)
    statuses = [status_of(server, paths[n]) for n in (first, second, third)]
    shown = json_of(call(server, "GET", f"/image?url={arg(third)}"))

    assert sorted(d["key"] for d in json_of(put)["updated"]) == sorted([first, second])
    assert statuses == ["rejected"] * 3
    assert (shown["status"], shown["source"]) == ("rejected", "manual")
    assert [path.exists() for path in cached] == [False] * 4
    assert fake.call_count == 1


def test_picture_with_a_percent_escape_in_its_name_is_rejected_by_its_listed_url(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    # As in presigned URLs, whose query strings carry escapes such as %2F.
    name = f"percent-%41-{next(_names)}.png"
    (images / name).write_bytes(picture(BLUE, size=(160, 100 + next(_sizes))))
    path = f"/unsafe/60x60/{quote(name)}"
    assert status_of(server, path) == "approved"
    listed, _ = walk(server, "approved", limit=500)
    assert name in listed

    put = call(server, "PUT", f"/image?url={arg(name)}", {"status": "rejected"})

    assert [d["key"] for d in json_of(put)["updated"]] == [name]
    assert status_of(server, path) == "rejected"


def test_deleting_a_decision_makes_the_next_request_judge_the_picture_again(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    name = add_picture(images, BLUE, "forget")
    assert status_of(server, f"/unsafe/70x70/{name}") == "approved"
    assert fake.call_count == 1

    deleted = call(server, "DELETE", f"/image?url={arg(name)}")
    gone = call(server, "GET", f"/image?url={arg(name)}")
    again = call(server, "DELETE", f"/image?url={arg(name)}")
    next_request = server.get(f"/unsafe/70x70/{name}")

    assert (deleted.status, deleted.body) == (204, b"")
    assert gone.status == 404
    assert "error" in json_of(gone)
    assert again.status == 404
    assert next_request.header("X-Moderation-Status") == "approved"
    assert fake.call_count == 2
    history = json_of(call(server, "GET", f"/image?url={arg(name)}"))["history"]
    assert [event["actor"] for event in history].count("admin-api") == 1


# Authentication

DATA_ROUTES = [
    ("GET", "/images"),
    ("GET", "/image?url={url}"),
    ("PUT", "/image?url={url}"),
    ("DELETE", "/image?url={url}"),
    ("POST", "/purge?url={url}"),
    ("GET", "/original?url={url}"),
    ("GET", "/stats"),
    ("POST", "/images"),
]
ROUTE_IDS = [f"{method} {route.split('=')[0]}" for method, route in DATA_ROUTES]
CREDENTIALS = {
    "no token": {},
    "wrong token": {"Authorization": "Bearer " + "x" * len(TOKEN)},
    "token prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "wrong scheme": {"Authorization": f"Basic {TOKEN}"},
    "no scheme": {"Authorization": TOKEN},
}


@pytest.mark.parametrize("credentials", CREDENTIALS.values(), ids=CREDENTIALS.keys())
@pytest.mark.parametrize(("method", "route"), DATA_ROUTES, ids=ROUTE_IDS)
def test_data_routes_answer_401_without_the_right_bearer_token(
    server: ThumborServer, known: str, method: str, route: str, credentials: dict[str, str]
) -> None:
    body = {"status": "approved"} if method == "PUT" else None

    response = call(server, method, route.format(url=arg(known)), body, credentials)

    error = json_of(response)
    assert response.status == 401
    assert list(error) == ["error"]
    assert isinstance(error["error"], str)
    assert known.encode() not in response.body


def test_every_401_carries_a_bearer_challenge(server: ThumborServer, known: str) -> None:
    responses = [
        call(server, method, route.format(url=arg(known)), headers={})
        for method, route in DATA_ROUTES
    ]

    assert {r.status for r in responses} == {401}
    assert [r.header("WWW-Authenticate") for r in responses] == [CHALLENGE] * len(responses)


def test_token_in_the_query_string_is_not_accepted(fresh: tuple[ThumborServer, Path]) -> None:
    # A server of its own: a URL carrying the token lands in the access log.
    thumbor, _ = fresh

    response = call(thumbor, "GET", f"/images?token={TOKEN}&access_token={TOKEN}", headers={})

    assert response.status == 401


def test_refused_writes_change_nothing(
    server: ThumborServer, images: Path, admin_root: Path, fake: FakeRekognition
) -> None:
    name = add_picture(images, BLUE, "untouched")
    assert status_of(server, f"/unsafe/80x80/{name}") == "approved"
    wrong = CREDENTIALS["wrong token"]

    responses = [
        call(server, "PUT", f"/image?url={arg(name)}", {"status": "rejected"}, wrong),
        call(server, "POST", f"/purge?url={arg(name)}", None, wrong),
        call(server, "DELETE", f"/image?url={arg(name)}", None, wrong),
    ]

    assert [r.status for r in responses] == [401] * 3
    shown = json_of(call(server, "GET", f"/image?url={arg(name)}"))
    assert (shown["status"], shown["source"]) == ("approved", "auto")
    assert storage_file(admin_root, name).is_file()
    assert status_of(server, f"/unsafe/80x80/{name}") == "approved"


def test_review_page_shell_loads_without_a_token_and_shows_no_data(
    server: ThumborServer, known: str
) -> None:
    responses = [server.get(f"{PREFIX}/"), server.get(PREFIX)]

    for response in responses:
        assert response.status == 200
        assert (response.header("Content-Type") or "").startswith("text/html")
        assert b"Image moderation review" in response.body
        assert known.encode() not in response.body
        assert "frame-ancestors 'none'" in (response.header("Content-Security-Policy") or "")


def test_the_token_never_reaches_the_thumbor_log(
    server: ThumborServer, known: str, images: Path
) -> None:
    name = add_picture(images, BLUE, "logged")
    assert status_of(server, f"/unsafe/40x40/{name}") == "approved"
    wrong = "Bearer wrong-token-that-is-long-enough"

    for method, route in DATA_ROUTES:
        body = {"status": "approved"} if method == "PUT" else None
        call(server, method, route.format(url=arg(name)), body)
        call(server, method, route.format(url=arg(name)), body, {"Authorization": wrong})
    call(server, "GET", "/images?limit=nope")

    log = server.log
    assert f"{PREFIX}/stats" in log
    assert TOKEN not in log
    assert "wrong-token-that-is-long-enough" not in log


def test_without_a_token_the_admin_routes_say_the_api_is_off_and_which_key_turns_it_on(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    folder = tmp_path / "images"
    (folder / "moderation").mkdir(parents=True)
    (folder / "seen.png").write_bytes(picture(BLUE))
    (folder / "moderation" / "stats.png").write_bytes(picture(GREEN))
    config = admin_config(tmp_path, folder, fake.url)
    del config["MODERATION_ADMIN_TOKEN"]
    # Thumbor's default log level: where an operator looks first.
    thumbor = ThumborServer(tmp_path, config, log_level="warning").start()
    try:
        seen = thumbor.get("/unsafe/seen.png")
        image = thumbor.get(f"/unsafe{PREFIX}/stats.png")
        probes = [
            call(thumbor, method, route.format(url="seen.png"), None, AUTH)
            for method, route in [*DATA_ROUTES, ("GET", "/"), ("GET", ""), ("GET", "/x/y")]
        ]
        beside = thumbor.get(f"{PREFIX}-other/")
    finally:
        thumbor.stop()

    assert seen.header("X-Moderation-Status") == "approved"
    assert image.status == 200
    assert image.header("X-Moderation-Status") == "approved"
    for probe in probes:
        assert probe.status == 404
        error = json_of(probe)["error"]
        assert "admin API is off" in error
        assert "MODERATION_ADMIN_TOKEN" in error
        assert probe.header("Cache-Control") == "no-store"
        assert b"seen.png" not in probe.body
    # Only the prefix itself and what lies under it.
    assert beside.status == 400
    assert thumbor.log.count("admin API is off: set MODERATION_ADMIN_TOKEN") == 1
    assert "Traceback" not in thumbor.log


# Escaping


def test_hostile_image_url_is_escaped_in_the_api_and_absent_from_the_page_shell(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    url = f"hostile-{next(_names)}{HOSTILE}.png"
    (images / url).parent.mkdir(parents=True)
    (images / url).write_bytes(picture(BLUE, size=(160, 90)))
    assert status_of(server, f"/unsafe/50x50/{quote(url)}") == "approved"

    shell = call(server, "GET", "/")
    listed = call(server, "GET", "/images?status=approved&limit=500")
    shown = call(server, "GET", f"/image?url={arg(url)}")

    # The page holds no data: its script reads the API and shows text as text.
    assert HOSTILE.encode() not in shell.body
    assert shell.body.count(b"<script") == 1
    assert [i["url"] for i in json_of(listed)["images"]].count(url) == 1
    assert json_of(shown)["url"] == url
    for response in (listed, shown):
        assert response.header("X-Content-Type-Options") == "nosniff"
        assert b'\\"' in response.body


# Listing


@pytest.fixture(scope="module")
def seeded(
    module_root: Path, images: Path, module_fake: FakeRekognition
) -> Iterator[tuple[ThumborServer, dict[str, Status]]]:
    """A server whose store holds 1,000 decisions written straight into its SQLite file."""
    root = module_root / "seeded"
    store = Store(path=str(root / "decisions.sqlite3"))
    spellings = ["seed/{:04d}.png", "seed/{:04d} a&b=c+d%20e?.png", "seed/{:04d}-ünï.png"]
    expected: dict[str, Status] = {}
    for index in range(1000):
        key = spellings[index % 3].format(index)
        status = [Status.APPROVED, Status.REJECTED, Status.PENDING][index % 4 % 3]
        source = Source.MANUAL if index % 5 == 0 else Source.AUTO
        decision = Decision(key=key, url=key, sha256=f"{index:064x}", status=status, source=source)
        store.save(decision, Event(status, source, "seed", ""))
        expected[key] = status
    store.close()
    thumbor = ThumborServer(root, admin_config(root, images, module_fake.url)).start()
    yield thumbor, expected
    thumbor.stop()
    assert "Traceback" not in thumbor.log


@pytest.mark.parametrize("status", [None, "rejected"])
def test_pagination_walks_every_decision_once_in_key_order(
    seeded: tuple[ThumborServer, dict[str, Status]], status: str | None
) -> None:
    thumbor, decisions = seeded
    expected = sorted(k for k, s in decisions.items() if status is None or s.value == status)

    keys, sizes = walk(thumbor, status)

    assert len(expected) > 37 * 5
    assert keys == expected
    assert set(sizes[:-1]) == {37}
    assert 1 <= sizes[-1] <= 37


def test_stats_count_decisions_by_status_and_source_and_backend_calls(
    fresh: tuple[ThumborServer, Path], fake: FakeRekognition
) -> None:
    thumbor, folder = fresh
    fake.respond(RED, NUDITY)
    fake.respond(GREEN, BORDERLINE)
    good, other, bad, borderline = (
        add_picture(folder, color, "stats") for color in (BLUE, BLUE, RED, GREEN)
    )
    copy = unique("stats-copy")
    (folder / copy).write_bytes((folder / other).read_bytes())
    for name in (good, other, copy, bad, borderline):
        thumbor.get(f"/unsafe/40x40/{name}")
    call(thumbor, "PUT", f"/image?url={arg(good)}", {"status": "rejected"})

    stats = json_of(call(thumbor, "GET", "/stats"))

    assert stats["decisions"] == {"approved": 2, "rejected": 2, "pending": 1}
    assert stats["by_source"] == {
        "approved.auto": 2,
        "approved.manual": 0,
        "approved.duplicate": 0,
        "rejected.auto": 1,
        "rejected.manual": 1,
        "rejected.duplicate": 0,
        "pending.auto": 1,
        "pending.manual": 0,
        "pending.duplicate": 0,
        "approved.bank": 0,
        "rejected.bank": 0,
        "pending.bank": 0,
    }
    assert stats["backend_calls"] == 4 == fake.call_count
    assert stats["backend"] == "rekognition"
    # Every request above was answered: nothing of them is in flight any more.
    assert stats["process"]["judgements_in_flight"] == 0
    assert stats["process"]["backend_calls_out"] == 0
    assert set(stats["process"]) == {
        "judgements_in_flight",
        "backend_calls_out",
        "decode_budget_held_bytes",
        "decode_budget_waiting",
        "backlog_pictures",
        "backlog_bytes",
        "backlog_in_memory_bytes",
        "backlog_dropped",
        "decisions_cached",
        "hashes_cached",
        "pictures_with_paths_recorded",
        "failures_remembered",
    }


# Bad requests

BAD_REQUESTS = [
    ("bad json", "PUT", "/image?url=a.png", b"{not json", 400),
    ("json array", "PUT", "/image?url=a.png", b"[]", 400),
    ("json null", "PUT", "/image?url=a.png", b"null", 400),
    ("not utf-8", "PUT", "/image?url=a.png", b'{"status": "\xff"}', 400),
    ("status missing", "PUT", "/image?url=a.png", b"{}", 400),
    ("status pending", "PUT", "/image?url=a.png", b'{"status": "pending"}', 400),
    ("status upper case", "PUT", "/image?url=a.png", b'{"status": "APPROVED"}', 400),
    ("status not a string", "PUT", "/image?url=a.png", b'{"status": ["approved"]}', 400),
    (
        "unseen not a boolean",
        "PUT",
        "/image?url=a.png",
        b'{"status": "approved", "unseen": 1}',
        400,
    ),
    ("note not a string", "PUT", "/image?url=a.png", b'{"status": "approved", "note": 1}', 400),
    ("actor empty", "PUT", "/image?url=a.png", b'{"status": "approved", "actor": ""}', 400),
    ("put without url", "PUT", "/image", b'{"status": "approved"}', 400),
    ("put with empty url", "PUT", "/image?url=%20", b'{"status": "approved"}', 400),
    ("url too long", "GET", "/image?url=" + "a" * 5000, None, 400),
    ("url not utf-8", "GET", "/image?url=%FF", None, 400),
    ("get without url", "GET", "/image", None, 400),
    ("delete without url", "DELETE", "/image", None, 400),
    ("purge without url", "POST", "/purge", None, 400),
    ("original without url", "GET", "/original", None, 400),
    ("limit not a number", "GET", "/images?limit=ten", None, 400),
    ("limit negative", "GET", "/images?limit=-1", None, 400),
    ("limit empty", "GET", "/images?limit=", None, 400),
    ("limit huge", "GET", "/images?limit=99999999", None, 400),
    ("unknown status", "GET", "/images?status=deleted", None, 400),
    ("oversize body", "PUT", "/image?url=a.png", b" " * (MAX_BODY + 1), 413),
]


@pytest.mark.parametrize(
    ("method", "route", "body", "expected"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_json_error_and_no_traceback(
    server: ThumborServer, method: str, route: str, body: bytes | None, expected: int
) -> None:
    logged = len(server.log)

    response = call(server, method, route, body)

    assert response.status == expected
    assert isinstance(json_of(response)["error"], str)
    assert "Traceback" not in server.log[logged:]


def test_oversize_body_is_refused_before_it_is_applied(server: ThumborServer, known: str) -> None:
    body = json.dumps({"status": "approved", "note": "x" * MAX_BODY}).encode()

    response = call(server, "PUT", f"/image?url={arg(known)}", body)

    assert response.status == 413
    assert json_of(call(server, "GET", f"/image?url={arg(known)}"))["status"] == "rejected"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"status": "approved", "note": ' + b"1" * 5000 + b"}", id="huge number"),
        pytest.param(b'{"status": ' + b"[" * 2000 + b"]" * 2000 + b"}", id="deep nesting"),
    ],
)
def test_json_the_parser_cannot_hold_is_a_400(
    fresh: tuple[ThumborServer, Path], body: bytes
) -> None:
    thumbor, _ = fresh
    assert len(body) < MAX_BODY

    response = call(thumbor, "PUT", "/image?url=a.png", body)

    assert response.status == 400
    assert "Traceback" not in thumbor.log


def test_oversize_chunked_body_is_a_413(fresh: tuple[ThumborServer, Path]) -> None:
    thumbor, _ = fresh
    connection = http.client.HTTPConnection("127.0.0.1", thumbor.port, timeout=10)

    try:
        connection.request(
            "PUT",
            f"{PREFIX}/image?url=a.png",
            body=iter([b" " * 1024] * (MAX_BODY // 1024 + 2)),
            headers={**AUTH, "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        reply = connection.getresponse()
        status: int | None = reply.status
        reply.read()
    except (http.client.RemoteDisconnected, ConnectionError):
        status = None
    finally:
        connection.close()

    assert status == 413
    assert "Traceback" not in thumbor.log


# Review band (kept last: the module servers' teardown checks run after the last test,
# and an xfail mark on that test would swallow their failure)


def test_label_in_the_review_band_holds_the_picture_for_a_human(
    server: ThumborServer, images: Path, admin_root: Path, fake: FakeRekognition
) -> None:
    fake.respond(GREEN, BORDERLINE)
    name = add_picture(images, GREEN, "borderline")
    path = f"/unsafe/90x70/{name}"

    held = server.get(path)
    listed, _ = walk(server, "pending", limit=500)
    queues = {name: queue(server, name) for name in ("pending", "rejected", "approved")}

    # MODERATION_ON_ERROR = 'allow': the picture itself, short-cached, kept out of caches.
    assert held.status == 200
    assert held.header("X-Moderation-Status") == "pending"
    assert held.header("Cache-Control") == "max-age=60,public"
    assert centre_of(held) == pytest.approx(GREEN, abs=30)
    assert not storage_file(admin_root, name).exists()
    assert not result_file(admin_root, path).exists()
    assert name in listed
    assert name in queues["pending"]
    assert name not in queues["rejected"] + queues["approved"]


def test_approving_a_held_picture_serves_and_caches_it(
    server: ThumborServer, images: Path, admin_root: Path, fake: FakeRekognition
) -> None:
    fake.respond(GREEN, BORDERLINE)
    name = add_picture(images, GREEN, "borderline")
    path = f"/unsafe/90x70/{name}"
    assert status_of(server, path) == "pending"

    put = call(server, "PUT", f"/image?url={arg(name)}", {"status": "approved", "note": "fine"})
    approved = server.get(path)

    assert put.status == 200
    assert approved.header("X-Moderation-Status") == "approved"
    assert approved.header("Cache-Control") == f"max-age={MAX_AGE},public"
    assert centre_of(approved) == pytest.approx(GREEN, abs=30)
    wait_for(result_file(admin_root, path).is_file)
    assert fake.call_count == 1


# A URL no request has fetched


def test_a_decision_for_a_url_no_request_fetched_is_refused_naming_the_nearest(
    server: ThumborServer, images: Path
) -> None:
    name = add_picture(images, BLUE, "landscape")
    assert status_of(server, f"/unsafe/64x48/{name}") == "approved"
    typo = name.replace("landscape", "landscpe")

    put = call(server, "PUT", f"/image?url={arg(typo)}", {"status": "rejected"})
    recorded = call(server, "GET", f"/image?url={arg(typo)}")

    assert put.status == 404
    answer = json_of(put)
    assert "no request has fetched this URL" in answer["error"]
    assert '"unseen": true' in answer["error"]
    assert answer["nearest"][0] == name
    assert recorded.status == 404
    assert status_of(server, f"/unsafe/64x48/{name}") == "approved"


def test_unseen_true_records_a_decision_that_binds_to_the_bytes_of_its_first_fetch(
    server: ThumborServer, images: Path
) -> None:
    name = unique("announced")

    put = call(server, "PUT", f"/image?url={arg(name)}", {"status": "rejected", "unseen": True})
    (images / name).write_bytes(picture(BLUE, size=(160, 100 + next(_sizes))))
    first_fetch = status_of(server, f"/unsafe/64x48/{name}")
    shown = json_of(call(server, "GET", f"/image?url={arg(name)}"))

    assert put.status == 200
    answer = json_of(put)
    assert answer["unseen"] is True
    assert answer["message"] == (
        "no request has fetched it yet: the decision binds to the bytes of its first fetch"
    )
    assert first_fetch == "rejected"
    assert (shown["status"], shown["source"]) == ("rejected", "manual")
    assert shown["content_hash"] == hashlib.sha256((images / name).read_bytes()).hexdigest()


def test_a_decision_for_a_fetched_url_says_it_is_not_unseen(
    server: ThumborServer, images: Path
) -> None:
    name = add_picture(images, BLUE, "seen")
    assert status_of(server, f"/unsafe/64x48/{name}") == "approved"

    put = call(server, "PUT", f"/image?url={arg(name)}", {"status": "rejected"})

    assert put.status == 200
    assert json_of(put)["unseen"] is False
    assert "message" not in json_of(put)


@pytest.mark.parametrize("status", ["pending", "deleted", "APPROVED", ""])
def test_put_refuses_a_status_naming_only_the_ones_it_accepts(
    server: ThumborServer, known: str, status: str
) -> None:
    put = call(server, "PUT", f"/image?url={arg(known)}", {"status": status})

    assert put.status == 400
    assert json_of(put)["error"] == "status must be 'approved' or 'rejected'"


# Confidences


def test_confidences_are_shown_on_the_scale_thresholds_are_written_in(
    server: ThumborServer, known: str
) -> None:
    shown = json_of(call(server, "GET", f"/image?url={arg(known)}"))
    listed = json_of(call(server, "GET", "/images?status=rejected&limit=500"))["images"]
    queued = json_of(call(server, "GET", "/images?queue=rejected&limit=100"))["images"]

    assert [label["confidence"] for label in shown["labels"]] == [0.99, 0.99]
    assert [(r["confidence"], r["threshold"]) for r in shown["reasons"]] == [(0.99, 0.5)]
    # Labels are kept from the lowest threshold less the review band: 0.5 - 0.1.
    assert shown["min_confidence"] == 0.4
    [item] = [item for item in listed if item["key"] == known]
    assert [label["confidence"] for label in item["labels"]] == [0.99, 0.99]
    [item] = [item for item in queued if item["key"] == known]
    assert [(r["confidence"], r["threshold"]) for r in item["reasons"]] == [(0.99, 0.5)]
