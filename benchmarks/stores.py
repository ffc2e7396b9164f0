"""Print the decision stores' figures: bytes per decision, lookup latency at scale, cached hits.

    python benchmarks/stores.py [--decisions 100000] [--sqlite-decisions 10000000]
                                [--seconds 4] [--rounds 5] [--skip redis,cluster,sqlite,scale,hits]

Figures, from one run on this machine:
- Redis: used_memory after minus before, divided by the decisions saved through the
  store's own save() on an empty redis-server (no AOF, so no rewrite buffer counts), for a
  plain approved picture, one with two labels (approved, and rejected with its reason),
  and one whose first request also recorded an original's and a result's path. Each
  decision carries the history entry the plugin writes with it. The same on a Redis
  Cluster of three masters (the sum of their used_memory).
- SQLite: file size divided by decisions saved through save(), and, for --sqlite-decisions
  decisions built in bulk through the store's own schema, the file size per decision and
  the latency of get() and find_by_hash() (p50, p99, page cache warm).
- Result-storage hits: stock Thumbor against Thumbor with the plugin on each store (DynamoDB
  on moto's server), three processes of each taken in turn in every round (servers on one
  core, load generator on the other), in requests per second and in CPU time of the
  Thumbor process per hit; also against stock Thumbor building its filter table once per
  process as the plugin makes it do, which leaves the gate's own work.
Keys are 53 characters (``cdn.example.com/photos/2024/05/img-00012345-large.jpg``); each
key character costs about two bytes in either store (the decision and the hash index).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import CLIENT_CPUS, SERVER_CPUS, photo_like  # noqa: E402
from benchmarks.run import (  # noqa: E402
    FILTER_TABLE,
    PROCESSES,
    SHARED,
    STOCK_HANDLER_LISTS,
    compare_hits,
    percentile,
)
from tests.fakes.rekognition import FakeRekognition  # noqa: E402
from tests.moto_server import moto_server  # noqa: E402
from tests.redis_server import RedisCluster, RedisServer  # noqa: E402
from tests.servers import base_config  # noqa: E402
from tests.servers import stock_config as stock_thumbor  # noqa: E402
from thumbor_rekognition import stores  # noqa: E402
from thumbor_rekognition.decision import Decision, Event, Label, Reason, Source, Status  # noqa: E402
from thumbor_rekognition.moderation.verdicts import event_for  # noqa: E402
from thumbor_rekognition.stores import records, sqlite, sqlite_schema  # noqa: E402
from thumbor_rekognition.stores import redis as redis_store  # noqa: E402

POLICY = "5f0c2a9d1e7b3c48"
# A 7.x answer for a beach photo: a parent and its child, as Rekognition reports them.
LABELS = (
    Label("Swimwear or Underwear", "", 1, 87.31793212890625),
    Label("Female Swimwear or Underwear", "Swimwear or Underwear", 2, 87.31793212890625),
)
REASON = Reason(
    "Female Swimwear or Underwear",
    "Swimwear or Underwear",
    87.31793212890625,
    0.5,
    "female_swimwear_or_underwear",
)
NO_AOF = ["--appendonly", "no"]


def key_of(number: int) -> str:
    return f"cdn.example.com/photos/2024/{number % 12 + 1:02d}/img-{number:08d}-large.jpg"


def sha_of(number: int) -> str:
    return hashlib.sha256(number.to_bytes(8, "big")).hexdigest()


def decision(number: int, kind: str) -> tuple[Decision, Event]:
    """A decision as the moderator builds it for a Rekognition 7.0 answer, and its event."""
    key = key_of(number)
    base = Decision(
        key=key,
        url="http://" + key,
        sha256=sha_of(number),
        status=Status.PENDING,
        source=Source.AUTO,
        backend="rekognition",
    ).replace(policy=POLICY, min_confidence=50.0, width=1600, height=1067)
    status, labels, reasons = Status.APPROVED, (), ()
    if kind in ("labels", "rejected"):
        labels = LABELS
    if kind == "rejected":
        status, reasons = Status.REJECTED, (REASON,)
    made = base.replace(status=status, labels=labels, reasons=reasons, model_version="7.0")
    return made, event_for(made)


def paths_of(number: int) -> list[str]:
    """What the first request for a picture records: where its original and a result are."""
    key = key_of(number)
    return [stores.STORAGE_PATH_MARK + "http%3A//" + key, "/unsafe/300x200/" + key]


KINDS = {
    "plain": "approved, no labels",
    "labels": "approved, two labels",
    "rejected": "rejected, two labels and a reason",
    "paths": "approved, no labels, + 2 recorded paths",
}


def fill(store: stores.Store, kind: str, count: int, start: int = 0) -> float:
    """Save count decisions of a kind; saves per second."""
    started = time.perf_counter()
    for number in range(start, start + count):
        made, event = decision(number, "plain" if kind == "paths" else kind)
        store.save(made, event)
        if kind == "paths":
            store.add_results(made.key, paths_of(number))
    return count / (time.perf_counter() - started)


def latencies(call: Callable[[int], object], numbers: list[int]) -> list[float]:
    timings = []
    for number in numbers:
        started = time.perf_counter()
        found = call(number)
        timings.append((time.perf_counter() - started) * 1e6)
        if found is None:
            raise RuntimeError(f"nothing found for decision {number}")
    return timings


def spread(count: int, samples: int) -> list[int]:
    step = max(1, count // samples)
    return [(number * 7919) % count for number in range(0, count, step)][:samples]


def used_memory(ports: list[int]) -> int:
    total = 0
    for port in ports:
        with redis.Redis(port=port) as client:
            total += int(client.info("memory")["used_memory"])
    return total


def redis_figures(work: Path, count: int) -> None:
    print(f"Redis, {count:,} decisions saved through the store, one redis-server (no AOF)")
    for kind, label in KINDS.items():
        with RedisServer(work / f"redis-{kind}", options=NO_AOF) as server:
            store = redis_store.Store(url=server.url, timeout=5.0)
            store.get("warm-up")
            before = used_memory([server.port])
            rate = fill(store, kind, count)
            per_decision = (used_memory([server.port]) - before) / count
            line = f"  {label:<40} {per_decision:6.0f} bytes/decision  ({rate:,.0f} saves/s)"
            if kind == "plain":
                gets = latencies(lambda n, s=store: s.get(key_of(n)), spread(count, 20_000))
                p50, p99 = percentile(gets, 0.5), percentile(gets, 0.99)
                line += f"; get() p50 {p50:.0f} us, p99 {p99:.0f} us"
            print(line)
            store.close()


def cluster_figures(work: Path, count: int) -> None:
    print(f"Redis Cluster of 3 masters (no AOF), {count:,} decisions (sum of their used_memory)")
    for kind in ("plain", "labels"):
        with RedisCluster(work / f"cluster-{kind}", options=NO_AOF) as cluster:
            ports = [node.port for node in cluster.nodes]
            store = redis_store.Store(url=cluster.url, timeout=5.0, cluster=True)
            store.get("warm-up")
            before = used_memory(ports)
            rate = fill(store, kind, count)
            per_decision = (used_memory(ports) - before) / count
            line = f"  {KINDS[kind]:<40} {per_decision:6.0f} bytes/decision  ({rate:,.0f} saves/s)"
            if kind == "plain":
                started = time.perf_counter()
                page, _ = store.page(limit=100)
                listed = (time.perf_counter() - started) * 1000
                assert len(page) == 100
                line += f"; a page of 100 in {listed:.1f} ms"
            print(line)
            store.close()


def file_bytes(path: str) -> int:
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def sqlite_figures(work: Path, count: int) -> None:
    print(f"SQLite, {count:,} decisions saved through the store (file size after a checkpoint)")
    for kind, label in KINDS.items():
        path = str(work / f"sqlite-{kind}.sqlite3")
        store = sqlite.Store(path=path)
        store.get("warm-up")
        before = file_bytes(path)
        rate = fill(store, kind, count)
        store.close()
        per_decision = (file_bytes(path) - before) / count
        print(f"  {label:<40} {per_decision:6.0f} bytes/decision  ({rate:,.0f} saves/s)")


def bulk_rows(count: int) -> Iterator[tuple[Any, ...]]:
    """Rows of the store's table in key order: one template record, with each picture's
    own SHA-256 written into it, and the history entry the plugin writes with it."""
    made, event = decision(0, "plain")
    template = records.encode_decision(made)
    history = records.join([records.encode_event(event)])
    for month in range(12):
        for number in range(month, count, 12):
            digest = hashlib.sha256(number.to_bytes(8, "big")).digest()
            yield (
                key_of(number),
                digest[: sqlite.HASH_PREFIX],
                0,
                template[:1] + digest + template[33:],
                history,
            )


def scale_figures(work: Path, count: int) -> None:
    path = str(work / "scale.sqlite3")
    sqlite.Store(path=path).get("creates the schema")
    started = time.monotonic()
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA cache_size = -1000000")
    # The hash index is built after the rows, as CREATE INDEX sorts once.
    connection.execute("DROP INDEX pictures_by_sha")
    connection.execute("BEGIN")
    connection.executemany(
        "INSERT INTO pictures (key, sha, status, record, history) VALUES (?, ?, ?, ?, ?)",
        bulk_rows(count),
    )
    connection.execute("INSERT INTO tallies VALUES ('approved.auto', ?)", (count,))
    connection.execute("COMMIT")
    for statement in sqlite_schema.SCHEMA.split(";"):
        if "pictures_by_sha" in statement:
            connection.execute(statement)
    connection.close()
    built = time.monotonic() - started
    size = file_bytes(path)
    store = sqlite.Store(path=path)
    numbers = spread(count, 20_000)
    latencies(lambda n: store.get(key_of(n)), numbers[:2000])
    gets = latencies(lambda n: store.get(key_of(n)), numbers)
    hashes = latencies(lambda n: store.find_by_hash(sha_of(n)), numbers)
    started = time.perf_counter()
    page, _ = store.page(Status.APPROVED, limit=100, cursor=key_of(count // 2))
    listed = (time.perf_counter() - started) * 1000
    assert len(page) == 100
    store.close()
    print(
        f"SQLite, {count:,} decisions built in bulk through the store's schema "
        f"({built:.0f} s): {size / 1e9:.2f} GB"
    )
    print(f"  {size / count:6.0f} bytes/decision (approved, no labels; rows in key order)")
    for name, timings in (("get()", gets), ("find_by_hash()", hashes)):
        p50, p99 = percentile(timings, 0.5), percentile(timings, 0.99)
        print(f"  {name:<15} p50 {p50:5.0f} us, p99 {p99:5.0f} us")
    print(f"  a page of 100 approved decisions in {listed:.1f} ms (20,000 random lookups each)")


def hit_figures(work: Path, fake: FakeRekognition, seconds: float, rounds: int) -> None:
    images = work / "images"
    images.mkdir()
    (images / "photo.jpg").write_bytes(photo_like(1600, 1067))
    redis_server = RedisServer(work / "hits-redis")
    cluster = RedisCluster(work / "hits-cluster")
    redis_server.start()
    cluster.start()
    assert redis_server.process is not None
    for node in [redis_server, *cluster.nodes]:
        assert node.process is not None
        os.sched_setaffinity(node.process.pid, SERVER_CPUS)
    configs: dict[str, dict[str, Any]] = {
        "stock": stock_thumbor(work / "stock", images, STOCK_HANDLER_LISTS),
        SHARED: stock_thumbor(work / "shared", images, [*STOCK_HANDLER_LISTS, FILTER_TABLE]),
    }
    for name, extra in (
        ("sqlite", {}),
        (
            "redis",
            {"MODERATION_DECISION_STORE": "thumbor_rekognition.stores.redis",
             "MODERATION_REDIS_URL": redis_server.url},
        ),
        (
            "redis cluster",
            {"MODERATION_DECISION_STORE": "thumbor_rekognition.stores.redis",
             "MODERATION_REDIS_URL": cluster.url, "MODERATION_REDIS_CLUSTER": True},
        ),
    ):  # fmt: skip
        config = base_config(work / name.replace(" ", "-"), images, fake.url)
        config.update(extra, MODERATION_CACHE_TTL_SECONDS=2.0)
        configs[name] = config
    path = "/unsafe/300x200/photo.jpg"
    try:
        # moto's server in this process, on the load generator's core.
        with moto_server() as endpoint:
            config = base_config(work / "dynamodb", images, fake.url)
            config.update(
                MODERATION_DECISION_STORE="thumbor_rekognition.stores.dynamodb",
                MODERATION_DYNAMODB_TABLE="moderation",
                MODERATION_DYNAMODB_ENDPOINT_URL=endpoint,
                MODERATION_DYNAMODB_CREATE_TABLE=True,
                MODERATION_CACHE_TTL_SECONDS=2.0,
            )
            configs["dynamodb"] = config
            hits = compare_hits(work, configs, path, seconds, rounds)
    finally:
        redis_server.stop()
        cluster.stop()
    print(
        f"result-storage hits, 4 keep-alive clients, {PROCESSES} Thumbor processes of each "
        f"kind in turn, {rounds} rounds; ratios to stock Thumbor (goals >= 0.97x, <= 1.01x) "
        f"and to {SHARED!r} (the gate's own work)"
    )
    stock, shared = hits["stock"], hits[SHARED]
    for name, figures in hits.items():
        print(
            f"  {name:<23} {figures.rate:6.0f} req/s {figures.rate / stock.rate:5.3f}x"
            f" {figures.rate / shared.rate:5.3f}x"
            f"   {figures.cpu_per_hit:5.0f} us CPU/hit"
            f" {figures.cpu_per_hit / stock.cpu_per_hit:5.3f}x"
            f" {figures.cpu_per_hit / shared.cpu_per_hit:5.3f}x"
            f"  (per process, req/s: {figures.spread()})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--sqlite-decisions", type=int, default=10_000_000)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip", default="", help="any of redis,cluster,sqlite,scale,hits")
    arguments = parser.parse_args()
    skip = set(filter(None, arguments.skip.split(",")))
    os.sched_setaffinity(0, CLIENT_CPUS)
    with tempfile.TemporaryDirectory() as directory, FakeRekognition() as fake:
        work = Path(directory)
        if "redis" not in skip:
            redis_figures(work, arguments.decisions)
        if "cluster" not in skip:
            cluster_figures(work, arguments.decisions)
        if "sqlite" not in skip:
            sqlite_figures(work, arguments.decisions)
        if "scale" not in skip:
            scale_figures(work, arguments.sqlite_decisions)
        if "hits" not in skip:
            hit_figures(work, fake, arguments.seconds, arguments.rounds)


if __name__ == "__main__":
    main()
