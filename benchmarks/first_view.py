"""Print what a first view costs with the plugin over stock Thumbor, backend delay set apart.

    python benchmarks/first_view.py [--delay 0.15] [--pictures 15]

A first view is a request for a picture neither Thumbor has seen: loaded from disk,
judged (with the plugin), decoded, transformed, encoded and stored. The fake Rekognition
answers after `delay` seconds, as a real round trip would. Each picture is new to both
servers (distinct bytes, so the plugin cannot reuse another picture's decision), stock
and plugin are asked in turn, and the median of the per-picture latencies is printed for
a still 1600x1200 JPEG and a 5-scene animated GIF. Goals: the plugin's first view at most
one backend round trip + 20 ms over stock's for the still picture, + 40 ms for the
animation (its scenes are asked about together, in one round trip).
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import CLIENT_CPUS, SERVER_CPUS, photo_like  # noqa: E402
from tests.fakes.rekognition import FakeRekognition  # noqa: E402
from tests.servers import STOCK_HANDLER_LISTS, ThumborServer, base_config  # noqa: E402
from tests.servers import stock_config as stock_thumbor  # noqa: E402

STILL_GOAL_MS = 20.0
ANIMATION_GOAL_MS = 40.0
SCENES = 5
# Requests that build each server's clients and caches before anything is timed.
WARM_UP = 2
# Scene colours of the animation: far enough apart that no two scenes look alike.
SCENE_COLOURS = [(230, 60, 40), (40, 160, 70), (50, 80, 220), (240, 200, 40), (140, 40, 170)]


def still_pictures(count: int) -> list[bytes]:
    """Distinct 1600x1200 photo-like JPEGs: one mark each, so no two hash alike."""

    base = Image.open(io.BytesIO(photo_like(1600, 1200)))
    pictures = []
    for index in range(count):
        image = base.copy()
        ImageDraw.Draw(image).rectangle((20, 20 + index * 3, 60, 40 + index * 3), fill=(0, 0, 0))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=88)
        pictures.append(buffer.getvalue())
    return pictures


def animations(count: int) -> list[bytes]:
    """Distinct 480x360 GIFs of 5 scenes each (one colour and a shape per scene)."""
    pictures = []
    for index in range(count):
        frames = []
        for scene, colour in enumerate(SCENE_COLOURS[:SCENES]):
            frame = Image.new("RGB", (480, 360), colour)
            draw = ImageDraw.Draw(frame)
            draw.ellipse((40 + scene * 60, 60, 200 + scene * 60, 220), fill=(255, 255, 255))
            draw.rectangle((10, 10 + index * 2, 30, 20 + index * 2), fill=(0, 0, 0))
            frames.append(frame)
        buffer = io.BytesIO()
        frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=200)
        pictures.append(buffer.getvalue())
    return pictures


def _time(server: ThumborServer, path: str) -> float:
    started = time.perf_counter()
    response = server.get(path)
    spent = (time.perf_counter() - started) * 1000
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status}")
    return spent


def _round_trips(fake: FakeRekognition, since: int, delay: float) -> list[int]:
    """Per animation, how many waves of calls the fake received (1: scenes together)."""
    waves = []
    calls = fake.calls[since:]
    for start in range(0, len(calls), SCENES):
        times = sorted(call.at for call in calls[start : start + SCENES])
        waves.append(1 + sum(1 for a, b in itertools.pairwise(times) if b - a > delay / 2))
    return waves


def first_view(work: Path, fake: FakeRekognition, delay: float, count: int = 15) -> None:
    """Print the first-view latency of stock Thumbor and of the plugin, still and animated."""
    images = work / "first-view-images"
    images.mkdir()
    kinds = {
        "still 1600x1200 JPEG": (".jpg", still_pictures(WARM_UP + count), STILL_GOAL_MS),
        f"{SCENES}-scene 480x360 GIF": (".gif", animations(WARM_UP + count), ANIMATION_GOAL_MS),
    }
    for kind, (suffix, pictures, _) in kinds.items():
        for index, data in enumerate(pictures):
            (images / f"{kind.split()[0]}-{index}{suffix}").write_bytes(data)

    fake.reset()
    fake.fail("slow", delay=delay)
    stock = ThumborServer(
        work / "first-view-stock",
        stock_thumbor(work / "first-view-stock", images, STOCK_HANDLER_LISTS),
        cpus=SERVER_CPUS,
    ).start()
    plugin = ThumborServer(
        work / "first-view-plugin",
        base_config(work / "first-view-plugin", images, fake.url),
        cpus=SERVER_CPUS,
    ).start()
    print(
        f"first view, backend answering in {delay * 1000:.0f} ms, 1 Thumbor process each, "
        f"median of {count} pictures new to both (load average {os.getloadavg()[0]:.1f})"
    )
    try:
        for kind, (suffix, pictures, goal) in kinds.items():
            timings: dict[str, list[float]] = {"stock": [], "plugin": []}
            calls_before = 0
            for index in range(len(pictures)):
                path = f"/unsafe/300x200/{kind.split()[0]}-{index}{suffix}"
                if index == WARM_UP:
                    calls_before = len(fake.calls)
                # In turn, so that a change in the machine's load falls on both alike.
                for name, server in (("stock", stock), ("plugin", plugin)):
                    spent = _time(server, path)
                    if index >= WARM_UP:
                        timings[name].append(spent)
            stock_ms = statistics.median(timings["stock"])
            plugin_ms = statistics.median(timings["plugin"])
            pairs = zip(timings["stock"], timings["plugin"], strict=True)
            overheads = [after - before - delay * 1000 for before, after in pairs]
            overhead = statistics.median(overheads)
            print(f"  {kind}")
            print(f"    stock Thumbor        {stock_ms:8.1f} ms")
            print(f"    with the plugin      {plugin_ms:8.1f} ms")
            print(
                f"    overhead - backend   {overhead:8.1f} ms  (median per picture; "
                f"goal <= {goal:.0f} ms) {'ok' if overhead <= goal else 'MISSED'}"
            )
            if suffix == ".gif":
                waves = _round_trips(fake, calls_before, delay)
                print(
                    f"    round trips          {statistics.median(waves):8.0f}     per animation "
                    f"({SCENES} scenes; most seen: {max(waves)})"
                )
    finally:
        stock.stop()
        plugin.stop()
        fake.clear_faults()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay", type=float, default=0.15, help="backend delay in seconds")
    parser.add_argument("--pictures", type=int, default=15, help="pictures timed per kind")
    arguments = parser.parse_args()

    os.sched_setaffinity(0, CLIENT_CPUS)
    with tempfile.TemporaryDirectory() as directory, FakeRekognition() as fake:
        first_view(Path(directory), fake, arguments.delay, arguments.pictures)


if __name__ == "__main__":
    main()
