"""Generated pictures with detail, and the re-encodings a re-upload puts them through.

Each family is drawn from a seed, so a test or a benchmark gets the same pictures every
run. `busy` are shapes and lines over each other; `photo_like` are smooth random fields
at several scales, whose spectrum falls off as a photograph's does; `product` is one
shape on a plain background; `text_like` are lines of word-sized marks.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageEnhance

SIZE = (640, 480)


def busy(seed: int | str, size: tuple[int, int] = SIZE) -> Image.Image:
    """Ten to sixty rectangles, ellipses and lines of random colours over a random ground."""
    rng = random.Random(f"busy-{seed}")
    image = Image.new("RGB", size, _colour(rng))
    draw = ImageDraw.Draw(image)
    width, height = size
    for _ in range(rng.randrange(10, 60)):
        x, y = rng.randrange(width), rng.randrange(height)
        box = (x, y, x + rng.randrange(10, width // 2), y + rng.randrange(10, height // 2))
        kind = rng.randrange(3)
        if kind == 0:
            draw.rectangle(box, fill=_colour(rng))
        elif kind == 1:
            draw.ellipse(box, fill=_colour(rng))
        else:
            draw.line(box, fill=_colour(rng), width=rng.randrange(1, 12))
    return image


def photo_like(seed: int | str, size: tuple[int, int] = SIZE) -> Image.Image:
    """Random colour fields at four scales, smoothly enlarged and blended."""
    rng = random.Random(f"photo-{seed}")
    image: Image.Image | None = None
    for columns, weight in ((4, 1.0), (8, 0.6), (16, 0.35), (32, 0.2)):
        rows = max(1, columns * size[1] // size[0])
        noise = bytes(rng.randrange(256) for _ in range(columns * rows * 3))
        layer = Image.frombytes("RGB", (columns, rows), noise).resize(
            size, Image.Resampling.BICUBIC
        )
        image = layer if image is None else Image.blend(image, layer, weight / (1 + weight))
    assert image is not None
    return image


def product(seed: int | str, size: tuple[int, int] = SIZE) -> Image.Image:
    """One rectangle or ellipse near the middle of a light plain background."""
    rng = random.Random(f"product-{seed}")
    image = Image.new("RGB", size, tuple(rng.randrange(200, 256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    width, height = size
    half_width = rng.randrange(width // 6, width // 2) // 2
    half_height = rng.randrange(height // 6, height // 2) // 2
    x = width // 2 + rng.randrange(-width // 6, width // 6)
    y = height // 2 + rng.randrange(-height // 6, height // 6)
    box = (x - half_width, y - half_height, x + half_width, y + half_height)
    fill = tuple(rng.randrange(200) for _ in range(3))
    if rng.randrange(2):
        draw.rectangle(box, fill=fill)
    else:
        draw.ellipse(box, fill=fill)
    return image


def text_like(seed: int | str, size: tuple[int, int] = SIZE) -> Image.Image:
    """Lines of dark word-sized marks on white, as a screenshot of text."""
    rng = random.Random(f"text-{seed}")
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    y = rng.randrange(10, 60)
    while y < size[1] - 20:
        x = rng.randrange(10, 60)
        while x < size[0] - 40:
            length = rng.randrange(10, 60)
            draw.rectangle((x, y, x + length, y + 10), fill=(rng.randrange(60),) * 3)
            x += length + rng.randrange(6, 14)
        y += rng.randrange(18, 40)
    return image


FAMILIES: dict[str, Callable[[int | str], Image.Image]] = {
    "busy": busy,
    "photo-like": photo_like,
    "product": product,
    "text-like": text_like,
}


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def encoded(image: Image.Image, image_format: str = "PNG", **options: int) -> bytes:
    """The picture saved in a format."""
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def resized_jpeg(image: Image.Image, scale: float = 0.7, quality: int = 70) -> bytes:
    """Scaled down and saved as a JPEG at this quality, as a re-upload often is."""
    size = (round(image.width * scale), round(image.height * scale))
    return encoded(image.resize(size, Image.Resampling.LANCZOS), "JPEG", quality=quality)


def brighter(image: Image.Image, factor: float = 1.06) -> bytes:
    """Every pixel made brighter by a factor (6 %), saved losslessly."""
    return encoded(ImageEnhance.Brightness(image).enhance(factor), "PNG")


def reencoded(image: Image.Image, quality: int = 45) -> bytes:
    """The same pixels saved as a JPEG at a low quality."""
    return encoded(image, "JPEG", quality=quality)


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
