"""Draw the demo's sample pictures: scenes made by the project, safe for any audience.

Run once to refresh demo/pictures; the pictures are committed, so the demo needs nothing
but this repository and the package registries.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent / "pictures"


def landscape() -> Image.Image:
    width, height = 1200, 800
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(90 + 120 * t), int(150 + 60 * t), 235))
    draw.ellipse((860, 110, 1010, 260), fill=(255, 214, 90))
    for index, color in enumerate([(76, 122, 84), (58, 99, 70), (41, 77, 56)]):
        base = 470 + index * 90
        points = [
            (x, base - 90 * math.sin(x / (170 + 40 * index) + index)) for x in range(0, 1201, 20)
        ]
        draw.polygon([(0, height), *points, (width, height)], fill=color)
    return image


def still_life() -> Image.Image:
    image = Image.new("RGB", (900, 900), (238, 232, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 620, 900, 900), fill=(150, 111, 80))
    draw.ellipse((180, 380, 420, 620), fill=(204, 46, 48))
    draw.ellipse((430, 420, 630, 620), fill=(245, 180, 40))
    draw.rectangle((650, 300, 760, 620), fill=(70, 120, 170))
    draw.ellipse((650, 270, 760, 330), fill=(90, 140, 190))
    return image


def chart() -> Image.Image:
    image = Image.new("RGB", (1000, 640), "white")
    draw = ImageDraw.Draw(image)
    draw.line((80, 40, 80, 580, 960, 580), fill="black", width=4)
    for index, value in enumerate([220, 340, 280, 460, 410, 500]):
        left = 130 + index * 135
        draw.rectangle((left, 580 - value, left + 90, 578), fill=(40 + 30 * index, 110, 190))
    return image


def spinner() -> list[Image.Image]:
    frames = []
    for step in range(12):
        frame = Image.new("RGB", (240, 240), (245, 245, 245))
        draw = ImageDraw.Draw(frame)
        angle = step * 30
        draw.pieslice((40, 40, 200, 200), angle, angle + 90, fill=(52, 120, 246))
        frames.append(frame)
    return frames


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    landscape().save(HERE / "landscape.jpg", quality=88)
    still_life().save(HERE / "still-life.png", optimize=True)
    chart().save(HERE / "chart.webp", quality=85)
    first, *rest = spinner()
    first.save(HERE / "spinner.gif", save_all=True, append_images=rest, duration=80, loop=0)


if __name__ == "__main__":
    main()
