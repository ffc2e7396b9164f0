"""POST /moderation/check through the real Thumbor app over HTTP, with the fake Rekognition.

A site's upload backend checks a picture before saving it: by its bytes, or by the URL
Thumbor will be asked for. What matters is checked where it matters: the answer, what
the first view afterwards serves, and what the backend is asked (the fake's counter).
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.receivers import Received, Receiver
from tests.servers import Response, ThumborServer, base_config

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "check-admin-token-for-tests-81d3f0"
CHECK_TOKEN = "check-only-token-for-tests-4be2a7"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHECKER = {"Authorization": f"Bearer {CHECK_TOKEN}"}
PNG = {"Content-Type": "image/png"}
PREFIX = "/moderation"
MAX_BODY = 8192
HOOK_PATH = "/moderation-events"

RED = (255, 0, 0)
BLUE = (0, 0, 255)
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]

_names = itertools.count()
_sizes = itertools.count()


def add_picture(images: Path, color: tuple[int, int, int], stem: str) -> tuple[str, bytes]:
    """A new picture at the origin, with bytes of its own; its name and bytes."""
    name = f"{stem}-{next(_names)}.png"
    data = picture(color, size=(160, 100 + next(_sizes)))
    (images / name).write_bytes(data)
    return name, data


def check_config(root: Path, images: Path, endpoint: str, **extra: Any) -> dict[str, Any]:
    config = base_config(root, images, endpoint)
    config.update(
        {
            "MODERATION_ADMIN_TOKEN": ADMIN_TOKEN,
            "MODERATION_CHECK_TOKEN": CHECK_TOKEN,
            "MODERATION_CHECK_MAX_BODY_BYTES": MAX_BODY,
            **extra,
        }
    )
    return config


def check(
    server: ThumborServer,
    url: str | None,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    auth: Mapping[str, str] = CHECKER,
) -> Response:
    """A check, with the check token unless auth says otherwise."""
    route = f"{PREFIX}/check" + ("" if url is None else f"?url={quote(url, safe='')}")
    return server.request("POST", route, body=body, headers={**auth, **(headers or {})})


def json_of(response: Response) -> Any:
    assert (response.header("Content-Type") or "").startswith("application/json")
    return json.loads(response.body)


def first_view(server: ThumborServer, name: str) -> Response:
    return server.get(f"/unsafe/64x48/{name}")


@pytest.fixture(scope="module")
def module_receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def server(
    module_root: Path, images: Path, module_fake: FakeRekognition, module_receiver: Receiver
) -> Iterator[ThumborServer]:
    root = module_root / "check"
    config = check_config(
        root, images, module_fake.url, MODERATION_WEBHOOK_URL=module_receiver.url + HOOK_PATH
    )
    thumbor = ThumborServer(root, config, log_level="debug").start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log
    assert CHECK_TOKEN not in thumbor.log
    assert ADMIN_TOKEN not in thumbor.log


# Checked before the first view


@pytest.mark.parametrize("by", ["bytes", "url"])
@pytest.mark.parametrize(
    ("color", "labels", "status"), [(RED, NUDITY, "rejected"), (BLUE, [], "approved")]
)
def test_a_checked_picture_is_judged_once_and_its_first_view_makes_no_backend_call(
    server: ThumborServer,
    images: Path,
    fake: FakeRekognition,
    by: str,
    color: tuple[int, int, int],
    labels: list[dict[str, Any]],
    status: str,
) -> None:
    fake.respond(color, labels)
    name, data = add_picture(images, color, f"checked-{status}-by-{by}")

    answer = check(server, name, data if by == "bytes" else None, PNG if by == "bytes" else {})
    calls_after_check = fake.call_count
    view = first_view(server, name)

    assert answer.status == 200, answer.body
    decision = json_of(answer)
    assert (decision["status"], decision["url"]) == (status, name)
    assert decision["content_hash"] == hashlib.sha256(data).hexdigest()
    assert calls_after_check == 1
    assert view.header("X-Moderation-Status") == status
    assert view.status == 200
    assert fake.call_count == 1


def test_the_answer_is_the_decision_the_image_route_shows(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    name, data = add_picture(images, RED, "same-view")

    answer = json_of(check(server, name, data, PNG))
    shown = json_of(server.get(f"{PREFIX}/image?url={quote(name, safe='')}", headers=ADMIN))

    shown.pop("history")
    assert answer == shown
    assert [reason["name"] for reason in answer["reasons"]] == ["Nudity"]


def test_checking_a_picture_again_costs_no_backend_call(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    name, data = add_picture(images, RED, "twice")

    first = check(server, name, data, PNG)
    again = check(server, name, data, PNG)
    elsewhere = check(server, "copies/" + name, data, PNG)

    assert [json_of(r)["status"] for r in (first, again, elsewhere)] == ["rejected"] * 3
    assert fake.call_count == 1


def test_the_admin_token_checks_too(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    name, data = add_picture(images, BLUE, "by-admin")

    answer = check(server, name, data, PNG, auth=ADMIN)

    assert answer.status == 200
    assert json_of(answer)["status"] == "approved"


# Bad requests: a clear error, a defined status, nothing stored, no backend call


@pytest.mark.parametrize(
    ("url", "body", "headers", "status", "says"),
    [
        ("empty.png", b"", PNG, 400, "request body is empty"),
        ("text.png", b"this is not a picture " * 20, PNG, 400, "not a picture"),
        ("truncated.png", picture(BLUE)[:60], PNG, 400, "not a picture"),
        ("huge.png", b"\x89PNG" + b"\0" * MAX_BODY, PNG, 413, "too large"),
        (None, picture(BLUE), PNG, 400, "'url' is required"),
        ("", picture(BLUE), PNG, 400, "'url' is required"),
        ("x" * 5000, picture(BLUE), PNG, 400, "too long"),
        ("nowhere/missing.png", None, {}, 404, "not found"),
        ("../../etc/passwd", None, {}, 404, "not found"),
    ],
)
def test_a_bad_check_is_answered_with_a_reason_and_judges_nothing(
    server: ThumborServer,
    fake: FakeRekognition,
    url: str | None,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    says: str,
) -> None:
    answer = check(server, url, body, headers)

    assert answer.status == status
    assert says in json_of(answer)["error"]
    assert fake.call_count == 0
    if url and len(url) < 4096:
        assert server.get(f"{PREFIX}/image?url={quote(url, safe='')}", headers=ADMIN).status == 404


def test_a_body_too_large_sent_in_chunks_is_a_413(server: ThumborServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"\0" * (MAX_BODY // 2)

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(
            "POST",
            f"{PREFIX}/check?url=chunked.png",
            body=chunks(),
            headers={**CHECKER, **PNG},
            encode_chunked=True,
        )
        reply = connection.getresponse()
        status, body = reply.status, reply.read()
    finally:
        connection.close()

    assert status == 413
    assert b"too large" in body


# The check token checks, and nothing else


@pytest.mark.parametrize(
    ("method", "route", "body"),
    [
        ("PUT", "/image?url=a.png", b'{"status": "approved", "unseen": true}'),
        ("PUT", "/image?url=a.png", b'{"status": "rejected", "unseen": true}'),
        ("DELETE", "/image?url=a.png", None),
        ("POST", "/purge?url=a.png", None),
        ("GET", "/image?url=a.png", None),
        ("GET", "/images", None),
        ("GET", "/original?url=a.png", None),
        ("GET", "/stats", None),
        ("POST", "/images", b'{"urls": ["a.png"], "status": "approved"}'),
        ("POST", "/images", b'{"urls": ["a.png"], "status": "rejected"}'),
    ],
)
def test_the_check_token_is_refused_by_every_other_admin_route(
    server: ThumborServer, method: str, route: str, body: bytes | None
) -> None:
    answer = server.request(method, PREFIX + route, body=body, headers=CHECKER)

    assert answer.status == 401
    assert server.get(f"{PREFIX}/image?url=a.png", headers=ADMIN).status == 404


def test_a_check_without_a_token_or_with_a_wrong_one_is_a_401(server: ThumborServer) -> None:
    data = picture(BLUE)

    answers = [
        check(server, "a.png", data, PNG, auth={}),
        check(server, "a.png", data, PNG, auth={"Authorization": "Bearer not-the-token-at-all"}),
        check(server, "a.png", data, PNG, auth={"Authorization": f"Basic {CHECK_TOKEN}"}),
    ]

    assert [answer.status for answer in answers] == [401, 401, 401]


def test_with_only_the_check_token_set_the_check_works_and_the_admin_api_is_off(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    config = check_config(tmp_path, images, fake.url)
    del config["MODERATION_ADMIN_TOKEN"]
    thumbor = ThumborServer(tmp_path, config).start()
    try:
        name, data = add_picture(images, BLUE, "check-only")
        answer = check(thumbor, name, data, PNG)
        stats = thumbor.get(f"{PREFIX}/stats", headers=CHECKER)
    finally:
        thumbor.stop()

    assert answer.status == 200
    assert json_of(answer)["status"] == "approved"
    assert stats.status == 404
    assert "MODERATION_ADMIN_TOKEN" in json_of(stats)["error"]


# The call rate


def test_a_check_with_no_turn_of_the_call_rate_is_a_429_and_stores_nothing(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    # One call every 100 s: the first check takes the turn, the next has none in its budget.
    config = check_config(tmp_path, images, fake.url, REKOGNITION_MAX_CALLS_PER_SECOND=0.01)
    thumbor = ThumborServer(tmp_path, config).start()
    try:
        first_name, first = add_picture(images, BLUE, "rate-first")
        second_name, second = add_picture(images, BLUE, "rate-second")
        answers = [check(thumbor, first_name, first, PNG), check(thumbor, second_name, second, PNG)]
        shown = thumbor.get(f"{PREFIX}/image?url={second_name}", headers=ADMIN)
    finally:
        thumbor.stop()

    assert [answer.status for answer in answers] == [200, 429]
    limited = json_of(answers[1])
    assert limited["status"] == "pending"
    assert "REKOGNITION_MAX_CALLS_PER_SECOND" in limited["error"]
    assert answers[1].header("Retry-After")
    assert shown.status == 404
    assert fake.call_count == 1


def test_a_judgement_longer_than_the_budget_is_a_503_then_stored_for_the_next_check(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    config = check_config(tmp_path, images, fake.url, MODERATION_TIMEOUT_SECONDS=0.5)
    thumbor = ThumborServer(tmp_path, config).start()
    fake.respond(RED, NUDITY)
    fake.fail("slow", times=1, delay=2.0)
    try:
        name, data = add_picture(images, RED, "slow")
        late = check(thumbor, name, data, PNG)
        deadline = time.monotonic() + 20
        again = check(thumbor, name, data, PNG)
        while again.status != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            again = check(thumbor, name, data, PNG)
    finally:
        thumbor.stop()

    assert late.status == 503
    assert json_of(late)["status"] == "pending"
    assert "timeout" in json_of(late)["error"]
    assert late.header("Retry-After")
    assert again.status == 200
    assert json_of(again)["status"] == "rejected"
    assert fake.call_count == 1
    assert "Traceback" not in thumbor.log


def test_a_backend_failure_is_a_503_and_the_next_check_judges_again(
    server: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.fail("internal", times=1)
    name, data = add_picture(images, BLUE, "backend-down")

    failed = check(server, name, data, PNG)
    shown = server.get(f"{PREFIX}/image?url={quote(name, safe='')}", headers=ADMIN)
    retried = check(server, name, data, PNG)

    assert failed.status == 503
    assert json_of(failed)["status"] == "pending"
    # Kept as a first view keeps it: pending, to be retried.
    assert json_of(shown)["status"] == "pending"
    assert retried.status == 200
    assert json_of(retried)["status"] == "approved"


# Webhooks


def _about(name: str) -> Any:
    return lambda request: request.path == HOOK_PATH and json.loads(request.body)["key"] == name


def test_a_check_sends_the_webhook_a_first_view_sends(
    server: ThumborServer, images: Path, fake: FakeRekognition, module_receiver: Receiver
) -> None:
    fake.respond(RED, NUDITY)
    checked, data = add_picture(images, RED, "hook-checked")
    viewed, _ = add_picture(images, RED, "hook-viewed")

    assert json_of(check(server, checked, data, PNG))["status"] == "rejected"
    assert first_view(server, viewed).header("X-Moderation-Status") == "rejected"
    [by_check] = module_receiver.wait_for(1, _about(checked))
    [by_view] = module_receiver.wait_for(1, _about(viewed))
    # Viewed after its check: a cached hit, which changes nothing and tells nobody.
    first_view(server, checked)
    time.sleep(1.0)

    def shape(hook: Received) -> dict[str, Any]:
        body = json.loads(hook.body)
        return {
            field: body[field]
            for field in ("event", "status", "previous_status", "source", "actor", "reasons")
        } | {"fields": sorted(body)}

    assert shape(by_check) == shape(by_view)
    assert json.loads(by_check.body)["content_hash"] == hashlib.sha256(data).hexdigest()
    assert len(module_receiver.matching(_about(checked))) == 1
