"""Print the plugin's cluster figures: two Thumbor nodes sharing Redis, against SQLite.

    python benchmarks/cluster.py [--seconds 4] [--rounds 5] [--pictures 5] [--overrides 10]

Figures, from one run on this machine: backend calls per picture under a burst of 100
concurrent first requests spread over two nodes sharing a Redis store, and over one
Thumbor with --processes=2 on the SQLite store; how long an override made through node
A's admin API takes to be enforced by node B (decisions cached 30 s in each node, so only
Redis's change notifications explain it); and throughput on result-storage hits with the
Redis store vs the SQLite store (servers and redis-server on one core, load generator on
the other, the load generator of benchmarks/run.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import CLIENT_CPUS, CPUS, SERVER_CPUS, photo_like  # noqa: E402
from benchmarks.run import hammer, percentile  # noqa: E402
from tests.fakes.rekognition import FakeRekognition  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.servers import ThumborServer, base_config  # noqa: E402

BURST = 100
BACKEND_DELAY = 0.5
TOKEN = "cluster-benchmark-token-0d9a51c2"
STATUS_HEADER = "X-Moderation-Status"
POLL_INTERVAL = 0.002
ALL_CPUS = set(CPUS)


def redis_config(root: Path, images: Path, endpoint: str, redis_url: str) -> dict[str, Any]:
    """A node of the cluster: its own storage and result storage, the shared Redis."""
    config = base_config(root, images, endpoint)
    config.update(
        {
            "MODERATION_DECISION_STORE": "thumbor_rekognition.stores.redis",
            "MODERATION_REDIS_URL": redis_url,
            "MODERATION_ADMIN_TOKEN": TOKEN,
            # Both nodes are on this machine: one folder stands for the shared bucket.
            "MODERATION_QUARANTINE_PATH": str(root.parent / "quarantine"),
        }
    )
    del config["MODERATION_SQLITE_PATH"]
    return config


def sqlite_config(root: Path, images: Path, endpoint: str) -> dict[str, Any]:
    config = base_config(root, images, endpoint)
    config["MODERATION_QUARANTINE_PATH"] = str(root / "quarantine")
    return config


def start_redis(directory: Path, cpus: set[int]) -> RedisServer:
    redis = RedisServer(directory)
    redis.start()
    assert redis.process is not None
    os.sched_setaffinity(redis.process.pid, cpus)
    return redis


def timed_status(node: ThumborServer, path: str) -> tuple[str | None, float]:
    started = time.monotonic()
    response = node.get(path)
    return response.header(STATUS_HEADER), time.monotonic() - started


def bursts(
    nodes: list[ThumborServer], images: Path, fake: FakeRekognition, stem: str, pictures: int
) -> tuple[list[int], list[float], list[str | None]]:
    """Backend calls per picture, request latencies and statuses: one burst per new picture."""
    calls: list[int] = []
    latencies: list[float] = []
    statuses: list[str | None] = []
    for index in range(pictures):
        name = f"{stem}-{index}.jpg"
        (images / name).write_bytes(photo_like(1024, 700 + index))
        requests = [
            (nodes[number % len(nodes)], f"/unsafe/{100 + number}x{80 + number}/{name}")
            for number in range(BURST)
        ]
        before = fake.call_count
        with ThreadPoolExecutor(max_workers=BURST) as pool:
            answers = list(pool.map(lambda request: timed_status(*request), requests))
        calls.append(fake.call_count - before)
        statuses += [status for status, _ in answers]
        latencies += [seconds for _, seconds in answers]
    return calls, latencies, statuses


def print_bursts(
    label: str, calls: list[int], latencies: list[float], statuses: list[str | None]
) -> None:
    per_picture = sum(calls) / len(calls)
    approved = statuses.count("approved")
    print(
        f"  {label:<30} {per_picture:5.2f} call/picture over {len(calls)} pictures "
        f"(calls: {', '.join(map(str, calls))}); {approved}/{len(statuses)} approved; "
        f"latency p50 {percentile(latencies, 0.5):.2f} s, max {max(latencies):.2f} s"
    )


def concurrency(work: Path, fake: FakeRekognition, redis_url: str, pictures: int) -> None:
    images = work / "burst-images"
    images.mkdir()
    fake.reset()
    fake.fail("slow", delay=BACKEND_DELAY)
    a, b = (
        ThumborServer(
            work / name,
            redis_config(work / name, images, fake.url, redis_url),
            cpus=ALL_CPUS,
        ).start()
        for name in ("burst-a", "burst-b")
    )
    try:
        cluster = bursts([a, b], images, fake, "cluster", pictures)
    finally:
        a.stop()
        b.stop()
    single = ThumborServer(
        work / "burst-sqlite",
        sqlite_config(work / "burst-sqlite", images, fake.url),
        processes=2,
        cpus=ALL_CPUS,
    ).start()
    try:
        processes = bursts([single], images, fake, "processes", pictures)
    finally:
        single.stop()
        fake.clear_faults()
    print(
        f"backend calls under a burst of {BURST} concurrent first requests, "
        f"each at another size (backend answers in {BACKEND_DELAY * 1000:.0f} ms)"
    )
    print_bursts("2 nodes, Redis store", *cluster)
    print_bursts("1 node --processes=2, SQLite", *processes)


def override(node: ThumborServer, name: str, status: str) -> None:
    body = json.dumps({"status": status, "note": "benchmark", "actor": "benchmark"})
    response = node.request(
        "PUT",
        f"/moderation/image?url={quote(name, safe='')}",
        body=body.encode(),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    if response.status != 200:
        raise RuntimeError(f"override answered {response.status}: {response.body[:200]!r}")


def enforced_after(node: ThumborServer, path: str, status: str, timeout: float = 10.0) -> float:
    """Poll one keep-alive connection every few ms until the node answers with this status."""
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.getheader(STATUS_HEADER) == status:
                return time.monotonic()
            time.sleep(POLL_INTERVAL)
    finally:
        connection.close()
    raise RuntimeError(f"{path} not {status} within {timeout} s")


def propagation(work: Path, fake: FakeRekognition, redis_url: str, overrides: int) -> None:
    images = work / "override-images"
    images.mkdir()
    fake.reset()
    a, b = (
        ThumborServer(
            work / name,
            dict(
                redis_config(work / name, images, fake.url, redis_url),
                MODERATION_CACHE_TTL_SECONDS=30.0,
            ),
            cpus=ALL_CPUS,
        ).start()
        for name in ("override-a", "override-b")
    )
    total: list[float] = []
    after_put: list[float] = []
    puts: list[float] = []
    try:
        for index in range((overrides + 1) // 2):
            name = f"override-{index}.jpg"
            (images / name).write_bytes(photo_like(800, 600 - index))
            path = f"/unsafe/200x150/{name}"
            for node in (a, b, b):
                # B answers from memory and result storage from now on.
                if node.get(path).header(STATUS_HEADER) != "approved":
                    raise RuntimeError(f"{name} not approved")
            for status in ("rejected", "approved")[: overrides - 2 * index]:
                started = time.monotonic()
                override(a, name, status)
                answered = time.monotonic()
                enforced = enforced_after(b, path, status)
                total.append(enforced - started)
                after_put.append(enforced - answered)
                puts.append(answered - started)
    finally:
        a.stop()
        b.stop()
    print(
        f"override made on node A, enforced by node B (decisions cached 30 s; B polled every "
        f"{POLL_INTERVAL * 1000:.0f} ms; {len(total)} overrides, reject and approve)"
    )
    print(
        f"  from PUT sent                {_ms(statistics.median(total))} median, "
        f"{_ms(percentile(total, 0.9))} p90, {_ms(max(total))} max"
    )
    print(
        f"  from PUT answered            {_ms(statistics.median(after_put))} median, "
        f"{_ms(max(after_put))} max   (the PUT itself: {_ms(statistics.median(puts))} median)"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:6.1f} ms"


def throughput(work: Path, fake: FakeRekognition, seconds: float, rounds: int) -> None:
    images = work / "throughput-images"
    images.mkdir()
    (images / "photo.jpg").write_bytes(photo_like(1600, 1067))
    redis = start_redis(work / "throughput-redis", SERVER_CPUS)
    configs = {
        "Redis store": dict(
            redis_config(work / "tp-redis", images, fake.url, redis.url),
            MODERATION_CACHE_TTL_SECONDS=2.0,
        ),
        "SQLite store": dict(
            sqlite_config(work / "tp-sqlite", images, fake.url), MODERATION_CACHE_TTL_SECONDS=2.0
        ),
    }
    servers = {
        label: ThumborServer(
            Path(config["FILE_STORAGE_ROOT_PATH"]).parent, config, cpus=SERVER_CPUS
        )
        for label, config in configs.items()
    }
    path = "/unsafe/300x200/photo.jpg"
    results: dict[str, list[float]] = {label: [] for label in servers}
    ratios: list[float] = []
    try:
        for server in servers.values():
            server.start()
            for _ in range(3):
                if server.get(path).header(STATUS_HEADER) != "approved":
                    raise RuntimeError("photo.jpg not approved")
        os.sched_setaffinity(0, CLIENT_CPUS)
        for _ in range(rounds):
            for label, server in servers.items():
                results[label].append(hammer(server.port, path, seconds, clients=4))
            ratios.append(results["Redis store"][-1] / results["SQLite store"][-1])
    finally:
        os.sched_setaffinity(0, ALL_CPUS)
        for server in servers.values():
            server.stop()
        redis.stop()
    print(
        "result-storage hits (decision cached 2 s per process, then read from the store), "
        "1 Thumbor process, 4 keep-alive clients"
    )
    for label, values in results.items():
        rounds_text = ", ".join(f"{value:.0f}" for value in values)
        print(f"  {label:<14} {statistics.median(values):8.0f} req/s  (rounds: {rounds_text})")
    print(
        f"  Redis / SQLite {statistics.median(ratios):8.3f}x  median of {rounds} back-to-back "
        f"rounds ({', '.join(f'{ratio:.3f}' for ratio in ratios)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each load run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating Redis/SQLite rounds")
    parser.add_argument("--pictures", type=int, default=5, help="bursts, one new picture each")
    parser.add_argument("--overrides", type=int, default=10, help="overrides to time")
    arguments = parser.parse_args()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"{len(CPUS)} CPUs (load average {load}); throughput: servers and redis-server on "
        f"{sorted(SERVER_CPUS)}, client on {sorted(CLIENT_CPUS)}"
    )
    with tempfile.TemporaryDirectory() as directory, FakeRekognition() as fake:
        work = Path(directory)
        redis = start_redis(work / "redis", ALL_CPUS)
        try:
            concurrency(work, fake, redis.url, arguments.pictures)
            propagation(work, fake, redis.url, arguments.overrides)
        finally:
            redis.stop()
        throughput(work, fake, arguments.seconds, arguments.rounds)


if __name__ == "__main__":
    main()
