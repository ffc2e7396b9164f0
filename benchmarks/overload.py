"""Print how the plugin holds up on a bad day, against stock Thumbor measured in the same run.

    make bench SCRIPT=overload ARGS='--spike-seconds 60'

Five figures, each for stock Thumbor and the plugin (one Thumbor process each, pinned to
the server core; clients on the others; a fake Rekognition answering in --delay s):

1. A spike: REKOGNITION_MAX_CALLS_PER_SECOND = --limit, --rate new pictures a second for
   --spike-seconds, while --hit-clients clients ask for one picture already judged and
   rendered (a result-storage hit). First-view latency p50/p99 and what they were
   answered; cached-hit p99 and req/s before, during and after; the server's CPU time
   in its event loop and in its other threads (and their time waiting for a core) before,
   during and after; RSS before, peak, after.
   Goals: cached-hit p99 during the spike within 2x of before; new pictures answered
   (pending past the rate) within 1 s; the plugin's RSS increase within 1.5x of stock's.
   With --spike-warm-up N, each server first sees a small spike of N new pictures, and
   the plugin judges them all, before the figures' "before": a process that has been
   through one already (its threads started, their heaps grown, its store's cache warm).
2. The cost of one first view: the server's CPU time (event loop, other threads) per new
   picture asked one after the other, stock's rendering against the plugin's answer
   'pending' (the call rate spent) and its judgement (then Thumbor's rendering).
3. Cached hits at 1, 4 and 16 clients, rounds alternating between the two servers.
   Goal: >= 0.95x stock's req/s at 16 clients.
4. Peak RSS increase for 4 concurrent first views of distinct 50 MB PNGs. Goal: within
   1.5x of stock's increase.
5. RSS per 10,000 new pictures: --soak small new pictures (backend without delay or rate),
   RSS after against before, scaled to 10,000; with --soak-every N, RSS (and the sizes of
   the plugin's caches, from `GET /moderation/stats`) after every N pictures too. The
   servers inherit this process's environment: MALLOC_ARENA_MAX=2 before the command
   caps glibc's heaps in both.

With --set KEY=VALUE (repeated), the plugin runs with that setting of thumbor.conf (a
Python literal) in every part, e.g. --set MODERATION_WORKERS=2.
"""

from __future__ import annotations

import argparse
import ast
import http.client
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    CLIENT_CPUS,
    SERVER_CPUS,
    percentile,
    photo_like,
    rss_mb,
)
from tests.fakes.rekognition import FakeRekognition  # noqa: E402
from tests.servers import STOCK_HANDLER_LISTS, ThumborServer, base_config  # noqa: E402
from tests.servers import stock_config as stock_thumbor  # noqa: E402

KINDS = ("stock", "plugin")
HIT_PATH = "/unsafe/200x150/judged.jpg"
TOKEN = "overload-benchmark-token-7c2d"
# What the soak prints of the plugin's `GET /moderation/stats` at each checkpoint.
CACHES = ("decisions_cached", "hashes_cached", "pictures_with_paths_recorded")


class Sampler:
    """A process's RSS every `every` seconds, in a thread, while it runs."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), rss_mb(self.pid)))
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, since: float = 0.0, until: float = float("inf")) -> float:
        return max((rss for at, rss in self.samples if since <= at <= until), default=0.0)


@dataclass(frozen=True)
class ThreadTimes:
    """A process's CPU time, and time spent runnable waiting for a core, at one moment:
    its main thread (Thumbor's event loop) apart from its other threads (ns, from
    /proc/<pid>/task/*/schedstat)."""

    at: float
    loop_cpu: int
    loop_waiting: int
    others_cpu: int
    others_waiting: int

    @classmethod
    def of(cls, pid: int) -> ThreadTimes:
        at = time.monotonic()
        loop = others = (0, 0)
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                cpu, waiting = (int(v) for v in (task / "schedstat").read_text().split()[:2])
            except (OSError, ValueError):  # a thread that ended meanwhile
                continue
            if task.name == str(pid):
                loop = (cpu, waiting)
            else:
                others = (others[0] + cpu, others[1] + waiting)
        return cls(at, *loop, *others)

    def line(self, later: ThreadTimes) -> str:
        """ms a second of each between this moment and a later one."""
        per_second = 1e-6 / max(later.at - self.at, 1e-9)
        return (
            f"event loop {(later.loop_cpu - self.loop_cpu) * per_second:4.0f} ms/s "
            f"(waited for a core {(later.loop_waiting - self.loop_waiting) * per_second:4.0f}), "
            f"other threads {(later.others_cpu - self.others_cpu) * per_second:4.0f} ms/s "
            f"(waited {(later.others_waiting - self.others_waiting) * per_second:4.0f})"
        )


@dataclass
class Hits:
    """Latencies (ms) of cached hits, with when each was answered."""

    done: list[tuple[float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def between(self, start: float, end: float) -> list[float]:
        return [ms for at, ms in self.done if start <= at < end]

    def line(self, start: float, end: float) -> str:
        values = self.between(start, end)
        rate = len(values) / max(end - start, 1e-9)
        return f"p99 {percentile(values, 0.99):6.1f} ms, {rate:6.0f} req/s"


@contextmanager
def hitting(port: int, clients: int) -> Iterator[Hits]:
    """Clients asking for the cached picture over kept-alive connections until the block ends."""
    hits = Hits()
    stop = threading.Event()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while not stop.is_set():
            started = time.perf_counter()
            connection.request("GET", HIT_PATH)
            response = connection.getresponse()
            response.read()
            now = time.monotonic()
            if response.status != 200:
                hits.failures.append(f"HTTP {response.status}")
            hits.done.append((now, (time.perf_counter() - started) * 1000))
        connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield hits
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def distinct_jpegs(
    folder: Path, count: int, size: tuple[int, int], prefix: str, first: int = 0
) -> list[str]:
    """`count` JPEGs with distinct bytes and distinct looks (a numbered mark each, from
    `first`: pictures of another call look distinct from these where their numbers do)."""
    base = Image.open(io.BytesIO(photo_like(*size)))
    names = []
    for index in range(first, first + count):
        image = base.copy()
        draw = ImageDraw.Draw(image)
        for bit in range(16):
            if index >> bit & 1:
                x = 4 + (bit % 8) * (size[0] // 9)
                y = 4 + (bit // 8) * (size[1] // 3)
                draw.rectangle((x, y, x + size[0] // 12, y + size[1] // 5), fill=(0, 0, 0))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        name = f"{prefix}-{index}.jpg"
        (folder / name).write_bytes(buffer.getvalue())
        names.append(name)
    return names


# The plugin's settings given with --set, over every part's own.
SETTINGS: dict[str, Any] = {}


def servers(work: Path, images: Path, fake: FakeRekognition, **plugin: Any) -> dict[str, Any]:
    stock = stock_thumbor(work / "stock", images, STOCK_HANDLER_LISTS)
    moderated = base_config(work / "plugin", images, fake.url)
    # A production cache, not the tests' fifth of a second.
    moderated.pop("MODERATION_CACHE_TTL_SECONDS")
    moderated.update(plugin)
    moderated.update(SETTINGS)
    return {"stock": stock, "plugin": moderated}


@contextmanager
def running(work: Path, name: str, config: dict[str, Any]) -> Iterator[ThumborServer]:
    server = ThumborServer(work / f"{name}-{time.monotonic_ns()}", config, cpus=SERVER_CPUS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pid(server: ThumborServer) -> int:
    assert server.process is not None
    return server.process.pid


def warm(server: ThumborServer) -> None:
    for _ in range(20):
        response = server.get(HIT_PATH)
        if response.status != 200:
            raise RuntimeError(f"{HIT_PATH}: HTTP {response.status}")


def spike(work: Path, fake: FakeRekognition, args: argparse.Namespace) -> None:
    images = work / "spike"
    images.mkdir()
    (images / "judged.jpg").write_bytes(photo_like(800, 600))
    count = int(args.rate * args.spike_seconds)
    print(f"spike: generating {count} new pictures...", flush=True)
    names = distinct_jpegs(images, count, (320, 240), "new")
    earlier = distinct_jpegs(images, args.spike_warm_up, (320, 240), "earlier", first=count)
    fake.reset()
    fake.fail("slow", delay=args.delay)
    configs = servers(
        work,
        images,
        fake,
        REKOGNITION_MAX_CALLS_PER_SECOND=args.limit,
    )
    print(
        f"spike: limit {args.limit:g} calls/s, {args.rate:g} new pictures/s for "
        f"{args.spike_seconds:g} s, backend {args.delay * 1000:.0f} ms, "
        f"{args.hit_clients} clients on a cached picture"
    )
    for kind in args.kinds:
        with running(work, kind, configs[kind]) as server:
            warm(server)
            if earlier:
                # A small spike first, and time for its queue to be judged: the threads,
                # heaps and caches a process has once it has seen one.
                with ThreadPoolExecutor(max_workers=64) as pool:
                    for name in earlier:
                        pool.submit(server.get, f"/unsafe/300x200/{name}")
                        time.sleep(max(0.0, 1 / args.rate))
                time.sleep(len(earlier) / args.limit + 2)
            time.sleep(1)
            answers: list[tuple[float, str]] = []
            lock = threading.Lock()

            def first_view(
                name: str,
                server: ThumborServer = server,
                answers: list[tuple[float, str]] = answers,
                lock: threading.Lock = lock,
            ) -> None:
                started = time.perf_counter()
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
                try:
                    connection.request("GET", f"/unsafe/300x200/{name}")
                    response = connection.getresponse()
                    response.read()
                    what = response.getheader("X-Moderation-Status") or str(response.status)
                finally:
                    connection.close()
                with lock:
                    answers.append(((time.perf_counter() - started) * 1000, what))

            with Sampler(pid(server)) as memory, hitting(server.port, args.hit_clients) as hits:
                before_start = time.monotonic()
                times = [ThreadTimes.of(pid(server))]
                time.sleep(args.calm_seconds)
                spike_start = time.monotonic()
                times.append(ThreadTimes.of(pid(server)))
                with ThreadPoolExecutor(max_workers=512) as pool:
                    for index, name in enumerate(names):
                        due = spike_start + index / args.rate
                        time.sleep(max(0.0, due - time.monotonic()))
                        pool.submit(first_view, name)
                    spike_end = time.monotonic()
                    times.append(ThreadTimes.of(pid(server)))
                    # The calm after: hits go on while the last first views are answered.
                    time.sleep(args.calm_seconds)
                drained = time.monotonic()
                times.append(ThreadTimes.of(pid(server)))
                time.sleep(args.calm_seconds)
                after_end = time.monotonic()
                times.append(ThreadTimes.of(pid(server)))
            latencies = [ms for ms, _ in answers]
            told: dict[str, int] = {}
            for _, what in answers:
                told[what] = told.get(what, 0) + 1
            before = statistics.median(rss for at, rss in memory.samples if at < spike_start)
            after = memory.samples[-1][1]
            print(f"  {kind}:")
            print(
                f"    first views: p50 {percentile(latencies, 0.5):7.1f} ms, "
                f"p99 {percentile(latencies, 0.99):7.1f} ms, max {max(latencies):7.1f} ms; "
                f"answered {dict(sorted(told.items()))}"
            )
            for what in sorted(told) if len(told) > 1 else ():
                among = [ms for ms, answer in answers if answer == what]
                print(
                    f"      answered {what}: p50 {percentile(among, 0.5):7.1f} ms, "
                    f"p99 {percentile(among, 0.99):7.1f} ms"
                )
            print(f"    cached hits before: {hits.line(before_start, spike_start)}")
            print(f"    cached hits during: {hits.line(spike_start, spike_end)}")
            print(f"    cached hits after:  {hits.line(drained, after_end)}")
            print(f"    server CPU before: {times[0].line(times[1])}")
            print(f"    server CPU during: {times[1].line(times[2])}")
            print(f"    server CPU after:  {times[3].line(times[4])}")
            print(
                f"    RSS before {before:.0f} MB, peak {memory.peak():.0f} MB "
                f"(+{memory.peak() - before:.1f}), after {after:.0f} MB (+{after - before:.1f})"
            )
            if hits.failures:
                print(f"    cached hits failed: {len(hits.failures)} ({hits.failures[0]})")
            if kind == "plugin":
                print(f"    backend calls: {len(fake.calls)}")


def clients_rounds(work: Path, fake: FakeRekognition, args: argparse.Namespace) -> None:
    images = work / "hits"
    images.mkdir()
    (images / "judged.jpg").write_bytes(photo_like(800, 600))
    fake.reset()
    configs = servers(work, images, fake)
    print(
        f"cached hits: {args.rounds} rounds of {args.hit_seconds:g} s per client count, "
        "alternating servers; median req/s and p99"
    )
    with (
        running(work, "stock", configs["stock"]) as stock,
        running(work, "plugin", configs["plugin"]) as plugin,
    ):
        pair = {"stock": stock, "plugin": plugin}
        for server in pair.values():
            warm(server)
        for clients in (1, 4, 16):
            rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
            tails: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for _ in range(args.rounds):
                for kind in KINDS:
                    with hitting(pair[kind].port, clients) as hits:
                        started = time.monotonic()
                        time.sleep(args.hit_seconds)
                        ended = time.monotonic()
                    values = hits.between(started, ended)
                    rates[kind].append(len(values) / (ended - started))
                    tails[kind].append(percentile(values, 0.99))
            stock_rate = statistics.median(rates["stock"])
            plugin_rate = statistics.median(rates["plugin"])
            print(
                f"  {clients:2d} clients: stock {stock_rate:6.0f} req/s "
                f"(p99 {statistics.median(tails['stock']):5.1f} ms), plugin "
                f"{plugin_rate:6.0f} req/s (p99 {statistics.median(tails['plugin']):5.1f} ms); "
                f"{plugin_rate / stock_rate:.2f}x" + ("  (goal >= 0.95x)" if clients == 16 else "")
            )


def cost(work: Path, fake: FakeRekognition, args: argparse.Namespace) -> None:
    images = work / "cost"
    images.mkdir()
    (images / "judged.jpg").write_bytes(photo_like(800, 600))
    names = distinct_jpegs(images, args.cost_pictures * 2, (320, 240), "new")
    fake.reset()
    print(
        f"cost: CPU time of the server per first view of a new 320x240 picture, "
        f"{args.cost_pictures} asked one after the other (no other traffic, backend without delay)"
    )
    cases: tuple[tuple[str, str, dict[str, float], list[str]], ...] = (
        ("stock", "rendered", {}, names[: args.cost_pictures]),
        # No turn within the wait: answered 'pending' and queued (judged in the background,
        # at 0.5 a second, which this part's time leaves out but for a few).
        (
            "plugin",
            "answered pending",
            {"REKOGNITION_MAX_CALLS_PER_SECOND": 0.5, "MODERATION_TURN_WAIT_SECONDS": 0.0},
            names[: args.cost_pictures],
        ),
        (
            "plugin",
            "judged and rendered",
            {"REKOGNITION_MAX_CALLS_PER_SECOND": 1000.0},
            names[args.cost_pictures :],
        ),
    )
    for kind, what, settings, asked in cases:
        config = servers(work, images, fake, **settings)[kind]
        with running(work, kind, config) as server:
            warm(server)
            time.sleep(1)
            told: dict[str, int] = {}
            started = ThreadTimes.of(pid(server))
            for name in asked:
                response = server.get(f"/unsafe/300x200/{name}")
                answer = response.header("X-Moderation-Status") or str(response.status)
                told[answer] = told.get(answer, 0) + 1
            ended = ThreadTimes.of(pid(server))
        count = len(asked)
        print(
            f"  {kind:6s} {what:20s}: event loop "
            f"{(ended.loop_cpu - started.loop_cpu) / 1e6 / count:5.2f} ms, other threads "
            f"{(ended.others_cpu - started.others_cpu) / 1e6 / count:5.2f} ms; answered {told}"
        )


def noise_png(path: Path, side: int, seed: int) -> None:
    """A PNG of random pixels: incompressible, so about side * side * 3 bytes."""
    data = bytearray(os.urandom(side * side * 3))
    data[:8] = seed.to_bytes(8, "big")
    Image.frombytes("RGB", (side, side), bytes(data)).save(path, "PNG", compress_level=1)


def large(work: Path, fake: FakeRekognition, args: argparse.Namespace) -> None:
    images = work / "large"
    images.mkdir()
    (images / "judged.jpg").write_bytes(photo_like(800, 600))
    side = int((args.large_mb * 1e6 / 3) ** 0.5)
    for index in range(8):
        noise_png(images / f"large-{index}.png", side, index)
    size = (images / "large-0.png").stat().st_size / 1e6
    fake.reset()
    fake.fail("slow", delay=args.delay)
    configs = servers(
        work,
        images,
        fake,
        MODERATION_TURN_WAIT_SECONDS=args.large_turn_wait,
        MODERATION_TIMEOUT_SECONDS=max(10.0, args.large_turn_wait * 2),
    )
    print(
        f"large: MODERATION_TURN_WAIT_SECONDS = {args.large_turn_wait:g} (how long a first "
        "view waits for room in MODERATION_DECODE_BUDGET_MB before it is answered pending)"
    )
    increases = {}
    for offset, kind in enumerate(KINDS):
        with running(work, kind, configs[kind]) as server:
            warm(server)
            time.sleep(1)
            baseline = rss_mb(pid(server))
            with Sampler(pid(server), every=0.02) as memory:
                statuses: list[str] = []

                def view(
                    index: int, server: ThumborServer = server, statuses: list[str] = statuses
                ) -> None:
                    response = server.request(
                        "GET", f"/unsafe/300x200/large-{index}.png", timeout=300
                    )
                    told = response.header("X-Moderation-Status")
                    statuses.append(f"{response.status}" + (f" {told}" if told else ""))

                threads = [
                    threading.Thread(target=view, args=(offset * 4 + index,)) for index in range(4)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            increases[kind] = memory.peak() - baseline
            print(
                f"  {kind}: RSS {baseline:.0f} MB -> peak {memory.peak():.0f} MB "
                f"(+{increases[kind]:.0f}); statuses {sorted(statuses)}"
            )
    print(
        f"4 concurrent first views of {size:.0f} MB PNGs ({side}x{side}): plugin increase "
        f"{increases['plugin'] / increases['stock']:.2f}x stock's (goal <= 1.5x)"
    )


def checkpoint(server: ThumborServer) -> str:
    """The server's RSS and, for the plugin, the sizes of its caches (`GET /moderation/stats`)."""
    line = f"RSS {rss_mb(pid(server)):.1f} MB"
    if "MODERATION_ADMIN_TOKEN" in server.config:
        response = server.request(
            "GET", "/moderation/stats", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        held = json.loads(response.body)["process"]
        line += ", " + ", ".join(f"{name} {held[name]}" for name in CACHES)
    return line


def soak(work: Path, fake: FakeRekognition, args: argparse.Namespace) -> None:
    images = work / "soak"
    images.mkdir()
    (images / "judged.jpg").write_bytes(photo_like(800, 600))
    print(f"soak: generating {args.soak} new pictures...", flush=True)
    names = distinct_jpegs(images, args.soak, (96, 64), "small")
    fake.reset()
    configs = servers(
        work,
        images,
        fake,
        MODERATION_CACHE_ENTRIES=args.cache_entries,
        MODERATION_ADMIN_TOKEN=TOKEN,
    )
    print(f"soak: MODERATION_CACHE_ENTRIES = {args.cache_entries}")
    warm_up = args.soak_warm_up if args.soak_warm_up is not None else min(500, len(names) // 5)
    for kind in args.kinds:
        with running(work, kind, configs[kind]) as server:
            warm(server)

            def view(name: str, server: ThumborServer = server) -> None:
                response = server.request("GET", f"/unsafe/50x40/{name}", timeout=120)
                if response.status != 200:
                    raise RuntimeError(f"{name}: HTTP {response.status}")

            def ask(batch: list[str], view: Callable[[str], None] = view) -> None:
                with ThreadPoolExecutor(max_workers=4) as pool:
                    list(pool.map(view, batch))

            ask(names[:warm_up])
            before = rss_mb(pid(server))
            print(f"  {kind}: after the warm-up of {warm_up}: {checkpoint(server)}", flush=True)
            started = time.monotonic()
            every = args.soak_every or len(names)
            for start in range(warm_up, len(names), every):
                ask(names[start : start + every])
                if args.soak_every:
                    asked = min(start + every, len(names))
                    print(f"  {kind}: {asked}: {checkpoint(server)}", flush=True)
            spent = time.monotonic() - started
            after = rss_mb(pid(server))
            count = len(names) - warm_up
            print(
                f"  {kind}: {count} new pictures in {spent:.0f} s, RSS {before:.0f} -> "
                f"{after:.0f} MB: {(after - before) * 10_000 / count:+.1f} MB per 10,000"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=float, default=5.0, help="calls per second allowed")
    parser.add_argument("--rate", type=float, default=30.0, help="new pictures per second")
    parser.add_argument("--spike-seconds", type=float, default=60.0)
    parser.add_argument("--calm-seconds", type=float, default=10.0)
    parser.add_argument(
        "--spike-warm-up",
        type=int,
        default=0,
        help="new pictures each server is asked for at --rate before the spike, then time "
        "for the plugin to judge them all (a process that has seen a spike before)",
    )
    parser.add_argument("--delay", type=float, default=0.15, help="backend answer time (s)")
    parser.add_argument("--hit-clients", type=int, default=4)
    parser.add_argument("--hit-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--large-mb", type=float, default=50.0)
    parser.add_argument(
        "--large-turn-wait",
        type=float,
        default=1.0,
        help="MODERATION_TURN_WAIT_SECONDS for the 50 MB PNGs (1 s is the default)",
    )
    parser.add_argument("--soak", type=int, default=10_000, help="new pictures of the soak")
    parser.add_argument(
        "--cache-entries", type=int, default=10_000, help="the plugin's caches during the soak"
    )
    parser.add_argument(
        "--soak-warm-up",
        type=int,
        default=None,
        help="pictures of the soak asked for before RSS is read (default: 500 at most)",
    )
    parser.add_argument(
        "--soak-every",
        type=int,
        default=None,
        help="print RSS (and the plugin's cache sizes) after every this many pictures of the soak",
    )
    parser.add_argument(
        "--cost-pictures", type=int, default=300, help="first views of each case of 'cost'"
    )
    parser.add_argument(
        "--only", choices=("spike", "cost", "hits", "large", "soak"), action="append", default=None
    )
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the plugin's thumbor.conf (a Python literal), e.g. MODERATION_WORKERS=2",
    )
    args = parser.parse_args()
    for setting in args.set:
        key, _, value = setting.partition("=")
        try:
            SETTINGS[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser.error(f"--set {setting}: not KEY=<a Python literal>")
    os.sched_setaffinity(0, CLIENT_CPUS)
    parts = {
        "spike": spike,
        "cost": cost,
        "hits": clients_rounds,
        "large": large,
        "soak": soak,
    }
    print(f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as directory, FakeRekognition() as fake:
        for name in args.only or parts:
            parts[name](Path(directory), fake, args)


if __name__ == "__main__":
    main()
