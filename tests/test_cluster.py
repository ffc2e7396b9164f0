"""A cluster: two Thumbor nodes sharing one Redis, one Rekognition endpoint and one S3 bucket.

Each node has its own STORAGE and RESULT_STORAGE, as two machines would; they share the
folder of originals (the origin), a real redis-server (AOF on, so it survives a kill), a
fake Rekognition endpoint and an S3 quarantine on moto's server. Decisions stay in each
node's memory for 30 s here: only Redis's change notifications can explain a node
enforcing, within a second, an override made on the other.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image

from tests import pictures
from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.moto_server import aws_client, moto_server
from tests.redis_server import RedisServer
from tests.servers import Response, ThumborServer, base_config, storage_file
from thumbor_rekognition.stores.redis import Store as RedisStore
from thumbor_rekognition.urls import normalise

pytestmark = pytest.mark.e2e

TOKEN = "cluster-admin-token-6b1e0d7f93"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BUCKET = "moderation-quarantine"
QUARANTINE_PREFIX = "quarantine/"
BACKEND_DELAY = 0.5
BURST = 100
# A few seconds at most for any request while Redis is down (the store timeout is 0.5 s).
OUTAGE_REQUEST_LIMIT = 3.0
# Enough pictures that a race lost now and then still shows.
SELF_JUDGED = 30

RED = (255, 0, 0)
BLUE = (0, 0, 255)
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]

_names = itertools.count()
_sizes = itertools.count()


@dataclass
class Cluster:
    a: ThumborServer
    b: ThumborServer
    images: Path
    redis: RedisServer
    s3: Any

    @property
    def nodes(self) -> tuple[ThumborServer, ThumborServer]:
        return self.a, self.b


def add_picture(images: Path, color: tuple[int, int, int], stem: str) -> str:
    """A new picture whose size makes its bytes differ from every other picture's."""
    name = f"{stem}-{next(_names)}.png"
    (images / name).write_bytes(picture(color, size=(160, 100 + next(_sizes))))
    return name


def status_of(response: Response) -> str | None:
    return response.header("X-Moderation-Status")


def size_of(response: Response) -> tuple[int, int]:
    with Image.open(io.BytesIO(response.body)) as image:
        return image.size


def centre_of(response: Response) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(response.body)) as image:
        rgb = image.convert("RGB")
        pixel = rgb.getpixel((rgb.width // 2, rgb.height // 2))
    assert isinstance(pixel, tuple)
    red, green, blue = pixel[:3]
    return int(red), int(green), int(blue)


def override(node: ThumborServer, name: str, status: str) -> Response:
    body = json.dumps({"status": status, "note": "cluster test", "actor": "tests"}).encode()
    return node.request(
        "PUT", f"/moderation/image?url={quote(name, safe='')}", body=body, headers=AUTH
    )


def serves(node: ThumborServer, path: str, status: str) -> Callable[[], bool]:
    """Whether the node answers this path with this moderation status, asked anew each time."""
    return lambda: status_of(node.get(path)) == status


def timed_get(node: ThumborServer, path: str) -> tuple[Response, float]:
    started = time.monotonic()
    response = node.get(path)
    return response, time.monotonic() - started


def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until the condition held, polling every few milliseconds."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.005)
    return time.monotonic() - started


def node_config(
    root: Path, images: Path, endpoint: str, redis_url: str, s3_endpoint: str
) -> dict[str, Any]:
    config = base_config(root, images, endpoint)
    config.update(
        {
            "MODERATION_DECISION_STORE": "thumbor_rekognition.stores.redis",
            "MODERATION_REDIS_URL": redis_url,
            "MODERATION_CACHE_TTL_SECONDS": 30.0,
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_QUARANTINE": "thumbor_rekognition.quarantine.s3",
            "MODERATION_QUARANTINE_S3_BUCKET": BUCKET,
            "MODERATION_QUARANTINE_S3_PREFIX": QUARANTINE_PREFIX,
            "MODERATION_QUARANTINE_S3_REGION": "us-east-1",
            "MODERATION_QUARANTINE_S3_ENDPOINT_URL": s3_endpoint,
        }
    )
    del config["MODERATION_SQLITE_PATH"]
    return config


@pytest.fixture(scope="module")
def cluster_redis(module_root: Path) -> Iterator[RedisServer]:
    # A server of this module's own: a test kills it.
    with RedisServer(module_root / "redis") as server:
        yield server


@pytest.fixture(scope="module")
def s3(module_root: Path) -> Iterator[tuple[str, Any]]:
    with moto_server() as endpoint:
        client = aws_client("s3", endpoint)
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client


@pytest.fixture(scope="module")
def cluster(
    module_root: Path,
    module_fake: FakeRekognition,
    cluster_redis: RedisServer,
    s3: tuple[str, Any],
) -> Iterator[Cluster]:
    endpoint, client = s3
    images = module_root / "origin"
    images.mkdir()
    # Debug level: the metrics show which node waited for the other's decision.
    a, b = (
        ThumborServer(
            module_root / name,
            node_config(module_root / name, images, module_fake.url, cluster_redis.url, endpoint),
            log_level="debug",
        )
        for name in ("a", "b")
    )
    a.start(wait=False)
    b.start()
    a.wait_ready()
    yield Cluster(a, b, images, cluster_redis, client)
    a.stop()
    b.stop()
    for node in (a, b):
        assert "Traceback" not in node.log


# One backend call per picture, however many requests and processes ask for it.


def test_a_burst_of_first_requests_over_two_nodes_makes_one_backend_call(
    cluster: Cluster, fake: FakeRekognition
) -> None:
    fake.fail("slow", delay=BACKEND_DELAY)
    bursts: list[list[Response]] = []
    waited = [False, False]
    # One node can answer its whole half of a burst before the other's requests arrive (a
    # loaded machine): then nothing crossed nodes, so a new picture is tried, a few times
    # at most.
    while len(bursts) < 4 and not any(waited):
        name = add_picture(cluster.images, BLUE, "burst")
        requests = [
            (cluster.nodes[index % 2], f"/unsafe/{40 + index}x{30 + index}/{name}")
            for index in range(BURST)
        ]
        logged = [len(node.log) for node in cluster.nodes]
        with ThreadPoolExecutor(max_workers=BURST) as pool:
            bursts.append(list(pool.map(lambda request: request[0].get(request[1]), requests)))
        waited = [
            "moderation.single_flight.waited" in node.log[start:]
            for node, start in zip(cluster.nodes, logged, strict=True)
        ]

    assert fake.call_count == len(bursts)
    # One node judged; the other waited on the lease in Redis for its decision.
    assert sorted(waited) == [False, True]
    for responses in bursts:
        assert [response.status for response in responses] == [200] * BURST
        assert [status_of(response) for response in responses] == ["approved"] * BURST
        assert [size_of(response) for response in responses] == [
            (40 + index, 30 + index) for index in range(BURST)
        ]


def test_a_burst_of_first_requests_over_two_processes_on_sqlite_makes_one_backend_call(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    fake.fail("slow", delay=BACKEND_DELAY)
    images = tmp_path / "images"
    images.mkdir()
    # Debug level: the metrics show whether a process waited for the other's decision.
    thumbor = ThumborServer(
        tmp_path, base_config(tmp_path, images, fake.url), processes=2, log_level="debug"
    ).start()
    bursts = []
    try:
        # One process can accept a whole burst before the other wakes (a loaded machine):
        # then nothing crossed processes, so a new picture is tried, a few times at most.
        while len(bursts) < 4 and "moderation.single_flight.waited" not in thumbor.log:
            name = add_picture(images, BLUE, "burst")
            paths = [f"/unsafe/{40 + index}x{30 + index}/{name}" for index in range(BURST)]
            with ThreadPoolExecutor(max_workers=BURST) as pool:
                bursts.append(list(pool.map(thumbor.get, paths)))
    finally:
        thumbor.stop()

    assert fake.call_count == len(bursts)
    for responses in bursts:
        assert [status_of(response) for response in responses] == ["approved"] * BURST
    assert "moderation.single_flight.waited" in thumbor.log
    assert "Traceback" not in thumbor.log


@pytest.mark.timing
def test_an_override_in_one_process_is_enforced_by_the_other_on_sqlite_within_a_second(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "shared.png").write_bytes(picture(BLUE))
    config = base_config(tmp_path, tmp_path / "images", fake.url)
    config.update({"MODERATION_ADMIN_TOKEN": TOKEN, "MODERATION_CACHE_TTL_SECONDS": 30.0})
    thumbor = ThumborServer(tmp_path, config, processes=2).start()
    path = "/unsafe/64x64/shared.png"
    try:
        # Enough concurrent requests that both processes hold the decision in memory.
        with ThreadPoolExecutor(max_workers=16) as pool:
            before = set(pool.map(lambda _: status_of(thumbor.get(path)), range(64)))
        answered = override(thumbor, "shared.png", "rejected")
        started = time.monotonic()
        streak = 0
        while streak < 40:
            streak = streak + 1 if status_of(thumbor.get(path)) == "rejected" else 0
            assert time.monotonic() - started < 5.0, "override not enforced everywhere"
        enforced_after = time.monotonic() - started
    finally:
        thumbor.stop()

    assert before == {"approved"}
    assert answered.status == 200
    assert enforced_after < 1.0
    assert "Traceback" not in thumbor.log


# Overrides made on one node, enforced by the other.


@pytest.mark.timing
def test_an_override_on_one_node_is_enforced_by_the_other_within_a_second(
    cluster: Cluster, fake: FakeRekognition
) -> None:
    name = add_picture(cluster.images, BLUE, "override")
    path = f"/unsafe/80x60/{name}"
    assert status_of(cluster.a.get(path)) == "approved"
    # B now holds "approved" in memory for 30 s, and the result in its result storage.
    assert status_of(cluster.b.get(path)) == "approved"
    assert status_of(cluster.b.get(path)) == "approved"

    answer = override(cluster.a, name, "rejected")
    # Counted from A's answer: the override is made then (the quarantine copy comes first).
    started = time.monotonic()
    wait_for(serves(cluster.b, path, "rejected"), timeout=5.0)
    enforced = time.monotonic() - started

    assert answer.status == 200
    assert enforced < 1.0, f"B enforced the override after {enforced:.3f} s"
    assert status_of(cluster.b.get(f"/unsafe/81x61/{name}")) == "rejected"
    assert fake.call_count == 1


def test_approving_on_one_node_restores_a_rejected_picture_on_the_other_without_its_origin(
    cluster: Cluster, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    name = add_picture(cluster.images, RED, "restore")
    original = (cluster.images / name).read_bytes()
    digest = hashlib.sha256(original).hexdigest()
    assert status_of(cluster.a.get(f"/unsafe/100x80/{name}")) == "rejected"
    assert status_of(cluster.b.get(f"/unsafe/100x80/{name}")) == "rejected"
    kept = cluster.s3.get_object(Bucket=BUCKET, Key=f"{QUARANTINE_PREFIX}{digest[:2]}/{digest}")
    assert kept["Body"].read() == original
    (cluster.images / name).unlink()

    answer = override(cluster.a, name, "approved")
    wait_for(serves(cluster.b, f"/unsafe/60x40/{name}", "approved"), timeout=5.0)
    restored = cluster.b.get(f"/unsafe/120x90/{name}")

    assert answer.status == 200
    assert restored.status == 200
    assert status_of(restored) == "approved"
    assert size_of(restored) == (120, 90)
    assert centre_of(restored) == pytest.approx(RED, abs=10)
    # B fetched the quarantined copy from S3 and keeps it in its own STORAGE.
    assert storage_file(cluster.b.root, name).read_bytes() == original
    assert fake.call_count == 1


# Near-duplicates: the index of rejected pictures is shared through Redis.


def add_busy(images: Path, stem: str, data: bytes, suffix: str = ".png") -> str:
    name = f"{stem}-{next(_names)}{suffix}"
    (images / name).write_bytes(data)
    return name


def decision_on(node: ThumborServer, name: str) -> tuple[int, dict[str, Any]]:
    answer = node.request("GET", f"/moderation/image?url={quote(name, safe='')}", headers=AUTH)
    return answer.status, json.loads(answer.body) if answer.status == 200 else {}


def test_copies_of_a_picture_rejected_on_one_node_are_rejected_on_the_other_and_lifted(
    cluster: Cluster, fake: FakeRekognition
) -> None:
    image = pictures.busy(f"cluster-{next(_names)}")
    original = add_busy(cluster.images, "reported", pictures.encoded(image, "PNG"))
    assert status_of(cluster.a.get(f"/unsafe/100x80/{original}")) == "approved"
    assert override(cluster.a, original, "rejected").status == 200
    copies = [
        add_busy(cluster.images, "copy-q70", pictures.resized_jpeg(image, 0.75, 70), ".jpg"),
        add_busy(cluster.images, "copy-brighter", pictures.brighter(image, 1.06)),
        add_busy(cluster.images, "copy-q45", pictures.reencoded(image, 45), ".jpg"),
    ]
    unrelated = [
        add_busy(cluster.images, "unrelated", pictures.encoded(pictures.busy(f"u{n}"), "PNG"))
        for n in range(10)
    ]

    on_b = [status_of(cluster.b.get(f"/unsafe/100x80/{name}")) for name in copies]
    calls_for_copies = fake.call_count - 1
    named = [decision_on(cluster.a, name)[1].get("duplicate_of") for name in copies]
    others = [status_of(cluster.b.get(f"/unsafe/100x80/{name}")) for name in unrelated]
    approved = override(cluster.b, original, "approved")
    lifted = [decision_on(cluster.a, name)[0] for name in copies]
    on_a = [status_of(cluster.a.get(f"/unsafe/100x80/{name}")) for name in copies]

    assert on_b == ["rejected"] * 3
    assert calls_for_copies == 0
    assert named == [original] * 3
    assert others == ["approved"] * 10
    assert approved.status == 200
    assert lifted == [404] * 3
    assert on_a == ["approved"] * 3
    assert fake.call_count == 1 + 10 + 3


# Redis killed in the middle of traffic.


@dataclass(frozen=True)
class Answer:
    name: str
    status: str | None
    seconds: float
    at: float


def decide_everywhere(
    cluster: Cluster, color: tuple[int, int, int], stem: str, expected: str
) -> str:
    """A new picture, judged, and answered by both nodes.

    Each node is asked twice: a node that read the decision from Redis before the judging
    node's change notification reached it drops the decision from its memory when the
    notification arrives; asked again, it keeps it.
    """
    name = add_picture(cluster.images, color, stem)
    for node in cluster.nodes * 2:
        assert status_of(node.get(f"/unsafe/50x50/{name}")) == expected
    return name


def answer_within(node: ThumborServer, path: str, seconds: float) -> Response | None:
    """The node's answer, or None when it takes longer than that."""
    try:
        return node.request("GET", path, timeout=seconds)
    except TimeoutError:
        return None


def judging_interrupted(cluster: Cluster, fake: FakeRekognition, name: str) -> Response:
    """Node A's answer for a new picture when Redis dies while the backend judges it."""
    fake.fail("slow", delay=1.0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(cluster.a.get, f"/unsafe/50x50/{name}")
        # A holds the lease on the picture and waits for the backend.
        wait_for(lambda: fake.call_count == 1, timeout=5.0)
        cluster.redis.kill()
        answer = first.result()
    cluster.redis.start()
    return answer


def stored_status(redis_url: str, names: list[str]) -> dict[str, str | None]:
    store = RedisStore(url=redis_url)
    try:
        decisions = {name: store.get(normalise(name)) for name in names}
    finally:
        store.close()
    return {
        name: decision.status.value if decision else None for name, decision in decisions.items()
    }


@pytest.mark.timing
def test_a_redis_outage_keeps_known_decisions_fails_closed_for_new_pictures_and_recovers(
    cluster: Cluster, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    kinds = [(RED, "rejected"), (BLUE, "approved")] * 3
    known = {
        decide_everywhere(cluster, color, "known", expected): expected for color, expected in kinds
    }
    newcomers = [add_picture(cluster.images, BLUE, "outage") for _ in range(4)]
    answers: list[Answer] = []
    stop = threading.Event()

    def traffic(node: ThumborServer) -> None:
        sizes = itertools.count()
        while not stop.is_set():
            for name in known:
                # New sizes too: no result storage answers those, only the decision does.
                response, seconds = timed_get(node, f"/unsafe/{50 + next(sizes) % 40}x50/{name}")
                answers.append(Answer(name, status_of(response), seconds, time.monotonic()))

    threads = [threading.Thread(target=traffic, args=(node,)) for node in cluster.nodes]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    # Judged, and answered by both nodes, an instant before Redis dies.
    last = decide_everywhere(cluster, RED, "last", "rejected")
    calls_before = fake.call_count
    cluster.redis.kill()
    killed_at = time.monotonic()
    last_during = [timed_get(node, f"/unsafe/55x50/{last}") for node in cluster.nodes]
    time.sleep(0.3)
    during = [
        timed_get(node, f"/unsafe/70x50/{name}") for name in newcomers for node in cluster.nodes
    ]
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    restarted_at = time.monotonic()
    calls_during_outage = fake.call_count - calls_before
    cluster.redis.start()
    kept = stored_status(cluster.redis.url, [*known, last])
    recovered = add_picture(cluster.images, BLUE, "recovered")
    recovery = [
        wait_for(serves(node, f"/unsafe/60x60/{recovered}", "approved"), timeout=5.0)
        for node in cluster.nodes
    ]
    retried = [status_of(cluster.b.get(f"/unsafe/70x50/{name}")) for name in newcomers]

    outage = [answer for answer in answers if killed_at < answer.at < restarted_at]
    assert len(outage) > 2 * len(known)
    assert [(a.name, a.status) for a in answers if a.status != known[a.name]] == []
    assert max(answer.seconds for answer in answers) < OUTAGE_REQUEST_LIMIT
    assert [status_of(response) for response, _ in last_during] == ["rejected", "rejected"]
    assert [(response.status, status_of(response)) for response, _ in during] == [
        (200, "pending")
    ] * len(during)
    # The fail-closed placeholder, at the size asked for.
    assert [size_of(response) for response, _ in during] == [(70, 50)] * len(during)
    assert max(seconds for _, seconds in during + last_during) < OUTAGE_REQUEST_LIMIT
    assert calls_during_outage == 0
    assert kept == {**known, last: "rejected"}
    assert max(recovery) < 5.0
    assert retried == ["approved"] * len(newcomers)
    for node in cluster.nodes:
        assert "Traceback" not in node.log


def test_an_analysis_redis_could_not_keep_is_stored_once_it_is_back_without_a_new_call(
    cluster: Cluster, fake: FakeRekognition
) -> None:
    name = add_picture(cluster.images, BLUE, "unsaved")

    lost = judging_interrupted(cluster, fake, name)
    again = cluster.a.get(f"/unsafe/60x60/{name}")

    assert status_of(lost) == "pending"
    assert status_of(again) == "approved"
    assert stored_status(cluster.redis.url, [name]) == {name: "approved"}
    assert fake.call_count == 1


def test_a_node_keeps_answering_the_pictures_it_judged_itself_through_a_redis_outage(
    cluster: Cluster, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    judged: dict[str, str | None] = {}
    for index in range(SELF_JUDGED):
        name = add_picture(cluster.images, (RED, BLUE)[index % 2], "self")
        judged[name] = status_of(cluster.a.get(f"/unsafe/50x50/{name}"))
    # Every change notification has arrived by now.
    time.sleep(0.3)

    cluster.redis.kill()
    during = {name: status_of(cluster.a.get(f"/unsafe/50x50/{name}")) for name in judged}
    cluster.redis.start()

    assert set(judged.values()) == {"approved", "rejected"}
    assert during == judged


def test_new_pictures_are_answered_within_seconds_while_redis_hangs(
    cluster: Cluster, fake: FakeRekognition
) -> None:
    names = [add_picture(cluster.images, BLUE, "frozen") for _ in range(10)]

    def first_request(name: str) -> Response | None:
        return answer_within(cluster.a, f"/unsafe/50x50/{name}", OUTAGE_REQUEST_LIMIT)

    cluster.redis.freeze()
    try:
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            answers = list(pool.map(first_request, names))
    finally:
        cluster.redis.thaw()
    # The requests given up on still run inside Thumbor: let them land before going on.
    for name in names:
        wait_for(serves(cluster.a, f"/unsafe/50x50/{name}", "approved"), timeout=30.0)

    assert [answer and status_of(answer) for answer in answers] == ["pending"] * len(names)


def test_an_override_during_a_redis_outage_is_refused_with_503_and_no_traceback(
    tmp_path: Path, fake: FakeRekognition, s3: tuple[str, Any]
) -> None:
    # A node and a Redis of its own: the traceback expected today stays out of the cluster's logs.
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(picture(BLUE))
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    config = node_config(tmp_path, tmp_path / "images", fake.url, redis.url, s3[0])
    thumbor = ThumborServer(tmp_path, config)
    try:
        thumbor.start()
        assert status_of(thumbor.get("/unsafe/50x50/a.png")) == "approved"

        redis.kill()
        answer = override(thumbor, "a.png", "rejected")
        stats = thumbor.request("GET", "/moderation/stats", headers=AUTH)
    finally:
        thumbor.stop()
        redis.stop()

    assert (answer.status, stats.status) == (503, 503)
    assert "store" in json.loads(answer.body)["error"]
    assert "Traceback" not in thumbor.log


def test_a_picture_whose_judging_redis_lost_is_answered_promptly_by_the_other_node(
    cluster: Cluster, fake: FakeRekognition
) -> None:
    name = add_picture(cluster.images, BLUE, "stranded")
    assert status_of(judging_interrupted(cluster, fake, name)) == "pending"

    answer = answer_within(cluster.b, f"/unsafe/60x60/{name}", OUTAGE_REQUEST_LIMIT)

    assert answer is not None, f"node B did not answer within {OUTAGE_REQUEST_LIMIT} s"
    assert status_of(answer) == "approved"
