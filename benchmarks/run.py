"""Print the plugin's performance figures, each measured against stock Thumbor in the same run.

    make bench            # or: python benchmarks/run.py [--seconds 5] [--rounds 3]

Figures, each against stock Thumbor in the same run: result-storage hits in req/s (goal
>= 0.97x) and in CPU time per request (goal <= 1.01x) over three processes of each, and
against stock Thumbor building its filter table once per process as the plugin makes it
do (what is left is the gate's own work); the gate's throughput on a rejected image,
backend calls under concurrent first requests, first views of a still picture and of an
animation over a backend answering in --delay seconds, the upload path, preparation of a
12 MP JPEG against stock Thumbor's first render of it (goal <= 0.5x), and the offline
model's warm latency per image against that preparation, with its process memory.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    CLIENT_CPUS,
    SERVER_CPUS,
    percentile,
    photo_like,
    rss_mb,
)
from benchmarks.first_view import first_view  # noqa: E402
from tests.fakes.rekognition import FakeRekognition  # noqa: E402
from tests.servers import STOCK_HANDLER_LISTS, ThumborServer, base_config  # noqa: E402
from tests.servers import stock_config as stock_thumbor  # noqa: E402
from thumbor_rekognition.preparation import prepare  # noqa: E402

REJECTED_COLOR = (220, 30, 30)
# Stock Thumbor building its filter table once per process, as the plugin makes it do:
# what is left between it and the plugin is the gate's own work.
FILTER_TABLE = "thumbor_rekognition.filter_table"
SHARED = "stock, one filter table"
# Server processes of each kind in the result-storage hit figures.
PROCESSES = 3
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 97.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 97.0},
]


def hammer(port: int, path: str, seconds: float, clients: int) -> float:
    """Requests per second over keep-alive connections from `clients` threads."""
    stop = time.monotonic() + seconds
    counts = [0] * clients
    failures: list[str] = []

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures.append(f"{response.status} for {path}")
                return
            counts[index] += 1
        connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(failures[0])
    return sum(counts) / (time.monotonic() - started)


def cpu_seconds(pid: int) -> float:
    """CPU time a process's threads have run, from /proc/<pid>/task/*/schedstat (in
    nanoseconds: /proc/<pid>/stat counts 10 ms ticks, too coarse for one round)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return total / 1e9


@dataclass
class Hits:
    """Result-storage hits of one kind of server: req/s and CPU per hit, per process."""

    rates: list[list[float]] = field(default_factory=list)
    cpu: list[list[float]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(value for values in self.rates for value in values)

    @property
    def cpu_per_hit(self) -> float:
        return statistics.median(value for values in self.cpu for value in values)

    def spread(self) -> str:
        """Each process's median req/s: how far memory layout alone moves one process."""
        return ", ".join(f"{statistics.median(values):.0f}" for values in self.rates)


def compare_hits(
    work: Path,
    configs: dict[str, dict[str, Any]],
    path: str,
    seconds: float,
    rounds: int,
    processes: int = PROCESSES,
) -> dict[str, Hits]:
    """Hammer `path` on `processes` Thumbor processes of each config, one at a time on the
    server core, in `rounds` rounds taking every process in turn.

    Several processes of each: one process's speed moves by a percent or two with where
    its memory happens to lie, as much as what is measured here.
    """
    servers = {
        name: [
            ThumborServer(work / f"{name.replace(' ', '-')}-{index}", config, cpus=SERVER_CPUS)
            for index in range(processes)
        ]
        for name, config in configs.items()
    }
    figures = {name: Hits() for name in servers}
    try:
        for name, group in servers.items():
            for server in group:
                server.start()
                for _ in range(3):
                    assert server.get(path).status == 200
                figures[name].rates.append([])
                figures[name].cpu.append([])
        for _ in range(rounds):
            for index in range(processes):
                for name, group in servers.items():
                    server = group[index]
                    assert server.process is not None
                    before = cpu_seconds(server.process.pid)
                    started = time.monotonic()
                    rate = hammer(server.port, path, seconds, clients=4)
                    served = rate * (time.monotonic() - started)
                    spent = cpu_seconds(server.process.pid) - before
                    figures[name].rates[index].append(rate)
                    figures[name].cpu[index].append(spent / served * 1e6)
    finally:
        for group in servers.values():
            for server in group:
                server.stop()
    return figures


def throughput(work: Path, fake: FakeRekognition, seconds: float, rounds: int) -> None:
    images = work / "images"
    images.mkdir()
    (images / "photo.jpg").write_bytes(photo_like(1600, 1067))
    (images / "rejected.jpg").write_bytes(photo_like(800, 600, REJECTED_COLOR))
    fake.respond(REJECTED_COLOR, NUDITY)

    stock_config = stock_thumbor(work / "stock", images, STOCK_HANDLER_LISTS)
    shared_config = stock_thumbor(work / "shared", images, [*STOCK_HANDLER_LISTS, FILTER_TABLE])
    plugin_config = base_config(work / "plugin", images, fake.url)
    plugin_config["MODERATION_CACHE_TTL_SECONDS"] = 2.0
    forbidden_config = dict(plugin_config, MODERATION_REJECTED_RESPONSE="forbidden")
    forbidden_config["MODERATION_SQLITE_PATH"] = str(work / "plugin" / "decisions.sqlite3")

    path = "/unsafe/300x200/photo.jpg"
    # Servers on one core, load generator on the other: less noise between rounds.
    hits = compare_hits(
        work,
        {"stock": stock_config, SHARED: shared_config, "plugin": plugin_config},
        path,
        seconds,
        rounds,
    )
    stock_hits, shared_hits, plugin_hits = hits["stock"], hits[SHARED], hits["plugin"]
    print(
        f"result-storage hits, 4 keep-alive clients, {PROCESSES} Thumbor processes of each "
        f"kind in turn, {rounds} rounds"
    )
    for label, figures in (
        ("stock Thumbor", stock_hits),
        (SHARED, shared_hits),
        ("with the plugin", plugin_hits),
    ):
        print(
            f"  {label:<24} {figures.rate:8.0f} req/s {figures.cpu_per_hit:8.0f} us CPU/hit"
            f"  (per process, req/s: {figures.spread()})"
        )
    print(
        f"  plugin / stock           {plugin_hits.rate / stock_hits.rate:8.3f}x      "
        f"{plugin_hits.cpu_per_hit / stock_hits.cpu_per_hit:8.3f}x"
        "           goals >= 0.97x and <= 1.01x"
    )
    print(
        f"  plugin / one-table stock {plugin_hits.rate / shared_hits.rate:8.3f}x      "
        f"{plugin_hits.cpu_per_hit / shared_hits.cpu_per_hit:8.3f}x"
        "           the gate's own work"
    )

    stock = ThumborServer(work / "stock", stock_config, cpus=SERVER_CPUS).start()
    plugin = ThumborServer(work / "plugin", plugin_config, cpus=SERVER_CPUS).start()
    try:
        rejected = "/unsafe/300x200/rejected.jpg"
        plugin.get(rejected)
        placeholder_rps = hammer(plugin.port, rejected, seconds, clients=4)
        stock_transform = hammer(stock.port, "/unsafe/300x200/rejected.jpg", seconds, clients=4)
    finally:
        stock.stop()
        plugin.stop()

    forbidden = ThumborServer(work / "plugin", forbidden_config, cpus=SERVER_CPUS).start()
    try:
        forbidden_rps = _hammer_status(forbidden.port, rejected, seconds, 403)
    finally:
        forbidden.stop()
    print("rejected image (decision cached in memory)")
    print(f"  gate, placeholder    {placeholder_rps:8.0f} req/s  (rendered once, never stored)")
    print(f"  gate, 403            {forbidden_rps:8.0f} req/s")
    print(
        f"  stock result hit     {stock_transform:8.0f} req/s  (stock serves the image from cache)"
    )


def _hammer_status(port: int, path: str, seconds: float, status: int) -> float:
    stop = time.monotonic() + seconds
    count = 0
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.monotonic()
    while time.monotonic() < stop:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        if response.status != status:
            raise RuntimeError(f"expected {status}, got {response.status}")
        count += 1
    return count / (time.monotonic() - started)


def concurrency(work: Path, fake: FakeRekognition) -> None:
    images = work / "burst"
    images.mkdir()
    data = photo_like(1024, 768)
    for index in range(20):
        (images / f"copy-{index}.jpg").write_bytes(data)
    fake.reset()
    fake.fail("slow", delay=0.3)
    config = base_config(work / "burst-server", images, fake.url)
    server = ThumborServer(work / "burst-server", config).start()
    try:
        paths = [f"/unsafe/{100 + i}x{100 + i}/copy-0.jpg" for i in range(100)]
        paths += [f"/unsafe/64x64/copy-{i}.jpg" for i in range(1, 20)]
        with ThreadPoolExecutor(max_workers=64) as pool:
            statuses = list(pool.map(lambda p: server.get(p).header("X-Moderation-Status"), paths))
    finally:
        server.stop()
        fake.clear_faults()
    approved = statuses.count("approved")
    print("concurrent first requests (backend answers in 300 ms)")
    print(
        f"  {len(paths)} requests: 100 sizes of one URL + 19 other URLs, same bytes -> "
        f"{fake.call_count} backend call(s), {approved}/{len(paths)} approved"
    )


def uploads(work: Path, fake: FakeRekognition, count: int = 120) -> None:
    """POST /image latency, stock Thumbor against the plugin (which judges each upload)."""
    images = work / "upload-images"
    images.mkdir()
    pictures = [photo_like(640, 400 + index % 7) for index in range(count)]
    timings: dict[str, list[float]] = {}
    for name, config in (
        ("stock", stock_thumbor(work / "upload-stock", images, STOCK_HANDLER_LISTS)),
        ("plugin", base_config(work / "upload-plugin", images, fake.url)),
    ):
        config.update({"UPLOAD_ENABLED": True})
        server = ThumborServer(work / f"upload-{name}", config, cpus=SERVER_CPUS).start()
        try:
            spent = []
            for index, data in enumerate(pictures):
                # Distinct bytes every time: the plugin judges each one (no dedupe).
                body = data + index.to_bytes(4, "big")
                started = time.perf_counter()
                response = server.request(
                    "POST", "/image", body=body, headers={"Content-Type": "image/jpeg"}
                )
                spent.append((time.perf_counter() - started) * 1000)
                assert response.status == 201, response.status
            timings[name] = spent[10:]
        finally:
            server.stop()
    stock_p50 = statistics.median(timings["stock"])
    plugin_p50 = statistics.median(timings["plugin"])
    print(f"upload path, POST /image of a 640x400 JPEG, {count - 10} uploads after 10 warm-up")
    print(f"  stock Thumbor        {stock_p50:8.1f} ms p50")
    print(
        f"  with the plugin      {plugin_p50:8.1f} ms p50  ({plugin_p50 / stock_p50:.2f}x; "
        "includes preparing it and one call to an instant local backend)"
    )


def preparation(work: Path) -> float:
    """Preparing a 12 MP JPEG for Rekognition, against stock Thumbor's first render of it."""
    data = photo_like(4000, 3000)
    timings = []
    for _ in range(30):
        started = time.perf_counter()
        prepared = prepare(data, max_side=1600)
        timings.append((time.perf_counter() - started) * 1000)
    frame = prepared.frames[0]
    prepared_p50 = percentile(timings, 0.5)

    images = work / "large"
    images.mkdir()
    for index in range(12):
        (images / f"large-{index}.jpg").write_bytes(data)
    config = stock_thumbor(work / "large-stock", images, STOCK_HANDLER_LISTS)
    server = ThumborServer(work / "large-stock", config, cpus=SERVER_CPUS).start()
    renders = []
    try:
        server.get("/unsafe/300x200/large-0.jpg")
        for index in range(1, 12):
            started = time.perf_counter()
            assert server.get(f"/unsafe/300x200/large-{index}.jpg").status == 200
            renders.append((time.perf_counter() - started) * 1000)
    finally:
        server.stop()
    render_p50 = statistics.median(renders)
    print("preparation of a 12 MP JPEG for Rekognition")
    print(
        f"  {len(data) / 1e6:.1f} MB 4000x3000 -> {frame.width}x{frame.height} "
        f"{frame.format} {len(frame.data) / 1e3:.0f} kB: p50 {prepared_p50:.1f} ms, "
        f"p90 {percentile(timings, 0.9):.1f} ms"
    )
    print(
        f"  stock Thumbor's first render of it at 300x200: p50 {render_p50:.1f} ms; "
        f"ratio {prepared_p50 / render_p50:.2f}x (goal <= 0.5x)"
    )
    return prepared_p50


def offline(work: Path, prepared_p50: float) -> None:
    try:
        from thumbor.config import Config

        from thumbor_rekognition.backends.nudenet import Backend
        from thumbor_rekognition.config import Settings
    except ImportError:
        print("offline model: not installed (pip install '.[local]')")
        return
    backend = Backend(Settings.from_config(Config()))
    backend.warm_up()
    pictures = [prepare(photo_like(1600, 1200 - 40 * i), max_side=640) for i in range(10)]
    timings = []
    for _ in range(5):
        for picture in pictures:
            started = time.perf_counter()
            backend.detect(picture, 50.0)
            timings.append((time.perf_counter() - started) * 1000)
    model_p50 = percentile(timings, 0.5)
    print("offline model (nudenet 320n, onnxruntime, NUDENET_THREADS=1)")
    print(
        f"  warm latency per prepared image: p50 {model_p50:.1f} ms, "
        f"p90 {percentile(timings, 0.9):.1f} ms; "
        f"{model_p50 / prepared_p50:.2f}x the preparation of a 12 MP JPEG"
    )
    images = work / "offline"
    images.mkdir()
    (images / "photo.jpg").write_bytes(photo_like(1600, 1067))
    stock_config = stock_thumbor(work / "offline-stock", images, STOCK_HANDLER_LISTS)
    plugin_config = base_config(work / "offline-plugin", images, None)
    plugin_config["MODERATION_BACKEND"] = "thumbor_rekognition.backends.nudenet"
    memory = {}
    for name, config in (("stock", stock_config), ("plugin", plugin_config)):
        server = ThumborServer(work / f"offline-{name}", config).start()
        try:
            for index in range(5):
                server.get(f"/unsafe/{200 + index}x150/photo.jpg")
            assert server.process is not None
            memory[name] = rss_mb(server.process.pid)
        finally:
            server.stop()
    print(
        f"  Thumbor RSS after warm-up and 5 requests: stock {memory['stock']:.0f} MB, "
        f"with the offline model {memory['plugin']:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each load run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over every server process")
    parser.add_argument(
        "--delay", type=float, default=0.15, help="backend delay of the first-view figures (s)"
    )
    arguments = parser.parse_args()
    os.sched_setaffinity(0, CLIENT_CPUS)
    with tempfile.TemporaryDirectory() as directory, FakeRekognition() as fake:
        work = Path(directory)
        throughput(work, fake, arguments.seconds, arguments.rounds)
        concurrency(work, fake)
        first_view(work, fake, arguments.delay)
        uploads(work, fake)
        offline(work, preparation(work))


if __name__ == "__main__":
    main()
