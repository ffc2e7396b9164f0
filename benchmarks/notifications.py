"""Print what webhooks, CDN purgers and cache tags cost on result-storage hits.

    python benchmarks/notifications.py [--seconds 4] [--rounds 5] [--backlog 40]

Two Thumbor servers with the plugin, in the same run: one with nothing of this section
configured, one with a webhook (to a real HTTP receiver on 127.0.0.1), the http purger
(to the same receiver) and the Surrogate-Key cache tag. Both answer result-storage hits
of the same approved picture, in alternating rounds; servers on one core, the load
generator on the other (benchmarks/run.py's hammer). Then the same again with the
receiver down and a backlog of undelivered webhooks and purges retrying in the outbox.
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
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import CLIENT_CPUS, SERVER_CPUS, photo_like  # noqa: E402
from benchmarks.run import cpu_seconds, hammer  # noqa: E402
from tests.fakes.rekognition import FakeRekognition  # noqa: E402
from tests.receivers import Receiver  # noqa: E402
from tests.servers import ThumborServer, base_config  # noqa: E402

TOKEN = "notifications-benchmark-token-51e0"
SECRET = "notifications-benchmark-secret-8d2c"
TAG_HEADER = "Surrogate-Key"
CLIENTS = 4
PATH = "/unsafe/300x200/photo.jpg"


def configs(work: Path, images: Path, fake: FakeRekognition, receiver: Receiver) -> Any:
    plain = base_config(work / "plain", images, fake.url)
    plain["MODERATION_CACHE_TTL_SECONDS"] = 2.0
    plain["MODERATION_ADMIN_TOKEN"] = TOKEN
    notifying = base_config(work / "notifying", images, fake.url)
    notifying.update(
        {
            "MODERATION_CACHE_TTL_SECONDS": 2.0,
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_WEBHOOK_URL": receiver.url + "/moderation-events",
            "MODERATION_WEBHOOK_SECRET": SECRET,
            "MODERATION_CACHE_TAG_HEADER": TAG_HEADER,
            "MODERATION_CDN_PURGERS": ["thumbor_rekognition.cdn.http"],
            "MODERATION_HTTP_PURGE": {
                "method": "POST",
                "url": receiver.url + "/service/SERVICE_ID/purge/{tag}",
                "headers": {"Fastly-Key": "benchmark-key"},
            },
        }
    )
    return plain, notifying


def admin(server: ThumborServer, method: str, route: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    response = server.request(
        method, "/moderation" + route, body=data, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    if response.status != 200:
        raise RuntimeError(f"{method} {route} answered {response.status}")
    return json.loads(response.body)


def waiting(server: ThumborServer) -> int:
    counts = admin(server, "GET", "/stats")["outbox"]
    return sum(count for name, count in counts.items() if name.endswith(".pending"))


def alternate(
    plain: ThumborServer, notifying: ThumborServer, seconds: float, rounds: int
) -> tuple[list[float], list[float], list[float]]:
    """Requests per second of each server, round after round, and their ratios."""
    without: list[float] = []
    with_: list[float] = []
    ratios: list[float] = []
    for _ in range(rounds):
        without.append(hammer(plain.port, PATH, seconds, clients=CLIENTS))
        with_.append(hammer(notifying.port, PATH, seconds, clients=CLIENTS))
        ratios.append(with_[-1] / without[-1])
    return without, with_, ratios


def report(title: str, figures: tuple[list[float], list[float], list[float]], label: str) -> None:
    without, with_, ratios = figures
    print(title)
    print(
        f"  without                        {statistics.median(without):8.0f} req/s  "
        f"(rounds: {_fmt(without)})"
    )
    print(f"  {label:<30} {statistics.median(with_):8.0f} req/s  (rounds: {_fmt(with_)})")
    print(
        f"  ratio                          {statistics.median(ratios):8.3f}x  median of "
        f"{len(ratios)} back-to-back rounds ({', '.join(f'{r:.3f}' for r in ratios)})"
    )


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{value:.0f}" for value in values)


def idle_cpu(servers: list[ThumborServer], seconds: float) -> list[float]:
    """Share of a core each server uses while no request arrives."""
    pids = [server.process.pid for server in servers if server.process is not None]
    before = [cpu_seconds(pid) for pid in pids]
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return [(cpu_seconds(pid) - used) / elapsed for pid, used in zip(pids, before, strict=True)]


def make_backlog(notifying: ThumborServer, images: Path, count: int) -> int:
    """Approve `count` new pictures, then reject them: a webhook and a purge for each."""
    names = []
    for index in range(count):
        name = f"backlog-{index}.jpg"
        (images / name).write_bytes(photo_like(200 + index, 150))
        names.append(name)
        connection = http.client.HTTPConnection("127.0.0.1", notifying.port, timeout=30)
        connection.request("GET", f"/unsafe/100x75/{name}")
        connection.getresponse().read()
        connection.close()
    deadline = time.monotonic() + 30
    while waiting(notifying) and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each load run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per figure")
    parser.add_argument("--backlog", type=int, default=40, help="pictures rejected while down")
    arguments = parser.parse_args()
    os.sched_setaffinity(0, CLIENT_CPUS)
    with (
        tempfile.TemporaryDirectory() as directory,
        FakeRekognition() as fake,
        Receiver() as receiver,
    ):
        work = Path(directory)
        images = work / "images"
        images.mkdir()
        (images / "photo.jpg").write_bytes(photo_like(1600, 1067))
        plain_config, notifying_config = configs(work, images, fake, receiver)
        plain = ThumborServer(work / "plain", plain_config, cpus=SERVER_CPUS).start()
        notifying = ThumborServer(work / "notifying", notifying_config, cpus=SERVER_CPUS).start()
        try:
            for server in (plain, notifying):
                for _ in range(3):
                    if server.get(PATH).status != 200:
                        raise RuntimeError(f"{PATH} not served")
            tag = notifying.get(PATH).header(TAG_HEADER)
            if tag is None or plain.get(PATH).header(TAG_HEADER) is not None:
                raise RuntimeError("the cache tag header is not where it is configured")
            receiver.wait_for(1, timeout=10)

            idle = alternate(plain, notifying, arguments.seconds, arguments.rounds)
            delivered = len(receiver.requests)

            pictures = make_backlog(notifying, images, arguments.backlog)
            receiver.stop()
            for index in range(pictures):
                admin(
                    notifying,
                    "PUT",
                    f"/image?url={quote(f'backlog-{index}.jpg', safe='')}",
                    {"status": "rejected"},
                )
            backlog = waiting(notifying)
            idle_plain, idle_notifying = idle_cpu([plain, notifying], 2 * arguments.seconds)
            down = alternate(plain, notifying, arguments.seconds, arguments.rounds)
            still = waiting(notifying)
        finally:
            plain.stop()
            notifying.stop()

    print(
        f"result-storage hits of one approved picture, 1 Thumbor process each on CPU "
        f"{sorted(SERVER_CPUS)}, {CLIENTS} keep-alive clients on CPU {sorted(CLIENT_CPUS)}"
    )
    report(
        "notifications configured, receiver up, outbox idle "
        f"({delivered} webhook(s) delivered during setup)",
        idle,
        "webhook + http purger + tag",
    )
    report(
        f"receiver down: {backlog} webhooks and purges ({pictures} pictures rejected) "
        f"retrying with backoff, {still} still waiting at the end",
        down,
        "webhook + purger, backlog",
    )
    print(
        f"  CPU with no requests, over {2 * arguments.seconds:g} s right after the rejections: "
        f"without {100 * idle_plain:.1f}% of a core, with the backlog retrying "
        f"{100 * idle_notifying:.1f}%"
    )


if __name__ == "__main__":
    main()
