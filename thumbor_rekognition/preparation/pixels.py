"""Pixel work on a picture's views: alpha, modes turned into 8-bit RGB or grey, views laid
out side by side."""

from __future__ import annotations

import math

from PIL import Image, ImageMath

_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def alpha(image: Image.Image) -> Image.Image | None:
    """The picture's alpha as an L mask, or None when every pixel is fully opaque."""
    band = image.getbands()[-1]
    if band in ("A", "a"):
        alpha = image.getchannel(band)
    elif "transparency" not in image.info:
        return None
    elif image.mode in _WIDE_GREY:
        # A transparent grey level (tRNS) of a 16-bit picture; Pillow cannot convert it.
        key = image.info["transparency"]
        keyed = ImageMath.lambda_eval(
            lambda args: args["equal"](args["image"], key), image=image.convert("I")
        )
        alpha = keyed.convert("L").point(lambda value: 0 if value else 255)
    else:
        alpha = image.convert("RGBA").getchannel("A")
    lowest = alpha.getextrema()[0]
    return alpha if isinstance(lowest, (int, float)) and lowest < 255 else None


def without_alpha(image: Image.Image) -> Image.Image:
    """The picture's colour channels as they are stored, whatever its alpha says."""
    if image.mode in ("RGBA", "RGBa", "P", "PA"):
        # A palette's colours, even the one tRNS makes transparent.
        return image.convert("RGB")
    if image.mode in ("LA", "La"):
        return image.convert("L")
    return to_rgb(image)


def on_white(colour: Image.Image, alpha: Image.Image) -> Image.Image:
    background = Image.new(colour.mode, colour.size, "white")
    background.paste(colour, mask=alpha)
    return background


def reduced_towards(views: list[Image.Image], side: int) -> list[Image.Image]:
    """The views reduced by one integer factor, so that laid out together their longest
    side lies between side and twice that: as good for analysis as an exact resize, at a
    fraction of its cost."""
    columns, rows = grid(len(views), *views[0].size)
    factor = max(columns * views[0].width, rows * views[0].height) // side
    return [view.reduce(factor) for view in views] if factor >= 2 else views


def grid(count: int, width: int, height: int) -> tuple[int, int]:
    """Columns and rows to lay count views of width x height out in, as square as can be."""
    shapes = [(columns, math.ceil(count / columns)) for columns in range(1, count + 1)]
    return min(shapes, key=lambda shape: (max(shape[0] * width, shape[1] * height), shape[0]))


def tiled(views: list[Image.Image]) -> Image.Image:
    """The views in one picture, left to right then top to bottom."""
    if len(views) == 1:
        return views[0]
    width, height = views[0].size
    columns, rows = grid(len(views), width, height)
    mode = "L" if all(view.mode == "L" for view in views) else "RGB"
    canvas = Image.new(mode, (columns * width, rows * height), "white")
    for position, view in enumerate(views):
        canvas.paste(view, (position % columns * width, position // columns * height))
    return canvas


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGB", "L"):
        return image
    if image.mode in _WIDE_GREY:
        # Pillow clips wide values when converting to 8 bits; scale them instead.
        wide = image.convert("I") if image.mode.startswith("I;16") else image
        peak = 65535.0 if image.mode.startswith("I;16") else _peak(wide)
        if peak <= 255.0:
            return wide.convert("L")
        return wide.point(lambda value: value * (255.0 / peak)).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _peak(image: Image.Image) -> float:
    """The white point of a wide greyscale image: 8-bit, 16-bit, or its own maximum."""
    extrema = image.getextrema()
    high = extrema[1] if isinstance(extrema, tuple) else extrema
    value = float(high) if isinstance(high, (int, float)) else 0.0
    if value <= 255.0:
        return 255.0
    return 65535.0 if value <= 65535.0 else value
