"""Webhooks through the real Thumbor app, to a real HTTP receiver on 127.0.0.1.

Every decision change is queued in the decision store's outbox and posted, signed, by a
thread of the Thumbor process: checked here as a receiver sees it, including while that
receiver is down or failing, and across a Thumbor restart. The outbox retries after 1 s
and doubles the wait each time (with +-20% jitter), checking for due items every second;
the waits below are sized for that.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.receivers import Received, Receiver
from tests.servers import Response, ThumborServer, aws_test_environment, base_config

pytestmark = pytest.mark.e2e

TOKEN = "notifications-admin-token-7c1e9b2d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "webhook-secret-for-tests-3a8f6d0c"
HOOK_PATH = "/moderation-events"
SYSTEM_ACTOR = "thumbor-moderation"

RED = (255, 0, 0)
BLUE = (0, 0, 255)
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]
# What the README says a webhook body tells: image URL, key, status, previous status,
# source, labels, reasons, backend, model version, content hash, timestamps, actor, note.
DOCUMENTED_FIELDS = {
    "image_url",
    "key",
    "status",
    "previous_status",
    "source",
    "labels",
    "reasons",
    "backend",
    "model_version",
    "content_hash",
    "created_at",
    "updated_at",
    "actor",
    "note",
}
# The outbox's first retry waits 1 s and each next one twice as long, +-20%; due items
# are picked up by a loop that sleeps up to 1 s between looks.
JITTER = 0.2
POLL = 1.0
# An item is claimed for 120 s while it is being delivered: a Thumbor stopped during a
# delivery would hold it that long. The restart test stops Thumbor between two attempts.
QUIET = 0.3

_names = itertools.count()
_sizes = itertools.count()


# The README's verification snippet, as a receiver would paste it.
def verify(secret: bytes, headers: Any, body: bytes, tolerance: int = 300) -> bool:
    timestamp = headers["X-Moderation-Timestamp"]
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) <= tolerance
    return fresh and hmac.compare_digest("sha256=" + expected, headers["X-Moderation-Signature"])


# Helpers shared with tests/test_cdn.py.


def add_picture(images: Path, color: tuple[int, int, int], stem: str) -> str:
    """A new picture whose size makes its bytes differ from every other picture's."""
    name = f"{stem}-{next(_names)}.png"
    (images / name).write_bytes(picture(color, size=(160, 100 + next(_sizes))))
    return name


def call(server: ThumborServer, method: str, route: str, body: Any = None) -> Response:
    """An admin API request with the token; a body is sent as JSON."""
    data = None if body is None else json.dumps(body).encode()
    return server.request(method, "/moderation" + route, body=data, headers=AUTH)


def arg(url: str) -> str:
    return quote(url, safe="")


def outbox(server: ThumborServer) -> dict[str, int]:
    """The admin stats' `outbox`: items waiting or given up, by topic and state."""
    response = call(server, "GET", "/stats")
    assert response.status == 200
    counts: dict[str, int] = json.loads(response.body)["outbox"]
    return counts


def waiting(server: ThumborServer) -> int:
    return sum(count for name, count in outbox(server).items() if name.endswith(".pending"))


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def admin_config(root: Path, images: Path, endpoint: str) -> dict[str, Any]:
    config = base_config(root, images, endpoint)
    config.update(
        {
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_QUARANTINE_PATH": str(root / "quarantine"),
            "MODERATION_OUTBOX_TIMEOUT_SECONDS": 2.0,
        }
    )
    return config


# Helpers of this module.


def webhook_config(root: Path, images: Path, endpoint: str, receiver: Receiver) -> dict[str, Any]:
    config = admin_config(root, images, endpoint)
    config["MODERATION_WEBHOOK_URL"] = receiver.url + HOOK_PATH
    config["MODERATION_WEBHOOK_SECRET"] = SECRET
    return config


def body_of(request: Received) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(request.body)
    return body


def about(*names: str) -> Callable[[Received], bool]:
    """Webhooks about these pictures (tests share a server: each has pictures of its own)."""
    return lambda request: request.path == HOOK_PATH and body_of(request)["key"] in names


def changes(requests: list[Received]) -> list[tuple[str, str | None, str | None, str | None]]:
    """(key, previous status, status, source) of each webhook, in arrival order."""
    return [
        (body["key"], body["previous_status"], body["status"], body["source"])
        for body in map(body_of, requests)
    ]


def attempts_logged(server: ThumborServer, name: str) -> int:
    """How many failed deliveries of webhooks about this picture Thumbor has logged."""
    return sum(
        1 for line in server.log.splitlines() if f"webhook for {name} failed (attempt" in line
    )


def between_attempts(database: Path) -> bool:
    """Whether no outbox item is being delivered, nor due within QUIET seconds."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        (soonest,) = connection.execute(
            "SELECT MIN(next_at) FROM outbox WHERE state = 'pending' AND attempts > 0"
        ).fetchone()
        (leased,) = connection.execute(
            "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND next_at > ?",
            (time.time() + 60,),
        ).fetchone()
    connection.close()
    return soonest is not None and soonest > time.time() + QUIET and leased == 0


def first_status(server: ThumborServer, name: str) -> str | None:
    """The moderation status of a request for the picture at one size."""
    return server.get(f"/unsafe/64x48/{name}").header("X-Moderation-Status")


def decide(server: ThumborServer, name: str, status: str) -> int:
    """A manual decision through the admin API; the HTTP status."""
    return call(server, "PUT", f"/image?url={arg(name)}", {"status": status}).status


def timed_get(server: ThumborServer, path: str) -> tuple[Response, float]:
    started = time.monotonic()
    response = server.get(path)
    return response, time.monotonic() - started


@pytest.fixture(scope="module")
def module_receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def server(
    module_root: Path, images: Path, module_fake: FakeRekognition, module_receiver: Receiver
) -> Iterator[ThumborServer]:
    root = module_root / "notifications"
    thumbor = ThumborServer(
        root, webhook_config(root, images, module_fake.url, module_receiver)
    ).start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log
    assert SECRET not in thumbor.log


@pytest.fixture
def receiver(module_receiver: Receiver, server: ThumborServer) -> Receiver:
    """The module's receiver, up and answering 200, once what earlier tests queued is out."""
    if not module_receiver.up:
        module_receiver.start()
    module_receiver.answer_ok()
    module_receiver.delay(0)
    wait_for(lambda: waiting(server) == 0, timeout=20)
    module_receiver.clear()
    return module_receiver


Own = Callable[..., tuple[ThumborServer, Receiver, Path]]


@pytest.fixture
def own(tmp_path: Path, fake: FakeRekognition) -> Iterator[Own]:
    """Servers of the test's own, each with its receiver (down at first) and originals."""
    built: list[tuple[ThumborServer, Receiver]] = []

    def build(processes: int = 1, **settings: Any) -> tuple[ThumborServer, Receiver, Path]:
        root = tmp_path / f"own-{len(built)}"
        images = root / "images"
        images.mkdir(parents=True)
        receiver = Receiver().start()
        receiver.stop()
        config = webhook_config(root, images, fake.url, receiver)
        config.update(settings)
        thumbor = ThumborServer(root, config, processes=processes)
        built.append((thumbor, receiver))
        return thumbor.start(), receiver, images

    yield build
    for thumbor, receiver in built:
        thumbor.stop()
        receiver.stop()
        assert "Traceback" not in thumbor.log


# One webhook per decision change


def test_a_decision_sends_one_webhook_signed_as_the_readme_verifies_it(
    server: ThumborServer, receiver: Receiver, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY, model_version="6.1")
    name = add_picture(images, RED, "decided")

    statuses = [
        server.get(f"/unsafe/{size}/{name}").header("X-Moderation-Status")
        for size in ("64x48", "32x24", "100x75")
    ]
    [hook] = receiver.wait_for(1, about(name))
    time.sleep(0.5)

    assert statuses == ["rejected"] * 3
    assert len(receiver.matching(about(name))) == 1
    assert hook.method == "POST"
    assert hook.headers["Content-Type"] == "application/json"
    assert hook.headers["X-Moderation-Event"] == "decision.changed"
    assert hook.headers["X-Moderation-Delivery"]
    assert verify(SECRET.encode(), hook.headers, hook.body)
    assert not verify(b"another-secret-of-32-characters", hook.headers, hook.body)
    assert not verify(SECRET.encode(), hook.headers, hook.body.replace(b"rejected", b"approved"))


def test_a_webhook_body_tells_what_the_readme_lists(
    server: ThumborServer, receiver: Receiver, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY, model_version="6.1")
    name = add_picture(images, RED, "fields")
    original = (images / name).read_bytes()
    before = time.time()

    assert first_status(server, name) == "rejected"
    [hook] = receiver.wait_for(1, about(name))
    body = body_of(hook)

    assert set(body) >= DOCUMENTED_FIELDS
    assert (body["image_url"], body["key"]) == (name, name)
    assert (body["previous_status"], body["status"], body["source"]) == (None, "rejected", "auto")
    assert {(label["name"], label["parent"]) for label in body["labels"]} == {
        ("Explicit Nudity", ""),
        ("Nudity", "Explicit Nudity"),
    }
    assert [reason["name"] for reason in body["reasons"]] == ["Nudity"]
    # On the scale of the thresholds in thumbor.conf, as everywhere a user reads them.
    assert [label["confidence"] for label in body["labels"]] == [0.99, 0.99]
    assert [(r["confidence"], r["threshold"]) for r in body["reasons"]] == [(0.99, 0.5)]
    assert (body["backend"], body["model_version"]) == ("rekognition", "6.1")
    assert body["content_hash"] == hashlib.sha256(original).hexdigest()
    assert before - 1 <= body["created_at"] <= body["updated_at"] <= time.time()
    assert body["actor"] == SYSTEM_ACTOR
    assert "Nudity" in body["note"]


def test_an_override_and_a_forget_each_send_one_more_webhook_in_order(
    server: ThumborServer, receiver: Receiver, images: Path, fake: FakeRekognition
) -> None:
    name = add_picture(images, BLUE, "overridden")
    assert first_status(server, name) == "approved"
    receiver.wait_for(1, about(name))

    override = {"status": "rejected", "note": "spam", "actor": "alice"}
    put = call(server, "PUT", f"/image?url={arg(name)}", override)
    deleted = call(server, "DELETE", f"/image?url={arg(name)}")
    hooks = receiver.wait_for(3, about(name))
    time.sleep(0.5)

    assert (put.status, deleted.status) == (200, 204)
    assert len(receiver.matching(about(name))) == 3
    assert changes(hooks) == [
        (name, None, "approved", "auto"),
        (name, "approved", "rejected", "manual"),
        (name, "rejected", None, None),
    ]
    bodies = [body_of(hook) for hook in hooks]
    assert [(body["actor"], body["note"]) for body in bodies[1:]] == [
        ("alice", "spam"),
        ("admin-api", "decision forgotten"),
    ]
    assert [body["event"] for body in bodies] == [
        "decision.changed",
        "decision.changed",
        "decision.forgotten",
    ]
    assert len({hook.headers["X-Moderation-Delivery"] for hook in hooks}) == 3
    assert all(verify(SECRET.encode(), hook.headers, hook.body) for hook in hooks)


def test_an_override_from_the_command_line_is_delivered_once_and_leaves_nothing_waiting(
    own: Own,
) -> None:
    server, receiver, images = own()
    receiver.start()
    name = add_picture(images, BLUE, "cli")
    assert first_status(server, name) == "approved"
    receiver.wait_for(1, about(name))
    # As a receiver across the Internet: an answer takes a moment.
    receiver.delay(1.0)
    command = [str(Path(sys.executable).with_name("thumbor-moderation")), "--conf"]
    command += [str(server.conf_path), "reject", name, "--note", "from the shell"]

    rejected = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, env=aws_test_environment()
    )
    hooks = receiver.wait_for(2, about(name))

    assert rejected.returncode == 0, rejected.stderr
    assert changes(hooks) == [
        (name, None, "approved", "auto"),
        (name, "approved", "rejected", "manual"),
    ]
    wait_for(lambda: waiting(server) == 0, timeout=5)
    assert len(receiver.matching(about(name))) == 2


# Delivery when the receiver is down or failing


def test_webhooks_wait_in_the_outbox_while_the_receiver_is_down_and_all_arrive_in_order(
    server: ThumborServer, receiver: Receiver, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    first, second = add_picture(images, BLUE, "down"), add_picture(images, RED, "down")
    receiver.stop()
    assert first_status(server, first) == "approved"
    assert first_status(server, second) == "rejected"
    for name, status in ((first, "rejected"), (second, "approved"), (first, "approved")):
        assert decide(server, name, status) == 200
    # Down long enough for a retry to fail too.
    wait_for(lambda: attempts_logged(server, first) >= 2, timeout=10)
    queued = outbox(server)

    receiver.start()
    hooks = receiver.wait_for(5, about(first, second), timeout=15)
    wait_for(lambda: waiting(server) == 0)

    assert queued == {"webhook.pending": 5}
    assert receiver.requests == hooks
    assert [change for change in changes(hooks) if change[0] == first] == [
        (first, None, "approved", "auto"),
        (first, "approved", "rejected", "manual"),
        (first, "rejected", "approved", "manual"),
    ]
    assert [change for change in changes(hooks) if change[0] == second] == [
        (second, None, "rejected", "auto"),
        (second, "rejected", "approved", "manual"),
    ]
    assert all(verify(SECRET.encode(), hook.headers, hook.body) for hook in hooks)
    assert outbox(server) == {}


def test_queued_webhooks_survive_a_thumbor_restart_and_arrive_in_order(
    own: Own, fake: FakeRekognition
) -> None:
    server, receiver, images = own()
    fake.respond(RED, NUDITY)
    first, second = add_picture(images, BLUE, "restart"), add_picture(images, RED, "restart")
    assert first_status(server, first) == "approved"
    assert first_status(server, second) == "rejected"
    assert decide(server, first, "rejected") == 200
    assert call(server, "DELETE", f"/image?url={arg(second)}").status == 204
    wait_for(lambda: attempts_logged(server, first) >= 1 and attempts_logged(server, second) >= 1)
    queued_before = outbox(server)
    wait_for(lambda: between_attempts(server.root / "decisions.sqlite3"))

    server.stop()
    server.start()
    queued_after = outbox(server)
    receiver.start()
    hooks = receiver.wait_for(4, timeout=15)
    wait_for(lambda: waiting(server) == 0)

    assert queued_before == queued_after == {"webhook.pending": 4}
    assert [change for change in changes(hooks) if change[0] == first] == [
        (first, None, "approved", "auto"),
        (first, "approved", "rejected", "manual"),
    ]
    assert [change for change in changes(hooks) if change[0] == second] == [
        (second, None, "rejected", "auto"),
        (second, "rejected", None, None),
    ]
    assert len(receiver.requests) == 4
    assert all(verify(SECRET.encode(), hook.headers, hook.body) for hook in hooks)


def test_a_thumbor_killed_while_delivering_a_full_outbox_loses_no_webhook(
    own: Own, fake: FakeRekognition
) -> None:
    server, receiver, images = own()
    receiver.start()
    receiver.delay(1.5)
    names = [add_picture(images, BLUE, "killed") for _ in range(12)]
    for name in names:
        assert first_status(server, name) == "approved"
    # Some are being delivered (claimed, the receiver answering slowly), the rest wait.
    receiver.wait_for(1)
    queued = waiting(server)

    server.kill()
    receiver.delay(0)
    server.start()
    hooks = receiver.wait_for(len(names), about(*names), timeout=60)
    wait_for(lambda: waiting(server) == 0, timeout=60)

    assert queued >= 1
    assert {change for change in changes(receiver.matching(about(*names)))} == {
        (name, None, "approved", "auto") for name in names
    }
    assert len(hooks) >= len(names)


def test_a_receiver_answering_500_gets_retries_at_doubling_intervals_until_it_accepts(
    server: ThumborServer, receiver: Receiver, images: Path
) -> None:
    name = add_picture(images, BLUE, "retried")
    receiver.fail(500, times=3)

    assert first_status(server, name) == "approved"
    attempts = receiver.wait_for(4, about(name), timeout=20)
    wait_for(lambda: waiting(server) == 0)

    assert [attempt.status for attempt in attempts] == [500, 500, 500, 200]
    assert len({attempt.headers["X-Moderation-Delivery"] for attempt in attempts}) == 1
    assert len({attempt.body for attempt in attempts}) == 1
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]
    for index, gap in enumerate(gaps):
        backoff = 2.0**index
        assert backoff * (1 - JITTER) - 0.05 <= gap <= backoff * (1 + JITTER) + POLL + 0.3, gaps
    assert gaps[0] < gaps[2], gaps
    assert verify(SECRET.encode(), attempts[-1].headers, attempts[-1].body)
    assert len(receiver.matching(about(name))) == 4


def test_a_webhook_failing_past_the_give_up_time_is_counted_and_unblocks_its_picture(
    own: Own,
) -> None:
    server, receiver, images = own(MODERATION_OUTBOX_GIVE_UP_SECONDS=1)
    name = add_picture(images, BLUE, "given-up")
    assert first_status(server, name) == "approved"
    wait_for(lambda: outbox(server) == {"webhook.abandoned": 1})

    receiver.start()
    assert decide(server, name, "rejected") == 200
    hooks = receiver.wait_for(1, about(name))
    wait_for(lambda: waiting(server) == 0)
    time.sleep(0.5)

    assert changes(hooks) == [(name, "approved", "rejected", "manual")]
    assert receiver.requests == hooks
    assert outbox(server) == {"webhook.abandoned": 1}


def test_with_two_thumbor_processes_each_change_is_delivered_once_and_in_order(
    own: Own,
) -> None:
    server, receiver, images = own(processes=2)
    receiver.start()
    names = [add_picture(images, BLUE, "processes") for _ in range(8)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(functools.partial(first_status, server), names))
        answers = [
            set(pool.map(functools.partial(decide, server, status=status), names))
            for status in ("rejected", "approved")
        ]
    hooks = receiver.wait_for(3 * len(names), timeout=15)
    wait_for(lambda: waiting(server) == 0)
    time.sleep(0.5)

    assert statuses == ["approved"] * len(names)
    assert answers == [{200}, {200}]
    assert len(receiver.requests) == 3 * len(names)
    assert len({hook.headers["X-Moderation-Delivery"] for hook in hooks}) == 3 * len(names)
    for name in names:
        assert [change for change in changes(hooks) if change[0] == name] == [
            (name, None, "approved", "auto"),
            (name, "approved", "rejected", "manual"),
            (name, "rejected", "approved", "manual"),
        ]


@pytest.mark.timing
@pytest.mark.parametrize("trouble", ["down", "hanging"])
def test_image_responses_do_not_wait_for_a_receiver_that_is_down_or_hanging(
    server: ThumborServer, receiver: Receiver, images: Path, trouble: str
) -> None:
    backlog = [add_picture(images, BLUE, f"backlog-{trouble}") for _ in range(5)]
    name = add_picture(images, BLUE, f"quick-{trouble}")
    if trouble == "down":
        receiver.stop()
    else:
        # Longer than the outbox's timeout (2 s): every delivery blocks until it gives up.
        receiver.delay(30)
    for queued in backlog:
        assert server.get(f"/unsafe/50x50/{queued}").status == 200

    first, first_time = timed_get(server, f"/unsafe/64x48/{name}")
    hits = [timed_get(server, f"/unsafe/64x48/{name}") for _ in range(10)]

    assert first.header("X-Moderation-Status") == "approved"
    assert first_time < 1.0
    assert [hit.status for hit, _ in hits] == [200] * 10
    assert max(elapsed for _, elapsed in hits) < 0.5
    assert waiting(server) >= 6
