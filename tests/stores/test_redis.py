"""The decision store contract run against a real redis-server, and what only Redis does:
change notifications, reconnection after a crash, bounded waits, durability, key prefixes.
"""

from __future__ import annotations

import queue
import random
import re
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from thumbor.config import Config

from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.servers import free_port
from tests.stores.test_sqlite import SHA_A, SHA_B, MakeStore, StoreContract, decision, event, save
from thumbor_rekognition import stores
from thumbor_rekognition.config import Settings
from thumbor_rekognition.decision import Decision, Source, Status
from thumbor_rekognition.fingerprint import Print
from thumbor_rekognition.stores import redis as redis_store
from thumbor_rekognition.stores import redis_index

TIMEOUT = 0.3
# What "about the configured timeout" allows: one timed-out attempt and some slack, not
# a client library's rounds of retries.
PATIENCE = 3 * TIMEOUT
# The contract's tests are about what a store keeps, not how soon it gives up: on the
# shared server, beside other test workers on a loaded machine, a save can take longer
# than TIMEOUT without anything being wrong (as with DynamoDB's contract on moto).
CONTRACT_TIMEOUT = 5.0

OpenStore = Callable[..., redis_store.Store]


class Changes:
    """A change listener that records what it is told, for a test to wait on."""

    def __init__(self) -> None:
        self.heard: queue.Queue[str | None] = queue.Queue()

    def __call__(self, key: str | None) -> None:
        self.heard.put(key)

    def wait_for(self, expected: str | None, seconds: float) -> bool:
        """Whether the listener is told `expected` within some seconds."""
        return expected in self.heard_until(expected, seconds)

    def heard_until(self, expected: str | None, seconds: float) -> list[str | None]:
        """All the listener is told, in order, until `expected` or the seconds run out."""
        heard: list[str | None] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                heard.append(self.heard.get(timeout=left))
            except queue.Empty:
                break
            if heard[-1] == expected:
                break
        return heard


def keys_of(url: str) -> list[str]:
    with redis.Redis.from_url(url) as client:
        return sorted(key.decode() for key in client.scan_iter(count=1000))


def subscribers(url: str) -> int:
    """How many connections of the server are subscribed to a channel."""
    with redis.Redis.from_url(url) as client:
        return sum(1 for info in client.client_list() if int(info.get("sub", 0)) > 0)


def eventually(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def forget_order_by_time(store: redis_store.Store) -> None:
    """Delete the indexes by time and their mark, as the version before them left its data."""
    client = store._redis()
    pattern = redis_store._glob_escape(store.prefix) + "*"
    names = [name for name in client.scan_iter(pattern, 1000) if re.search(rb"\}[rc]t[0-9]", name)]
    assert names
    for name in [*names, store.prefix + "timed"]:
        client.delete(name)


def flushed(url: str) -> str:
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


class TestRedisStore(StoreContract):
    @pytest.fixture
    def open_store(self) -> Iterator[OpenStore]:
        """Store(...) that closes what it opened at the end of the test."""
        opened: list[redis_store.Store] = []

        def open_store(**options: object) -> redis_store.Store:
            store = redis_store.Store(**options)  # type: ignore[arg-type]
            opened.append(store)
            return store

        yield open_store
        for store in opened:
            store.close()

    @pytest.fixture
    def make_store(
        self,
        redis_server: RedisServer,  # noqa: F811
        open_store: OpenStore,
    ) -> MakeStore:
        # A prefix per test keeps tests apart on the shared server, listeners included.
        prefix = f"test-{uuid.uuid4().hex[:12]}:"
        return lambda: open_store(url=redis_server.url, prefix=prefix, timeout=CONTRACT_TIMEOUT)

    def forget_order_by_time(self, store: stores.Store) -> None:
        assert isinstance(store, redis_store.Store)
        forget_order_by_time(store)

    @pytest.fixture
    def own_server(self, tmp_path: Path) -> Iterator[RedisServer]:
        """A server of the test's own, free to be killed, frozen and restarted."""
        with RedisServer(tmp_path / "redis") as server:
            yield server

    @pytest.mark.timing
    def test_change_saved_by_one_store_reaches_another_stores_listener_within_a_second(
        self, make_store: MakeStore
    ) -> None:
        listening, writer = make_store(), make_store()
        changes = Changes()
        listening.subscribe(changes)
        assert changes.wait_for(None, 5), "the listener never connected"

        save(writer, decision("host/a.jpg", status=Status.REJECTED))

        assert changes.wait_for("host/a.jpg", 1.0)

    @pytest.mark.timing
    def test_forgotten_decision_reaches_another_stores_listener_within_a_second(
        self, make_store: MakeStore
    ) -> None:
        listening, writer = make_store(), make_store()
        save(writer, decision("host/a.jpg"))
        changes = Changes()
        listening.subscribe(changes)
        assert changes.wait_for(None, 5), "the listener never connected"

        writer.delete("host/a.jpg", event(None, None, "alice", "forget it"))

        assert changes.wait_for("host/a.jpg", 1.0)

    def test_listener_hears_nothing_of_stores_with_another_prefix(
        self,
        redis_server: RedisServer,  # noqa: F811
        open_store: OpenStore,
    ) -> None:
        listening = open_store(url=redis_server.url, prefix="site-a:", timeout=CONTRACT_TIMEOUT)
        other_site = open_store(url=redis_server.url, prefix="site-b:", timeout=CONTRACT_TIMEOUT)
        own_site = open_store(url=redis_server.url, prefix="site-a:", timeout=CONTRACT_TIMEOUT)
        changes = Changes()
        listening.subscribe(changes)
        assert changes.wait_for(None, 5), "the listener never connected"

        save(other_site, decision("host/other.jpg"))
        save(own_site, decision("host/own.jpg"))
        # Redis delivers a channel's messages in the order they were published: a leaked
        # change of the other site would be heard before the site's own.
        heard = changes.heard_until("host/own.jpg", 1.0)

        assert heard == ["host/own.jpg"]

    def test_listener_is_told_anything_may_have_changed_after_redis_restarts_then_hears_changes(
        self, own_server: RedisServer, open_store: OpenStore
    ) -> None:
        listening = open_store(url=own_server.url, timeout=TIMEOUT)
        writer = open_store(url=own_server.url, timeout=TIMEOUT)
        changes = Changes()
        listening.subscribe(changes)
        assert changes.wait_for(None, 5), "the listener never connected"

        own_server.kill()
        own_server.start()

        assert changes.wait_for(None, 10)
        save(writer, decision("host/a.jpg"))
        assert changes.wait_for("host/a.jpg", 1.0)

    def test_listener_is_told_anything_may_have_changed_after_a_long_outage(
        self, own_server: RedisServer, open_store: OpenStore
    ) -> None:
        listening = open_store(url=own_server.url, timeout=TIMEOUT)
        writer = open_store(url=own_server.url, timeout=TIMEOUT)
        changes = Changes()
        listening.subscribe(changes)
        assert changes.wait_for(None, 5), "the listener never connected"

        own_server.kill()
        time.sleep(0.5)
        own_server.start()

        assert changes.wait_for(None, 10)
        save(writer, decision("host/a.jpg"))
        assert changes.wait_for("host/a.jpg", 1.0)

    def test_closed_store_drops_its_change_subscription(
        self, own_server: RedisServer, open_store: OpenStore
    ) -> None:
        store = open_store(url=own_server.url, timeout=TIMEOUT)
        changes = Changes()
        store.subscribe(changes)
        assert changes.wait_for(None, 5), "the listener never connected"

        store.close()

        assert eventually(lambda: subscribers(own_server.url) == 0, 2)

    def test_closed_store_drops_its_change_subscription_after_reconnecting(
        self, own_server: RedisServer, open_store: OpenStore
    ) -> None:
        store = open_store(url=own_server.url, timeout=TIMEOUT)
        changes = Changes()
        store.subscribe(changes)
        assert changes.wait_for(None, 5), "the listener never connected"
        for _ in range(2):
            own_server.kill()
            own_server.start()
            assert changes.wait_for(None, 10), "the listener never reconnected"

        store.close()

        assert eventually(lambda: subscribers(own_server.url) == 0, 2)

    @pytest.mark.timing
    def test_calls_to_a_killed_server_fail_within_about_the_timeout(
        self, own_server: RedisServer, open_store: OpenStore
    ) -> None:
        store = open_store(url=own_server.url, timeout=TIMEOUT)
        store.get("host/a.jpg")
        own_server.kill()

        started = time.monotonic()
        with pytest.raises(stores.StoreUnavailable):
            store.get("host/a.jpg")
        elapsed = time.monotonic() - started

        assert elapsed < PATIENCE

    @pytest.mark.timing
    def test_saves_to_a_killed_server_fail_within_about_the_timeout(
        self, own_server: RedisServer, open_store: OpenStore
    ) -> None:
        store = open_store(url=own_server.url, timeout=TIMEOUT)
        store.get("host/a.jpg")
        own_server.kill()

        started = time.monotonic()
        with pytest.raises(stores.StoreUnavailable):
            save(store, decision("host/a.jpg"))
        elapsed = time.monotonic() - started

        assert elapsed < PATIENCE

    @pytest.mark.timing
    def test_calls_to_a_frozen_server_fail_within_about_the_timeout(
        self, own_server: RedisServer, open_store: OpenStore
    ) -> None:
        store = open_store(url=own_server.url, timeout=TIMEOUT)
        store.get("host/a.jpg")
        own_server.freeze()

        started = time.monotonic()
        try:
            with pytest.raises(stores.StoreUnavailable):
                store.get("host/a.jpg")
        finally:
            elapsed = time.monotonic() - started
            own_server.thaw()

        assert elapsed < PATIENCE

    def test_same_store_works_again_once_a_killed_server_is_back(
        self, own_server: RedisServer, open_store: OpenStore
    ) -> None:
        store = open_store(url=own_server.url, timeout=TIMEOUT)
        written = save(store, decision("host/a.jpg", status=Status.REJECTED))
        own_server.kill()
        with pytest.raises(stores.StoreUnavailable):
            store.get("host/a.jpg")

        own_server.start()

        assert store.get("host/a.jpg") == written
        save(store, decision("host/b.jpg"))
        assert [item.key for item in store.page()[0]] == ["host/a.jpg", "host/b.jpg"]

    def test_answered_decision_survives_kill_9_and_restart(
        self, own_server: RedisServer, open_store: OpenStore
    ) -> None:
        store = open_store(url=own_server.url, timeout=TIMEOUT)
        written = save(store, decision("host/a.jpg", status=Status.REJECTED, source=Source.MANUAL))
        store.incr("moderation.decision.rejected")
        store.add_results("host/a.jpg", ["/unsafe/host/a.jpg"])

        own_server.kill()
        own_server.start()
        reopened = open_store(url=own_server.url, timeout=TIMEOUT)

        assert reopened.get("host/a.jpg") == written
        assert reopened.find_by_hash(written.sha256) == written
        assert reopened.counts() == {"rejected": 1, "rejected.manual": 1}
        assert [item.actor for item in reopened.history("host/a.jpg")] == ["test"]
        assert reopened.results("host/a.jpg") == ["/unsafe/host/a.jpg"]
        assert reopened.counters() == {"moderation.decision.rejected": 1}

    def test_every_key_written_starts_with_the_configured_prefix(
        self,
        redis_server: RedisServer,  # noqa: F811
        open_store: OpenStore,
    ) -> None:
        url = flushed(redis_server.url_of_db(1))
        store = open_store(url=url, prefix="site-a:", timeout=CONTRACT_TIMEOUT)
        save(store, decision("host/a.jpg", status=Status.REJECTED))
        save(store, decision("host/a.jpg", status=Status.APPROVED, source=Source.MANUAL))
        save(store, decision("host/b.jpg", "b" * 64))
        store.delete("host/b.jpg", event(None, None))
        store.add_results("host/a.jpg", ["/unsafe/host/a.jpg"])
        store.incr("moderation.backend.calls")
        store.acquire_lease("backfill", "node-1", 30)
        store.compare_and_set("calls", None, "1")
        store.enqueue("webhook", "host/a.jpg", "{}")
        store.put_fingerprints("a" * 64, {0: Print(0x0123_4567_89AB_CDEF << 190)}, rejecting={0})
        store.link_duplicate("a" * 64, "host/b.jpg")

        keys = keys_of(url)

        assert keys
        assert [key for key in keys if not key.startswith("site-a:")] == []

    def test_stores_with_other_prefixes_on_one_database_do_not_see_each_other(
        self,
        redis_server: RedisServer,  # noqa: F811
        open_store: OpenStore,
    ) -> None:
        url = flushed(redis_server.url_of_db(1))
        site_a = open_store(url=url, prefix="site-a:", timeout=CONTRACT_TIMEOUT)
        site_b = open_store(url=url, prefix="site-b:", timeout=CONTRACT_TIMEOUT)
        written = save(site_a, decision("host/a.jpg", status=Status.REJECTED))
        site_a.incr("moderation.backend.calls")
        site_a.acquire_lease("backfill", "node-1", 30)

        seen_by_b = (
            site_b.get("host/a.jpg"),
            site_b.find_by_hash(written.sha256),
            site_b.page(),
            site_b.counts(),
            site_b.counters(),
            site_b.acquire_lease("backfill", "node-2", 30),
        )

        assert seen_by_b == (None, None, ([], None), {}, {}, True)

    def test_configured_store_module_loads_a_redis_store_with_the_configured_settings(
        self,
        redis_server: RedisServer,  # noqa: F811
    ) -> None:
        url = flushed(redis_server.url_of_db(2))
        config = Config()
        config.MODERATION_DECISION_STORE = "thumbor_rekognition.stores.redis"
        config.MODERATION_REDIS_URL = url
        config.MODERATION_REDIS_PREFIX = "configured:"
        config.MODERATION_STORE_TIMEOUT_SECONDS = 0.25
        settings = Settings.from_config(config)

        store = stores.load_store(settings)
        save(store, decision("host/a.jpg"))
        store.close()

        reopened = redis_store.Store(url=url, prefix="configured:")
        found = reopened.get("host/a.jpg")
        reopened.close()
        assert isinstance(store, redis_store.Store)
        assert (store.url, store.prefix, store.timeout) == (url, "configured:", 0.25)
        assert (store.cluster, store.wait_replicas) == (False, 0)
        assert keys_of(url)
        assert [key for key in keys_of(url) if not key.startswith("configured:")] == []
        assert found is not None

    @pytest.mark.timing
    def test_unreachable_server_makes_a_new_store_unavailable_not_hang(
        self, open_store: OpenStore
    ) -> None:
        store = open_store(url=f"redis://127.0.0.1:{free_port()}/0", timeout=TIMEOUT)

        started = time.monotonic()
        with pytest.raises(stores.StoreUnavailable):
            store.get("host/a.jpg")
        elapsed = time.monotonic() - started

        assert elapsed < PATIENCE


def keys_in_one_partition(count: int, seed: int) -> list[str]:
    """Keys of varied lengths that all land in partition 0: its maps split into many chunks."""
    generator = random.Random(seed)
    keys: list[str] = []
    while len(keys) < count:
        key = (
            f"host-{generator.randrange(50)}/{'d/' * generator.randrange(8)}{uuid.uuid4().hex}.jpg"
        )
        if zlib.crc32(key.encode()) % redis_store.PARTITIONS == 0:
            keys.append(key)
    return keys


def chunks(url: str, prefix: str, name: str) -> int:
    """How many chunks one map of partition 0 is kept in."""
    with redis.Redis.from_url(url) as client:
        return int(client.zcard(f"{prefix}{{{redis_store.TAGS[0]}}}r{name}"))


def test_a_partition_split_into_many_chunks_keeps_every_decision_in_order(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    store = redis_store.Store(url=redis_server.url, prefix=prefix, timeout=5.0)
    generator = random.Random(7)
    statuses = [Status.APPROVED, Status.REJECTED, Status.PENDING]
    expected: dict[str, Status] = {}
    paths: dict[str, list[str]] = {}
    keys = keys_in_one_partition(1500, seed=7)
    for number, key in enumerate(keys):
        status = generator.choice(statuses)
        save(store, decision(key, sha256=f"{number:064x}", status=status))
        expected[key] = status
        if number % 7 == 0:
            # Entries of several kilobytes: larger than a chunk.
            paths[key] = [f"/unsafe/{size}x{size}/{key}?{'x' * 50}" for size in range(60)]
            store.add_results(key, paths[key])
    for key in generator.sample(keys, 400):
        if generator.random() < 0.5:
            store.delete(key, event(None, None))
            del expected[key]
        else:
            status = generator.choice(statuses)
            save(store, decision(key, sha256=SHA_B, status=status, source=Source.MANUAL))
            expected[key] = status

    listed = {status: [item.key for item in pages(store, status, generator)] for status in statuses}
    everything = [item.key for item in pages(store, None, generator)]

    assert chunks(redis_server.url, prefix, "d") > 50
    assert everything == sorted(expected)
    for status in statuses:
        assert listed[status] == sorted(k for k, s in expected.items() if s is status)
    assert [store.get(key) is not None for key in keys] == [key in expected for key in keys]
    assert {key: store.results(key) for key in paths} == paths
    assert store.counts()["approved"] == sum(1 for s in expected.values() if s is Status.APPROVED)
    store.close()


def pages(
    store: redis_store.Store, status: Status | None, generator: random.Random
) -> list[Decision]:
    """Every decision with a status, in pages of random sizes."""
    found: list[Decision] = []
    cursor: str | None = None
    while True:
        page, cursor = store.page(status, limit=generator.randrange(1, 300), cursor=cursor)
        found += page
        if cursor is None:
            return found


def test_thousands_of_urls_of_the_same_bytes_are_all_found_by_their_hash(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    store = redis_store.Store(url=redis_server.url, prefix=prefix, timeout=5.0)
    keys = sorted(
        f"mirror-{number}.example.com/{'p/' * (number % 9)}a.jpg" for number in range(2000)
    )
    for key in keys:
        save(store, decision(key, sha256=SHA_A))
    save(store, decision("other/b.jpg", sha256=SHA_B))
    # A key that moved to other bytes leaves the index of its old ones.
    save(store, decision(keys[0], sha256=SHA_B))

    found = store.find_all_by_hash(SHA_A)

    partition = redis_store.TAGS[bytes.fromhex(SHA_A)[0] % redis_store.PARTITIONS]
    with redis.Redis.from_url(redis_server.url) as client:
        index_chunks = client.zcard(f"{prefix}{{{partition}}}rh")
    assert index_chunks > 32
    assert [item.key for item in found] == keys[1:]
    assert [item.key for item in store.find_all_by_hash(SHA_B)] == sorted([keys[0], "other/b.jpg"])
    store.close()


def test_index_entries_are_matched_whole_never_across_two_others(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    store = redis_store.Store(url=redis_server.url, prefix=f"test-{uuid.uuid4().hex[:12]}:")
    first, second = bytes(range(57)), bytes(range(100, 157))
    straddling = first[28:] + second[:28]
    key = store._band_key(0)

    with redis.Redis.from_url(redis_server.url) as client:
        for entry in (first, second, straddling):
            client.eval(redis_index._INDEX_ENTRY, 1, key, "abcd", entry, "1")
        added = client.hget(key, "abcd")
        client.eval(redis_index._INDEX_ENTRY, 1, key, "abcd", straddling, "0")
        removed = client.hget(key, "abcd")
        for entry in (first, second):
            client.eval(redis_index._INDEX_ENTRY, 1, key, "abcd", entry, "0")
        emptied = client.hexists(key, "abcd")
    store.close()

    assert added == first + second + straddling
    assert removed == first + second
    assert emptied is False


def test_index_keys_are_sixteen_slot_hashes_picture_records_and_duplicate_sets(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    url = flushed(redis_server.url_of_db(3))
    store = redis_store.Store(url=url, prefix="p:")
    a = Print(0x0123_4567_89AB_CDEF << 190)

    store.put_fingerprints("a" * 64, {0: a, 1: Print(0xFFFF_0000_FFFF_0000 << 7)}, rejecting={0})
    store.link_duplicate("a" * 64, "host/copy.jpg")
    store.close()

    assert keys_of(url) == [
        "p:dup:{" + "a" * 64 + "}",
        # Written by every store on its first call: the format of the data.
        "p:format",
        "p:pdq:{" + "a" * 64 + "}",
        # The index of rejecting frames: frame 0 rejects its picture.
        *sorted(f"p:pdqr:{slot}" for slot in range(16)),
        *sorted(f"p:pdqx:{slot}" for slot in range(16)),
        # Written by every store on its first call: the index by time is built.
        "p:timed",
    ]
