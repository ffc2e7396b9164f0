"""The decision store contract against a real Redis Cluster of three masters, and what
only a cluster does: any node as the URL, notifications across nodes, a master lost.
"""

from __future__ import annotations

import itertools
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.redis_server import RedisCluster, redis_cluster  # noqa: F401
from tests.stores.test_outbox import Announcer
from tests.stores.test_redis import Changes, forget_order_by_time
from tests.stores.test_sqlite import MakeStore, StoreContract, decision, save
from thumbor_rekognition import stores
from thumbor_rekognition.decision import Decision, Source, Status
from thumbor_rekognition.stores import redis as redis_store

TIMEOUT = 0.5
# As in test_redis.py: the contract checks what is kept, not how soon a store gives up.
CONTRACT_TIMEOUT = 5.0


def key_on(cluster: RedisCluster, store: redis_store.Store, node: int, stem: str) -> str:
    """A decision key whose partition lives on one node of the cluster."""
    for number in itertools.count():
        key = f"host/{stem}-{number}.jpg"
        partition = redis_store.TAGS[zlib.crc32(key.encode()) % redis_store.PARTITIONS]
        if cluster.master_of(f"{store.prefix}{{{partition}}}rd") is cluster.nodes[node]:
            return key
    raise AssertionError("unreachable")


class TestRedisClusterStore(StoreContract):
    @pytest.fixture
    def make_store(
        self,
        redis_cluster: RedisCluster,  # noqa: F811
    ) -> Iterator[MakeStore]:
        prefix = f"test-{uuid.uuid4().hex[:12]}:"
        nodes = itertools.cycle(redis_cluster.nodes)
        opened: list[redis_store.Store] = []

        def make() -> stores.Store:
            # Each store names another node: any node leads to the whole cluster.
            opened.append(
                redis_store.Store(
                    url=next(nodes).url, prefix=prefix, timeout=CONTRACT_TIMEOUT, cluster=True
                )
            )
            return opened[-1]

        yield make
        for store in opened:
            store.close()

    def forget_order_by_time(self, store: stores.Store) -> None:
        assert isinstance(store, redis_store.Store)
        forget_order_by_time(store)

    @pytest.mark.timing
    def test_a_change_published_on_any_master_reaches_every_listener_within_a_second(
        self,
        make_store: MakeStore,
        redis_cluster: RedisCluster,  # noqa: F811
    ) -> None:
        writer = make_store()
        assert isinstance(writer, redis_store.Store)
        listeners = [make_store() for _ in range(4)]
        heard = [Changes() for _ in listeners]
        for listener, changes in zip(listeners, heard, strict=True):
            listener.subscribe(changes)
            assert changes.wait_for(None, 5), "a listener never connected"
        # One key per master: whichever node a listener is on, two of them are published
        # on another node.
        keys = [key_on(redis_cluster, writer, node, "spread") for node in range(3)]

        for key in keys:
            save(writer, decision(key, status=Status.REJECTED))

        for changes in heard:
            assert all(changes.wait_for(key, 1.0) for key in keys)

    def test_the_data_of_a_store_is_spread_over_every_master(
        self,
        make_store: MakeStore,
        redis_cluster: RedisCluster,  # noqa: F811
    ) -> None:
        store = make_store()
        assert isinstance(store, redis_store.Store)
        for number in range(200):
            save(store, decision(f"host/{number}.jpg", sha256=f"{number:064x}"))

        per_node = []
        for node in redis_cluster.nodes:
            with redis.Redis(port=node.port) as client:
                per_node.append(sum(1 for _ in client.scan_iter(store.prefix + "*")))

        assert all(count > 0 for count in per_node)


def test_a_store_finds_the_cluster_from_any_node_named_when_the_first_is_down(
    tmp_path: Path,
) -> None:
    with RedisCluster(tmp_path / "cluster", replicas=1) as cluster:
        down = cluster.nodes[0]
        down.kill()
        cluster.wait_until_serving()
        urls = ",".join(node.url for node in cluster.nodes)
        store = redis_store.Store(url=urls, prefix="many:", timeout=TIMEOUT, cluster=True)
        alone = redis_store.Store(url=down.url, prefix="many:", timeout=TIMEOUT, cluster=True)

        written = save_eventually(store, decision("host/a.jpg"), seconds=10)

        assert store.get("host/a.jpg") == written
        with pytest.raises(stores.StoreUnavailable):
            alone.get("host/a.jpg")
        store.close()
        alone.close()


class TestAMasterLost:
    """A cluster of the test's own: three masters, no replicas; one of them is killed."""

    @pytest.fixture
    def cluster(self, tmp_path: Path) -> Iterator[RedisCluster]:
        with RedisCluster(tmp_path / "cluster") as cluster:
            yield cluster

    @pytest.mark.timing
    def test_its_pictures_are_unavailable_quickly_others_still_served_and_all_back_after_restart(
        self, cluster: RedisCluster
    ) -> None:
        store = redis_store.Store(url=cluster.url, prefix="lost:", timeout=TIMEOUT, cluster=True)
        kept = {node: key_on(cluster, store, node, "kept") for node in range(3)}
        for key in kept.values():
            save(store, decision(key, status=Status.REJECTED))
        lost = cluster.nodes[1]
        if lost is cluster.nodes[0]:
            raise AssertionError("the URL's node must survive for this test")

        lost.kill()
        started = time.monotonic()
        with pytest.raises(stores.StoreUnavailable):
            store.get(kept[1])
        failed_after = time.monotonic() - started
        others = [store.get(kept[0]), store.get(kept[2])]
        lost.start()
        cluster.wait_until_serving()
        back = store_get_eventually(store, kept[1], seconds=10)

        assert failed_after < 3 * TIMEOUT + 1.0
        assert [item and item.status for item in others] == [Status.REJECTED] * 2
        assert back is not None
        assert back.status is Status.REJECTED
        store.close()


class TestAFailover:
    """Three masters with a replica each; decisions wait for one replica (WAIT)."""

    @pytest.fixture
    def cluster(self, tmp_path: Path) -> Iterator[RedisCluster]:
        with RedisCluster(tmp_path / "cluster", replicas=1) as cluster:
            yield cluster

    def test_no_acknowledged_decision_is_lost_when_a_master_is_killed(
        self, cluster: RedisCluster
    ) -> None:
        store = redis_store.Store(
            url=cluster.url, prefix="failover:", timeout=2.0, cluster=True, wait_replicas=1
        )
        saved = [
            save(store, decision(f"host/{number}.jpg", sha256=f"{number:064x}"))
            for number in range(300)
        ]
        victim = cluster.master_of(f"failover:{{{redis_store.TAGS[0]}}}rd")

        victim.kill()
        time.sleep(RedisCluster.NODE_TIMEOUT_MS / 1000)
        cluster.wait_until_serving()
        reader = redis_store.Store(
            url=next(n for n in cluster.nodes if n is not victim).url,
            prefix="failover:",
            timeout=2.0,
            cluster=True,
        )
        found = [store_get_eventually(reader, item.key, seconds=10) for item in saved]

        assert found == saved
        store.close()
        reader.close()

    def test_a_promoted_replica_takes_writes_without_a_replica_of_its_own(
        self, cluster: RedisCluster
    ) -> None:
        store = redis_store.Store(
            url=cluster.url, prefix="promoted:", timeout=TIMEOUT, cluster=True, wait_replicas=1
        )
        victim_index = 1
        key = key_on(cluster, store, victim_index, "promoted")
        save(store, decision(key))
        victim = cluster.nodes[victim_index]

        victim.kill()
        time.sleep(RedisCluster.NODE_TIMEOUT_MS / 1000)
        cluster.wait_until_serving()
        rejected = save_eventually(store, decision(key, status=Status.REJECTED), seconds=10)
        again = save(store, decision(f"{key}?again", status=Status.REJECTED))

        assert rejected.status is Status.REJECTED
        assert store.get(key) == rejected
        assert again.status is Status.REJECTED
        store.close()

    def test_a_decision_and_its_announcements_survive_the_loss_of_their_master_together(
        self, cluster: RedisCluster
    ) -> None:
        store = redis_store.Store(
            url=cluster.url, prefix="together:", timeout=2.0, cluster=True, wait_replicas=1
        )
        store.announcer = Announcer()
        keys = [key_on(cluster, store, 1, f"together-{number}") for number in range(20)]
        for key in keys:
            save(store, decision(key, status=Status.REJECTED, source=Source.MANUAL))

        cluster.nodes[1].kill()
        time.sleep(RedisCluster.NODE_TIMEOUT_MS / 1000)
        cluster.wait_until_serving()
        announced = claim_eventually(store, "webhook", len(keys), seconds=10)

        assert sorted(item.key for item in announced) == sorted(keys)
        assert {item.payload for item in announced} == {"None->rejected"}
        store.close()


def claim_eventually(
    store: redis_store.Store, topic: str, count: int, seconds: float
) -> list[stores.OutboxItem]:
    """Items of a topic claimed, and completed, until there are count of them (after a
    failover): the next item of a key is claimed once the one before is complete."""
    deadline = time.monotonic() + seconds
    claimed: list[stores.OutboxItem] = []
    while len(claimed) < count:
        try:
            taken = store.claim(time.time(), 60.0, count, topic)
            for item in taken:
                store.complete(item)
            claimed += taken
        except stores.StoreUnavailable:
            if time.monotonic() > deadline:
                raise
        assert time.monotonic() < deadline, f"{len(claimed)} of {count} items claimed"
        time.sleep(0.1)
    return claimed


class TestTheListenersNodeLost:
    @pytest.fixture
    def cluster(self, tmp_path: Path) -> Iterator[RedisCluster]:
        with RedisCluster(tmp_path / "cluster", replicas=1) as cluster:
            yield cluster

    def test_a_listener_whose_node_dies_moves_to_another_and_hears_changes_again(
        self, cluster: RedisCluster
    ) -> None:
        listening = redis_store.Store(url=cluster.url, prefix="moved:", timeout=1.0, cluster=True)
        writer = redis_store.Store(url=cluster.url, prefix="moved:", timeout=1.0, cluster=True)
        # Connected before any node dies: a store finds the cluster from its URL's node.
        writer.get("host/before.jpg")
        changes = Changes()
        listening.subscribe(changes)
        assert changes.wait_for(None, 5), "the listener never connected"
        listened_on = [node for node in cluster.nodes if subscribed(node.port)]
        assert len(listened_on) == 1

        listened_on[0].kill()
        told = changes.wait_for(None, 15)
        cluster.wait_until_serving()
        save_eventually(writer, decision("host/after.jpg", status=Status.REJECTED), seconds=10)

        assert told
        assert changes.wait_for("host/after.jpg", 1.0)
        listening.close()
        writer.close()


def subscribed(port: int) -> bool:
    with redis.Redis(port=port) as client:
        return any(int(info.get("sub", 0)) > 0 for info in client.client_list())


def save_eventually(store: redis_store.Store, item: Decision, seconds: float) -> Decision:
    """Save once the store answers for the key again (after a failover)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return save(store, item)
        except stores.StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class TestAReplicaThatDoesNotAnswer:
    @pytest.fixture
    def cluster(self, tmp_path: Path) -> Iterator[RedisCluster]:
        with RedisCluster(tmp_path / "cluster", replicas=1) as cluster:
            yield cluster

    def test_a_decision_its_replica_did_not_take_is_not_answered_as_saved(
        self, cluster: RedisCluster
    ) -> None:
        store = redis_store.Store(
            url=cluster.url, prefix="frozen:", timeout=TIMEOUT, cluster=True, wait_replicas=1
        )
        key = key_on(cluster, store, 0, "frozen")
        save(store, decision(key))
        replica = cluster.replica_of(cluster.master_of(store._of_key(key) + "rd"))

        replica.freeze()
        try:
            with pytest.raises(stores.StoreUnavailable, match="0 of 1 replicas"):
                save(store, decision(key, status=Status.REJECTED))
        finally:
            replica.thaw()
        store.close()

    def test_a_decision_its_replica_did_not_take_is_undone_before_it_is_answered(
        self, cluster: RedisCluster
    ) -> None:
        store = redis_store.Store(
            url=cluster.url, prefix="undone:", timeout=TIMEOUT, cluster=True, wait_replicas=1
        )
        announcer = Announcer()
        store.announcer = announcer
        key = key_on(cluster, store, 0, "undone")
        approved = save(store, decision(key))
        replica = cluster.replica_of(cluster.master_of(store._of_key(key) + "rd"))

        replica.freeze()
        try:
            with pytest.raises(stores.StoreUnavailable):
                save(store, decision(key, status=Status.REJECTED, source=Source.MANUAL))
            stored = store.get(key)
        finally:
            replica.thaw()
        announced = claim_eventually(store, "webhook", 3, seconds=10)

        assert stored == approved
        # Announced as the change back, in case the first was delivered meanwhile.
        assert [
            item.payload for item in sorted(announced, key=lambda i: int(i.id.split("/")[1]))
        ] == [
            "None->approved",
            "approved->rejected",
            "rejected->approved",
        ]
        store.close()


def store_get_eventually(store: redis_store.Store, key: str, seconds: float) -> Decision | None:
    """A decision once the store answers for its key again (a cluster finding its layout)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return store.get(key)
        except stores.StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
