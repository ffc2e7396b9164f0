"""Two Thumbor nodes sharing a Redis Cluster of three masters.

Each node names another node of the cluster in MODERATION_REDIS_URL and keeps decisions
in memory for 30 s: only the cluster's change notifications can explain a node enforcing,
within a second, an override made on the other. A master is killed: with a replica per
master (and MODERATION_REDIS_WAIT_REPLICAS = 1) no answered decision is lost; without
replicas the pictures of its slots are pending until it is back, and then judged.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.fakes.rekognition import FakeRekognition
from tests.receivers import Receiver
from tests.redis_server import RedisCluster, RedisServer
from tests.servers import ThumborServer, base_config
from tests.test_cluster import (
    AUTH,
    BLUE,
    NUDITY,
    OUTAGE_REQUEST_LIMIT,
    RED,
    TOKEN,
    add_picture,
    override,
    serves,
    size_of,
    status_of,
    wait_for,
)
from thumbor_rekognition.decision import Decision, Event
from thumbor_rekognition.stores import redis as redis_store
from thumbor_rekognition.urls import normalise

pytestmark = pytest.mark.e2e

PREFIX = "moderation:"
BURST = 60


@dataclass
class Nodes:
    a: ThumborServer
    b: ThumborServer
    images: Path
    redis: RedisCluster

    @property
    def both(self) -> tuple[ThumborServer, ThumborServer]:
        return self.a, self.b


def node_config(root: Path, images: Path, endpoint: str, url: str, replicas: int) -> dict[str, Any]:
    config = base_config(root, images, endpoint)
    config.update(
        {
            "MODERATION_DECISION_STORE": "thumbor_rekognition.stores.redis",
            "MODERATION_REDIS_URL": url,
            "MODERATION_REDIS_CLUSTER": True,
            "MODERATION_REDIS_WAIT_REPLICAS": replicas,
            "MODERATION_CACHE_TTL_SECONDS": 30.0,
            "MODERATION_ADMIN_TOKEN": TOKEN,
            # Both nodes are on this machine: one folder stands for the shared bucket.
            "MODERATION_QUARANTINE_PATH": str(root.parent / "quarantine"),
        }
    )
    del config["MODERATION_SQLITE_PATH"]
    return config


def start_nodes(
    root: Path, fake: FakeRekognition, redis: RedisCluster, replicas: int, **settings: Any
) -> Nodes:
    images = root / "origin"
    images.mkdir()
    # A names the first node of the cluster, B the last: any node leads to the others.
    a, b = (
        ThumborServer(
            root / name,
            {**node_config(root / name, images, fake.url, node.url, replicas), **settings},
            log_level="debug",
        )
        for name, node in (("a", redis.nodes[0]), ("b", redis.nodes[-1]))
    )
    a.start(wait=False)
    b.start()
    a.wait_ready()
    return Nodes(a, b, images, redis)


def warnings_of(nodes: Nodes) -> str:
    """The nodes' warnings and errors, to say why an answer was not the one expected."""
    return "\n".join(
        f"{name}: {line}"
        for name, node in zip("ab", nodes.both, strict=True)
        for line in node.log.splitlines()
        if ":WARNING " in line or ":ERROR " in line or ":CRITICAL " in line
    )[-8000:]


def stop_nodes(nodes: Nodes) -> None:
    for node in nodes.both:
        node.stop()
    for node in nodes.both:
        assert "Traceback" not in node.log


def partition_of(name: str) -> str:
    key = normalise(name)
    return f"{PREFIX}{{{redis_store.TAGS[zlib.crc32(key.encode()) % redis_store.PARTITIONS]}}}rd"


def hash_partition_of(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return f"{PREFIX}{{{redis_store.TAGS[digest[0] % redis_store.PARTITIONS]}}}rd"


def picture_on(
    nodes: Nodes, masters: set[int], color: tuple[int, int, int], stem: str, everything: bool
) -> str:
    """A new picture whose decision lives on one of these masters (and, when everything,
    its content-hash index entry and judging lease too)."""
    owners = {server.port: index for index, server in enumerate(nodes.redis.nodes)}
    while True:
        name = add_picture(nodes.images, color, stem)
        data = (nodes.images / name).read_bytes()
        slots = [partition_of(name)]
        if everything:
            lease = f"{PREFIX}lease:judge:{hashlib.sha256(data).hexdigest()}"
            slots += [hash_partition_of(data), lease]
        if all(owners[nodes.redis.master_of(slot).port] in masters for slot in slots):
            return name
        (nodes.images / name).unlink()


def master_for_losing(nodes: Nodes) -> int:
    """A master other than the first node (which a node's URL names) that holds none of the
    keys every picture's judging touches (the shared counters)."""
    holder = nodes.redis.master_of(f"{PREFIX}counters")
    return next(
        index
        for index, server in enumerate(nodes.redis.nodes[1:3], start=1)
        if server is not holder
    )


def stored(url: str, names: list[str]) -> dict[str, str | None]:
    """What the cluster holds for these pictures, read by a store of its own."""
    store = redis_store.Store(url=url, prefix=PREFIX, cluster=True, timeout=2.0)
    try:
        decisions: dict[str, Decision | None] = {name: store.get(normalise(name)) for name in names}
    finally:
        store.close()
    return {name: d.status.value if d else None for name, d in decisions.items()}


@pytest.fixture(scope="module")
def with_replicas(
    tmp_path_factory: pytest.TempPathFactory, module_fake: FakeRekognition
) -> Iterator[Nodes]:
    root = tmp_path_factory.mktemp("with-replicas")
    with RedisCluster(root / "redis", replicas=1) as redis:
        nodes = start_nodes(root, module_fake, redis, replicas=1)
        yield nodes
        stop_nodes(nodes)


@pytest.fixture(scope="module")
def without_replicas(
    tmp_path_factory: pytest.TempPathFactory, module_fake: FakeRekognition
) -> Iterator[Nodes]:
    root = tmp_path_factory.mktemp("without-replicas")
    with RedisCluster(root / "redis") as redis:
        nodes = start_nodes(root, module_fake, redis, replicas=0)
        yield nodes
        stop_nodes(nodes)


# Time for a change notification to reach every node, on a loaded machine (Redis's own
# propagation is 0.05 s; a node's thread that receives it may wait for a core).
SETTLE_SECONDS = 0.5


def judged_everywhere(nodes: Nodes, name: str) -> str | None:
    """A picture judged, and answered by both nodes, each holding it in memory.

    Each node is asked twice, the second time once the judging node's change notification
    has had time to reach it: a node that read the decision before the notification came
    drops it from memory when it comes; asked again, it keeps it.
    """
    first = {status_of(node.get(f"/unsafe/50x50/{name}")) for node in nodes.both}
    time.sleep(SETTLE_SECONDS)
    answers = first | {status_of(node.get(f"/unsafe/50x50/{name}")) for node in nodes.both}
    assert len(answers) == 1
    return answers.pop()


class TestWithReplicas:
    @pytest.fixture
    def nodes(self, with_replicas: Nodes) -> Nodes:
        return with_replicas

    def test_a_burst_of_first_requests_over_two_nodes_makes_one_backend_call(
        self, nodes: Nodes, fake: FakeRekognition
    ) -> None:
        fake.fail("slow", delay=0.5)
        name = add_picture(nodes.images, BLUE, "burst")
        requests = [
            (nodes.both[index % 2], f"/unsafe/{40 + index}x{30 + index}/{name}")
            for index in range(BURST)
        ]

        with ThreadPoolExecutor(max_workers=BURST) as pool:
            responses = list(pool.map(lambda request: request[0].get(request[1]), requests))

        assert fake.call_count == 1
        assert [status_of(response) for response in responses] == ["approved"] * BURST, warnings_of(
            nodes
        )

    @pytest.mark.timing
    def test_an_override_on_one_node_is_enforced_by_the_other_within_a_second(
        self, nodes: Nodes, fake: FakeRekognition
    ) -> None:
        name = add_picture(nodes.images, BLUE, "override")
        path = f"/unsafe/80x60/{name}"
        assert status_of(nodes.a.get(path)) == "approved"
        # B now holds "approved" in memory for 30 s, and the result in its result storage.
        assert status_of(nodes.b.get(path)) == "approved"
        assert status_of(nodes.b.get(path)) == "approved"

        answer = override(nodes.a, name, "rejected")
        enforced = wait_for(serves(nodes.b, path, "rejected"), timeout=5.0)

        assert answer.status == 200
        assert enforced < 1.0, f"B enforced the override after {enforced:.3f} s"
        assert status_of(nodes.b.get(f"/unsafe/81x61/{name}")) == "rejected"
        assert fake.call_count == 1

    def test_listing_by_status_on_either_node_finds_pictures_of_every_master(
        self, nodes: Nodes, fake: FakeRekognition
    ) -> None:
        fake.respond(RED, NUDITY)
        names = [picture_on(nodes, {index}, RED, "listed", False) for index in range(3)]
        for name in names:
            assert status_of(nodes.a.get(f"/unsafe/50x50/{name}")) == "rejected"

        listed = [
            node.request("GET", "/moderation/images?status=rejected&limit=500", headers=AUTH)
            for node in nodes.both
        ]

        for answer in listed:
            assert answer.status == 200
            keys = {image["key"] for image in json.loads(answer.body)["images"]}
            assert {normalise(name) for name in names} <= keys

    def test_no_answered_decision_is_lost_when_a_master_is_killed(
        self, nodes: Nodes, fake: FakeRekognition
    ) -> None:
        fake.respond(RED, NUDITY)
        victim_index = master_for_losing(nodes)
        answered = {}
        for number in range(12):
            color = (RED, BLUE)[number % 2]
            name = picture_on(nodes, {victim_index}, color, "failover", False)
            answered[name] = judged_everywhere(nodes, name)
        victim = nodes.redis.nodes[victim_index]
        assert set(answered.values()) == {"approved", "rejected"}

        victim.kill()
        # Decisions held in memory keep being answered while the replica takes over.
        during = [
            (name, status_of(node.get(f"/unsafe/55x50/{name}")))
            for node in nodes.both
            for name in answered
        ]
        nodes.redis.wait_until_serving()
        survivor = next(node for node in nodes.redis.nodes if node.process is not None)
        kept = stored(survivor.url, list(answered))
        after = picture_on(nodes, {0, 2}, BLUE, "after", False)
        recovery = [
            wait_for(serves(node, f"/unsafe/60x60/{after}", "approved"), 10.0)
            for node in nodes.both
        ]
        victim.start()
        nodes.redis.wait_until_serving()

        assert during == [*answered.items(), *answered.items()]
        assert kept == answered
        assert max(recovery) < 10.0


class TestWithoutReplicas:
    @pytest.fixture
    def nodes(self, without_replicas: Nodes) -> Nodes:
        return without_replicas

    @pytest.mark.timing
    def test_pictures_of_a_lost_master_are_pending_until_it_is_back_then_judged(
        self, nodes: Nodes, fake: FakeRekognition
    ) -> None:
        fake.respond(RED, NUDITY)
        lost_index = master_for_losing(nodes)
        known = {
            picture_on(nodes, {lost_index}, color, "known", False): expected
            for color, expected in ((RED, "rejected"), (BLUE, "approved"))
        }
        for name, expected in known.items():
            assert judged_everywhere(nodes, name) == expected
        stranded = [picture_on(nodes, {lost_index}, BLUE, "stranded", False) for _ in range(3)]
        elsewhere = [picture_on(nodes, {0, 2}, BLUE, "elsewhere", True) for _ in range(3)]
        lost: RedisServer = nodes.redis.nodes[lost_index]
        calls_before = fake.call_count

        lost.kill()
        during = [
            (name, nodes.b.request("GET", f"/unsafe/70x50/{name}", timeout=OUTAGE_REQUEST_LIMIT))
            for name in stranded
        ]
        served_elsewhere = [status_of(nodes.b.get(f"/unsafe/70x50/{name}")) for name in elsewhere]
        remembered = {name: status_of(nodes.a.get(f"/unsafe/50x50/{name}")) for name in known}
        lost.start()
        nodes.redis.wait_until_serving()
        retried = [
            wait_for(serves(nodes.b, f"/unsafe/70x50/{name}", "approved"), 10.0)
            for name in stranded
        ]
        kept = stored(nodes.redis.url, list(known))

        # The fail-closed placeholder, at the size asked for, for what cannot be stored.
        assert [(response.status, status_of(response)) for _, response in during] == [
            (200, "pending")
        ] * len(stranded)
        assert [size_of(response) for _, response in during] == [(70, 50)] * len(stranded)
        assert served_elsewhere == ["approved"] * len(elsewhere)
        assert remembered == known
        assert max(retried) < 10.0
        assert kept == known
        assert fake.call_count - calls_before >= len(elsewhere)


# Decision changes announced through a failover.

HOOK_PATH = "/moderation-events"
UNDONE = "write not acknowledged by a replica in time: undone"


@dataclass(frozen=True)
class Write:
    number: int
    name: str
    status: str
    answer: int
    after_kill: bool

    @property
    def note(self) -> str:
        return f"write {self.number}"


class Overrides:
    """Admin writes flipping pictures between rejected and approved, one after another,
    each with a note of its own; a change asked for is the opposite of the last one
    answered 200, so that every write changes something."""

    def __init__(self, node: ThumborServer, names: list[str]) -> None:
        self.node, self.names = node, names
        self.standing = dict.fromkeys(names, "approved")
        self.writes: list[Write] = []
        self.killed = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        for number in itertools.count():
            if self.stop.is_set():
                return
            name = self.names[number % len(self.names)]
            status = "rejected" if self.standing[name] == "approved" else "approved"
            body = json.dumps({"status": status, "note": f"write {number}", "actor": "tests"})
            answer = self.node.request(
                "PUT",
                f"/moderation/image?url={quote(name, safe='')}",
                body=body.encode(),
                headers=AUTH,
            )
            self.writes.append(Write(number, name, status, answer.status, self.killed.is_set()))
            if answer.status == 200:
                self.standing[name] = status


def histories(url: str, names: list[str]) -> dict[str, list[Event]]:
    store = redis_store.Store(url=url, prefix=PREFIX, cluster=True, timeout=2.0)
    try:
        return {name: store.history(normalise(name)) for name in names}
    finally:
        store.close()


class TestAnnouncedThroughAFailover:
    def test_every_change_answered_200_is_announced_and_none_answered_503_is_saved(
        self, tmp_path: Path, fake: FakeRekognition
    ) -> None:
        with Receiver() as hooks, RedisCluster(tmp_path / "redis", replicas=1) as redis:
            nodes = start_nodes(
                tmp_path,
                fake,
                redis,
                replicas=1,
                MODERATION_WEBHOOK_URL=hooks.url + HOOK_PATH,
                MODERATION_OUTBOX_TIMEOUT_SECONDS=2.0,
            )
            try:
                victim_index = master_for_losing(nodes)
                names = [
                    picture_on(nodes, {index}, BLUE, "announced", False)
                    for index in (0, 1, 2)
                    for _ in range(4)
                ]
                for name in names:
                    assert judged_everywhere(nodes, name) == "approved"
                on_victim = {name for name in names[4 * victim_index : 4 * victim_index + 4]}
                overrides = Overrides(nodes.a, names)
                writer = threading.Thread(target=overrides.run)
                traffic = Traffic(nodes, names)
                writer.start()
                traffic.start()
                wait_for(lambda: len(overrides.writes) >= 20, timeout=30)

                overrides.killed.set()
                redis.nodes[victim_index].kill()
                redis.wait_until_serving()
                wait_for(
                    lambda: (
                        sum(
                            1
                            for write in overrides.writes
                            if write.after_kill and write.answer == 200 and write.name in on_victim
                        )
                        >= 8
                    ),
                    timeout=30,
                )
                overrides.stop.set()
                writer.join()
                traffic.stop()
                answered = [write for write in overrides.writes if write.answer == 200]
                notes = {write.note for write in answered}
                # Every note at least once: webhooks are delivered at least once, and one
                # whose delivery was cut by the failover may come twice.
                wait_for(
                    lambda: notes <= {json.loads(hook.body)["note"] for hook in hooks.requests},
                    timeout=60,
                )
                announced = hooks.matching(lambda hook: json.loads(hook.body)["note"] in notes)
                survivor = next(node for node in redis.nodes if node.process is not None)
                history = histories(survivor.url, names)
                kept = stored(survivor.url, names)
            finally:
                stop_nodes(nodes)

        assert {write.answer for write in overrides.writes} <= {200, 503}
        assert traffic.errors == []
        # Each change answered 200 announced, with the status it asked for.
        hooked = {json.loads(hook.body)["note"]: json.loads(hook.body) for hook in announced}
        assert all(hooked[write.note]["status"] == write.status for write in answered)
        # None answered 503 stands: never written, or undone before the answer.
        for write in overrides.writes:
            if write.answer != 503:
                continue
            notes_of = [event.note for event in history[write.name]]
            if write.note in notes_of:
                assert notes_of[notes_of.index(write.note) + 1] == UNDONE
        # What stands is what the last change answered 200 asked for.
        assert kept == overrides.standing


class Traffic:
    """Viewers asking for the pictures at a few sizes, from both nodes, until stopped."""

    def __init__(self, nodes: Nodes, names: list[str]) -> None:
        self.nodes, self.names = nodes, names
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        for number in itertools.count():
            if self._stop.is_set():
                return
            node = self.nodes.both[number % 2]
            name = self.names[number % len(self.names)]
            answer = node.get(f"/unsafe/{40 + number % 3}x30/{name}")
            if answer.status >= 500:
                self.errors.append(f"{name}: {answer.status}")
