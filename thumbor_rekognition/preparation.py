"""Original bytes -> what a backend accepts.

Rekognition takes JPEG or PNG, at most 5 MB, each side 80..10,000 px. Whatever Pillow can
open is turned into that: oriented as a viewer sees it, flattened onto white as a
browser shows it, decoded at reduced size where the format allows (JPEG draft mode),
reduced towards the analysis size, small ones scaled up and padded. This is blocking work:
callers run it in the plugin's executor.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

MAX_BYTES = 5 * 1024 * 1024
MIN_SIDE = 80
MAX_SIDE = 10_000
JPEG_QUALITY = 90
# An animation is walked frame by frame: these bound the work a hostile one can cause.
MAX_SCANNED_FRAMES = 1000
SCAN_BUDGET = 4
# Frame signatures: computed on a copy this small; a step between neighbouring grey
# levels counts as an edge above EDGE; frames closer than the tolerances are one frame.
SIGNATURE_SIDE = 64
EDGE = 3
SHAPE_TOLERANCE = 6
COLOUR_TOLERANCE = 12


class UnsupportedImage(ValueError):
    """The bytes are not a picture the plugin can judge; answered with HTTP 400."""


class ImageTooLarge(UnsupportedImage):
    """The picture has more pixels than MODERATION_MAX_PIXELS allows."""


@dataclass(frozen=True)
class Frame:
    """One picture in a form the backend accepts."""

    data: bytes
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class PreparedImage:
    """The frames to judge and what the original looked like."""

    frames: tuple[Frame, ...]
    width: int
    height: int
    format: str
    frame_count: int


def prepare(
    data: bytes,
    *,
    max_side: int = 1600,
    max_pixels: int = 100_000_000,
    max_frames: int = 5,
) -> PreparedImage:
    """Turn original bytes into backend-ready frames, or raise UnsupportedImage.

    Every picture is re-encoded, never sent as it came: what the backend judges is what
    a viewer sees, and metadata (a camera's GPS position, hostile chunks) stays here.
    """
    if not data:
        raise UnsupportedImage("empty body")
    try:
        return _prepare(data, max_side, max_pixels, max_frames)
    except UnsupportedImage as error:
        kind, message = type(error), str(error)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        kind = ImageTooLarge
        message = f"more pixels than Pillow may decode here (Thumbor's MAX_PIXELS): {error}"
    except MemoryError:
        raise
    except UnidentifiedImageError:
        # Its own message names the in-memory buffer (<_io.BytesIO object at 0x...>).
        kind = UnsupportedImage
        message = "not an image Pillow can open"
    except Exception as error:
        # Pillow's decoders raise OSError, ValueError, SyntaxError and EOFError, but also
        # struct.error, IndexError or RuntimeError on damaged files: all mean the same.
        kind = UnsupportedImage
        message = f"not a readable image ({type(error).__name__}: {error})"
    # Raised afresh, outside the handler and holding nothing of the failure: its
    # traceback, and the decoded pixels its frames hold, die here, not with the refusal.
    raise kind(message)


def _prepare(data: bytes, max_side: int, max_pixels: int, max_frames: int) -> PreparedImage:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"{width}x{height} is more than MODERATION_MAX_PIXELS ({max_pixels}) pixels"
                )
            original_format = image.format or "unknown"
            # Thumbor's PIL engine makes Pillow accept truncated files process-wide;
            # a picture cut short must not be judged on the part that arrived.
            _check_complete(original_format, data)
            if getattr(image, "is_animated", False):
                frames, frame_count = _animation(image, max_side, max_pixels, max_frames)
            else:
                frames, frame_count = (_encode(_normalise(image, max_side)),), 1
    return PreparedImage(
        frames=frames,
        width=width,
        height=height,
        format=original_format,
        frame_count=frame_count,
    )


def _animation(
    image: Image.Image, max_side: int, max_pixels: int, max_frames: int
) -> tuple[tuple[Frame, ...], int]:
    """The distinct frames of an animation, at most max_frames, spread over it.

    A first pass walks every frame (each is drawn over the previous ones, so none can be
    skipped) and keeps a small signature of each; a frame whose signature is close to
    one already kept is a near-duplicate. The second pass encodes the chosen frames.
    """
    distinct: list[tuple[int, _Signature]] = []
    scanned_pixels = 0
    index = 0
    while True:
        try:
            image.seek(index)
        except EOFError:
            break
        scanned_pixels += image.width * image.height
        if index >= MAX_SCANNED_FRAMES or scanned_pixels > max_pixels * SCAN_BUDGET:
            raise ImageTooLarge(
                f"animation too long to judge every frame ({index + 1}+ frames of "
                f"{image.width}x{image.height})"
            )
        signature = _signature(_reduced(image, SIGNATURE_SIDE))
        if all(not signature.close_to(kept) for _, kept in distinct):
            distinct.append((index, signature))
        index += 1
    frames = []
    for position in _most_different(distinct, max_frames):
        image.seek(position)
        frames.append(_encode(_normalise(_reduced(image, max_side), max_side)))
    return tuple(frames), index


def _reduced(image: Image.Image, side: int) -> Image.Image:
    """The current frame as a viewer sees it, detached from the animation, reduced by an
    integer factor towards side before anything is copied at full size."""
    factor = max(image.size) // side
    if image.mode in ("P", "PA"):
        if factor >= 2:
            size = (max(1, image.width // factor), max(1, image.height // factor))
            # Palette images only resize by nearest neighbour; enough to see the frame.
            image = image.resize(size, Image.Resampling.NEAREST)
        return _to_rgb(image.convert("RGBA"))
    return _to_rgb(image.reduce(factor) if factor >= 2 else image.copy())


@dataclass(frozen=True)
class _Signature:
    """A difference hash (shapes, ignoring flat areas) and a 4x4 colour thumbnail."""

    shape: int
    firm: int
    colours: bytes

    def distance(self, other: _Signature) -> float:
        """Above 1 when two frames differ enough to be judged apart."""
        # Where both frames are flat, grain flips bits at random: only compare where at
        # least one has a clear edge.
        mask = self.firm | other.firm
        shape = ((self.shape ^ other.shape) & mask).bit_count()
        pairs = zip(self.colours, other.colours, strict=True)
        colour = sum(abs(a - b) for a, b in pairs) / len(self.colours)
        return max(shape / SHAPE_TOLERANCE, colour / COLOUR_TOLERANCE)

    def close_to(self, other: _Signature) -> bool:
        return self.distance(other) <= 1.0


def _signature(frame: Image.Image) -> _Signature:
    grey = frame.convert("L").resize((9, 8), Image.Resampling.BILINEAR).tobytes()
    shape = firm = 0
    for row in range(8):
        for column in range(8):
            step = grey[row * 9 + column] - grey[row * 9 + column + 1]
            shape = shape << 1 | (step > EDGE)
            firm = firm << 1 | (abs(step) > EDGE)
    colours = frame.convert("RGB").resize((4, 4), Image.Resampling.BOX).tobytes()
    return _Signature(shape, firm, colours)


def _most_different(frames: list[tuple[int, _Signature]], count: int) -> list[int]:
    """The first frame, then repeatedly the frame least like those already chosen.

    An odd frame out (one scene that differs from the rest) is chosen early, which an
    even spacing in time could skip.
    """
    if len(frames) <= count:
        return [index for index, _ in frames]
    chosen = [frames[0]]
    rest = frames[1:]
    while len(chosen) < count and rest:
        farthest = max(rest, key=lambda item: min(item[1].distance(c[1]) for c in chosen))
        chosen.append(farthest)
        rest.remove(farthest)
    return sorted(index for index, _ in chosen)


def _check_complete(image_format: str, data: bytes) -> None:
    if image_format == "JPEG":
        last_scan = data.rfind(b"\xff\xda")
        if last_scan == -1 or data.find(b"\xff\xd9", last_scan) == -1:
            raise UnsupportedImage("truncated JPEG: no end of image after its last scan")
    elif image_format == "PNG" and data.rfind(b"IEND") == -1:
        raise UnsupportedImage("truncated PNG: no IEND chunk")
    elif image_format == "GIF" and not data.rstrip(b"\x00").endswith(b";"):
        # Also refuses a GIF with something else appended (a GIF/HTML polyglot).
        raise UnsupportedImage("truncated GIF, or data after it: it does not end with its trailer")


def _normalise(image: Image.Image, max_side: int) -> Image.Image:
    width, height = image.size
    if image.format == "JPEG" and max(width, height) > max_side:
        # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT: most of the cost saved.
        scale = max_side / max(width, height)
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    if image.getexif().get(0x0112, 1) != 1:
        # exif_transpose copies the picture even when there is nothing to turn.
        image = ImageOps.exif_transpose(image) or image
    image = _to_rgb(image)
    # An integer box reduction leaves the longest side between max_side and twice that:
    # as good for analysis as an exact resize, at a fraction of its cost.
    factor = max(image.size) // max_side
    if factor >= 2:
        image = image.reduce(factor)
    width, height = image.size
    if max(width, height) > MAX_SIDE:
        scale = MAX_SIDE / max(width, height)
        image = image.resize((max(1, int(width * scale)), max(1, int(height * scale))))
    elif min(width, height) < MIN_SIDE:
        scale = min(MIN_SIDE / min(width, height), MAX_SIDE / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    if min(image.size) < MIN_SIDE:
        image = _pad(image)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGB", "L"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
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


def _pad(image: Image.Image) -> Image.Image:
    width, height = image.size
    canvas = Image.new(image.mode, (max(width, MIN_SIDE), max(height, MIN_SIDE)), "white")
    canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
    return canvas


def _encode(image: Image.Image) -> Frame:
    quality = JPEG_QUALITY
    while True:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        data = buffer.getvalue()
        if len(data) <= MAX_BYTES:
            return Frame(data, "JPEG", image.width, image.height)
        if quality > 60:
            quality -= 15
        else:
            size = (max(MIN_SIDE, int(image.width * 0.75)), max(MIN_SIDE, int(image.height * 0.75)))
            if size == image.size:
                raise UnsupportedImage("cannot encode the picture within the backend's 5 MB")
            image = image.resize(size, Image.Resampling.BILINEAR)
