"""What every benchmark shares: the CPUs servers and clients are pinned to, and pictures
with a photo's entropy. Imported by run.py and by each benchmark of its own."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

CPUS = sorted(os.sched_getaffinity(0))
# Servers on the first CPU, clients on the others: the figures compare server work.
SERVER_CPUS = {CPUS[0]}
CLIENT_CPUS = set(CPUS[1:]) or SERVER_CPUS


def photo_like(width: int, height: int, color: tuple[int, int, int] | None = None) -> bytes:
    """A JPEG with gradients, shapes and grain: closer to a photo's entropy than a flat fill."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(0, height, 4):
        t = y / height
        base = color or (int(70 + 150 * t), int(120 + 80 * t), int(200 - 90 * t))
        draw.rectangle((0, y, width, y + 4), fill=base)
    if color is None:
        for index in range(40):
            x, y = (index * 997) % width, (index * 613) % height
            size = width // 12
            draw.ellipse((x, y, x + size, y + size), fill=((index * 50) % 255, 90, 160))
        noise = Image.effect_noise((width, height), 24).convert("RGB")
        image = Image.blend(image, noise, 0.12).filter(ImageFilter.SMOOTH)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def percentile(values: list[float], share: float) -> float:
    """The value below which `share` of the values lie (nan for none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
