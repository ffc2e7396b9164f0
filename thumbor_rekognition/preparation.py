"""Original bytes -> what a backend accepts.

Rekognition takes JPEG or PNG, at most 5 MB, each side 80..10,000 px. Whatever Pillow can
open is turned into that: turned by its EXIF orientation when Thumbor turns it
(RESPECT_ORIENTATION), decoded at reduced size where the format allows (JPEG draft mode),
reduced towards the analysis size, small ones scaled up and padded. A picture is judged as
every viewer can be shown it, all views in the one picture sent: one that is not fully
opaque flattened onto white as a browser shows it and with its alpha dropped as Thumbor's
JPEG output shows it; one with a colour profile in sRGB as colour-managed viewers show it,
and also as stored where the profile changes what it shows. Each frame also gets the
perceptual fingerprint of its first view (see ``fingerprint``), computed here once from the
pixels the backend is sent. This is blocking work: callers run it in the plugin's executor.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import dataclass, replace

from PIL import Image, ImageChops, ImageCms, ImageMath, ImageOps, UnidentifiedImageError

from thumbor_rekognition import fingerprint

logger = logging.getLogger(__name__)

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
# ... and no part of them (an eighth of the frame a side) differs by more than this.
PART_TOLERANCE = 20
# What a prepared picture shows, in the order its views are laid out (Frame.views).
SHOWN = "shown"
ON_WHITE = "on white"
ALPHA_IGNORED = "alpha ignored"
# Appended to a view's name when it is shown as stored, its colour profile not applied.
WITHOUT_PROFILE = "without its colour profile"


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
    views: tuple[str, ...] = (SHOWN,)
    """What the picture shows: (SHOWN,) for an opaque picture; (ON_WHITE, ALPHA_IGNORED)
    for one that is not fully opaque; each in sRGB through the picture's colour profile,
    followed by the same views named "... without its colour profile" when the profile
    changes what the picture shows."""
    grid: tuple[int, int] = (1, 1)
    """The columns and rows the views are laid out in, left to right then top to bottom."""
    fingerprint: fingerprint.Print | None = None
    """The first view's perceptual fingerprint; None when it has too little detail."""


@dataclass(frozen=True)
class PreparedImage:
    """The frames to judge and what the original looked like."""

    frames: tuple[Frame, ...]
    width: int
    height: int
    format: str
    frame_count: int
    unjudged_scenes: int = 0
    """Distinct scenes of an animation left out of frames, max_frames allowing no more.

    Judging the frames cannot approve such an animation: a rejection among them stands,
    and anything else must wait for a human (pending), never be approved.
    """

    @property
    def views(self) -> tuple[str, ...]:
        """Every view the frames show, in order of first appearance (see Frame.views)."""
        return tuple(dict.fromkeys(view for frame in self.frames for view in frame.views))

    @property
    def fingerprints(self) -> dict[int, fingerprint.Print]:
        """The fingerprint of each frame that has one, by its position in frames."""
        return {
            index: frame.fingerprint
            for index, frame in enumerate(self.frames)
            if frame.fingerprint is not None
        }


def prepare(
    data: bytes,
    *,
    max_side: int = 1600,
    max_pixels: int = 100_000_000,
    max_frames: int = 5,
    oriented: bool = True,
) -> PreparedImage:
    """Turn original bytes into backend-ready frames, or raise UnsupportedImage.

    Every picture is re-encoded, never sent as it came: what the backend judges is what
    a viewer sees, and metadata (a camera's GPS position, hostile chunks) stays here.
    """
    if not data:
        raise UnsupportedImage("empty body")
    try:
        return _prepare(data, max_side, max_pixels, max_frames, oriented)
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


def _prepare(
    data: bytes, max_side: int, max_pixels: int, max_frames: int, oriented: bool
) -> PreparedImage:
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
            profile = _Profile.of(image)
            if getattr(image, "is_animated", False):
                frames, frame_count, unjudged = _animation(
                    image, max_side, max_pixels, max_frames, profile
                )
            else:
                frames = (_encode(_normalise(image, max_side, profile, oriented)),)
                frame_count, unjudged = 1, 0
    return PreparedImage(
        frames=frames,
        width=width,
        height=height,
        format=original_format,
        frame_count=frame_count,
        unjudged_scenes=unjudged,
    )


def _animation(
    image: Image.Image, max_side: int, max_pixels: int, max_frames: int, profile: _Profile | None
) -> tuple[tuple[Frame, ...], int, int]:
    """Every distinct frame of an animation up to max_frames, the frame count, and how
    many distinct frames max_frames left out.

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
        signature = _signature(_reduced(image, SIGNATURE_SIDE, profile).image)
        if all(not signature.close_to(kept) for _, kept in distinct):
            distinct.append((index, signature))
        index += 1
    frames = []
    for position in _most_different(distinct, max_frames):
        image.seek(position)
        frames.append(_encode(_within_limits(_reduced(image, max_side, profile))))
    return tuple(frames), index, len(distinct) - len(frames)


def _reduced(image: Image.Image, side: int, profile: _Profile | None) -> _Picture:
    """The current frame as viewers see it, detached from the animation, reduced by an
    integer factor towards side."""
    factor = max(image.size) // side
    if image.mode in ("P", "PA") and factor >= 2:
        size = (max(1, image.width // factor), max(1, image.height // factor))
        # Palette images only resize by nearest neighbour, and cheaply before anything
        # is copied at full size; enough to see the frame.
        image = image.resize(size, Image.Resampling.NEAREST)
    picture = _picture(image, side, profile)
    if picture.image is image:
        # Seeking the animation rewrites a frame that was not copied.
        copy = image.copy()
        return replace(picture, image=copy, shown=copy if picture.shown is image else picture.shown)
    return picture


@dataclass(frozen=True)
class _Signature:
    """A difference hash (shapes, ignoring flat areas), a 4x4 colour thumbnail (the whole
    frame) and an 8x8 one (its parts: a change over a sixteenth of the frame, a square or
    a band, covers at least one part entirely or half of a row of them)."""

    shape: int
    firm: int
    colours: bytes
    parts: bytes

    def distance(self, other: _Signature) -> float:
        """Above 1 when two frames differ enough to be judged apart."""
        # Where both frames are flat, grain flips bits at random: only compare where at
        # least one has a clear edge.
        mask = self.firm | other.firm
        shape = ((self.shape ^ other.shape) & mask).bit_count()
        pairs = zip(self.colours, other.colours, strict=True)
        colour = sum(abs(a - b) for a, b in pairs) / len(self.colours)
        # One part that changed is enough: a scene that differs in one region only, the
        # rest equal, must be judged apart however little the whole frame's mean moves.
        steps = [abs(a - b) for a, b in zip(self.parts, other.parts, strict=True)]
        part = max(sum(steps[start : start + 3]) / 3 for start in range(0, len(steps), 3))
        return max(shape / SHAPE_TOLERANCE, colour / COLOUR_TOLERANCE, part / PART_TOLERANCE)

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
    rgb = frame.convert("RGB")
    colours = rgb.resize((4, 4), Image.Resampling.BOX).tobytes()
    parts = rgb.resize((8, 8), Image.Resampling.BOX).tobytes()
    return _Signature(shape, firm, colours, parts)


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


def _normalise(
    image: Image.Image, max_side: int, profile: _Profile | None, oriented: bool
) -> _Picture:
    width, height = image.size
    if image.format == "JPEG" and max(width, height) > max_side:
        # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT: most of the cost saved.
        scale = max_side / max(width, height)
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    if oriented and image.getexif().get(0x0112, 1) != 1:
        # exif_transpose copies the picture even when there is nothing to turn.
        image = ImageOps.exif_transpose(image) or image
    return _within_limits(_picture(image, max_side, profile))


@dataclass(frozen=True)
class _Picture:
    """A picture to send, and the views it shows (see Frame.views and Frame.grid)."""

    image: Image.Image
    views: tuple[str, ...]
    grid: tuple[int, int]
    # The first view alone, as it was before being laid out, padded or scaled up.
    shown: Image.Image


def _picture(image: Image.Image, side: int, profile: _Profile | None) -> _Picture:
    """What viewers can be shown of the picture, reduced by an integer factor towards side.

    An opaque picture is one view. Where any pixel is not fully opaque, viewers differ:
    a browser shows the picture on its page (judged on white), while Thumbor's JPEG output
    drops the alpha channel and shows the colours under it, which can hold a picture of
    their own. Both views are judged, side by side or stacked, in one backend call.

    Thumbor copies a picture's colour profile into everything it serves, and browsers
    apply it: views are judged in sRGB through it. Where that changes what the picture
    shows, the views as stored are judged too: viewers without colour management,
    Thumbor's strip_icc() output and its CMYK conversions show those.
    """
    alpha = _alpha(image)
    if alpha is None:
        # A CMYK profile converts CMYK values, not Pillow's rough RGB of them.
        keep_cmyk = image.mode == "CMYK" and profile is not None
        stored: list[Image.Image] = [image if keep_cmyk else _to_rgb(image)]
        names: tuple[str, ...] = (SHOWN,)
    else:
        colour = _without_alpha(image)
        stored = [_on_white(colour, alpha), colour]
        names = (ON_WHITE, ALPHA_IGNORED)
    # Colours are converted after the reduction: on far fewer pixels, to the same effect.
    stored = _reduced_towards(stored, side)
    views = [_to_rgb(view) for view in stored]
    managed = profile.to_srgb(stored) if profile is not None else None
    if managed is not None:
        if all(_alike(shown, raw) for shown, raw in zip(managed, views, strict=True)):
            views = managed
        else:
            views = _reduced_towards([*managed, *views], side)
            names = (*names, *(f"{name} {WITHOUT_PROFILE}" for name in names))
    return _Picture(_tiled(views), names, _grid(len(views), *views[0].size), views[0])


_PROFILE_MODES = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}
# Tags through which LittleCMS converts by a table rather than by tone curves and a matrix.
_TABLE_TAGS = frozenset({b"A2B0", b"A2B1", b"A2B2", b"D2B0", b"D2B1", b"D2B2"})


class _Profile:
    """A picture's embedded ICC profile, converting its views to sRGB as colour-managed
    viewers do."""

    def __init__(self, icc: bytes) -> None:
        self._profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        self._space = self._profile.profile.xcolor_space.strip()
        self._tables = bool(_TABLE_TAGS & _tag_signatures(icc))
        self._transform: ImageCms.ImageCmsTransform | None = None
        self._failed = False
        self._as_stored = False

    @classmethod
    def of(cls, image: Image.Image) -> _Profile | None:
        """The picture's profile, or None when it has none or one that cannot be read.

        An unreadable profile is not refused: the picture is judged as stored. Browsers
        skip a profile they cannot parse and show the stored values, as do viewers without
        colour management and Thumbor's strip_icc() output; refusing would turn away every
        picture whose only fault is a damaged profile, which cameras and editors do write.
        """
        icc = image.info.get("icc_profile")
        if not icc:
            return None
        try:
            return cls(icc)
        except (OSError, ValueError, ImageCms.PyCMSError) as error:
            logger.warning("unreadable colour profile (%s): judged as stored", error)
            return None

    def to_srgb(self, views: list[Image.Image]) -> list[Image.Image] | None:
        """The views converted to sRGB, or None when the profile cannot convert them or
        shows them as stored (an sRGB profile)."""
        mode = _PROFILE_MODES.get(self._space)
        if self._failed or self._as_stored:
            return None
        try:
            if mode is None or any(view.mode != mode for view in views):
                # Browsers ignore a profile that does not describe the pixels it comes with.
                raise ImageCms.PyCMSError(f"a {self._space} profile on {views[0].mode} pixels")
            if self._transform is None:
                self._transform = ImageCms.buildTransform(
                    self._profile,
                    ImageCms.createProfile("sRGB"),
                    mode,
                    "RGB",
                    renderingIntent=ImageCms.Intent.PERCEPTUAL,
                )
                self._as_stored = self._shows_as_stored(self._transform, mode)
                if self._as_stored:
                    return None
            return [self._transform.apply(view) for view in views]
        except ImageCms.PyCMSError as error:
            # Once per picture, not for every frame of an animation.
            self._failed = True
            logger.warning("unusable colour profile (%s): judged as stored", error)
            return None

    def _shows_as_stored(self, transform: ImageCms.ImageCmsTransform, mode: str) -> bool:
        """Whether the profile leaves every colour as stored, give or take rounding.

        Most profiles are sRGB's, and converting through them costs more than all else
        does. Without tables, a profile converts each channel by a tone curve, mixes them
        by a matrix and takes sRGB's curves back: when each channel's 256 levels alone come
        back as they went in, every mix of them does too. A table is not probed.
        """
        if self._tables or mode not in ("RGB", "L"):
            return False
        ramp = Image.frombytes("L", (256, 1), bytes(range(256)))
        if mode == "L":
            probe = ramp
        else:
            dark = Image.new("L", ramp.size)
            probe = Image.new(mode, (256, 4))
            for row, bands in enumerate(
                [(ramp, dark, dark), (dark, ramp, dark), (dark, dark, ramp), (ramp, ramp, ramp)]
            ):
                probe.paste(Image.merge(mode, bands), (0, row))
        difference = ImageChops.difference(transform.apply(probe), probe.convert("RGB"))
        return all(isinstance(band, tuple) and band[1] <= 2 for band in difference.getextrema())


def _tag_signatures(icc: bytes) -> set[bytes]:
    """The tags an ICC profile's table names (ICC.1: a count at byte 128, 12 bytes a tag)."""
    count = min(int.from_bytes(icc[128:132], "big"), max(0, len(icc) - 132) // 12)
    return {icc[132 + 12 * index : 136 + 12 * index] for index in range(count)}


def _alike(one: Image.Image, other: Image.Image) -> bool:
    """Whether two views of a picture show the same, as the frame signatures tell."""
    return _signature(_thumbnail(one)).close_to(_signature(_thumbnail(other)))


def _thumbnail(image: Image.Image) -> Image.Image:
    factor = max(image.size) // SIGNATURE_SIDE
    return image.reduce(factor) if factor >= 2 else image


def _alpha(image: Image.Image) -> Image.Image | None:
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


def _without_alpha(image: Image.Image) -> Image.Image:
    """The picture's colour channels as they are stored, whatever its alpha says."""
    if image.mode in ("RGBA", "RGBa", "P", "PA"):
        # A palette's colours, even the one tRNS makes transparent.
        return image.convert("RGB")
    if image.mode in ("LA", "La"):
        return image.convert("L")
    return _to_rgb(image)


def _on_white(colour: Image.Image, alpha: Image.Image) -> Image.Image:
    background = Image.new(colour.mode, colour.size, "white")
    background.paste(colour, mask=alpha)
    return background


def _reduced_towards(views: list[Image.Image], side: int) -> list[Image.Image]:
    """The views reduced by one integer factor, so that laid out together their longest
    side lies between side and twice that: as good for analysis as an exact resize, at a
    fraction of its cost."""
    columns, rows = _grid(len(views), *views[0].size)
    factor = max(columns * views[0].width, rows * views[0].height) // side
    return [view.reduce(factor) for view in views] if factor >= 2 else views


def _grid(count: int, width: int, height: int) -> tuple[int, int]:
    """Columns and rows to lay count views of width x height out in, as square as can be."""
    shapes = [(columns, math.ceil(count / columns)) for columns in range(1, count + 1)]
    return min(shapes, key=lambda shape: (max(shape[0] * width, shape[1] * height), shape[0]))


def _tiled(views: list[Image.Image]) -> Image.Image:
    """The views in one picture, left to right then top to bottom."""
    if len(views) == 1:
        return views[0]
    width, height = views[0].size
    columns, rows = _grid(len(views), width, height)
    mode = "L" if all(view.mode == "L" for view in views) else "RGB"
    canvas = Image.new(mode, (columns * width, rows * height), "white")
    for position, view in enumerate(views):
        canvas.paste(view, (position % columns * width, position // columns * height))
    return canvas


def _within_limits(picture: _Picture) -> _Picture:
    """The picture with each side within the backend's 80..10,000 px."""
    image = picture.image
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
    return replace(picture, image=image)


_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_rgb(image: Image.Image) -> Image.Image:
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


def _pad(image: Image.Image) -> Image.Image:
    width, height = image.size
    canvas = Image.new(image.mode, (max(width, MIN_SIDE), max(height, MIN_SIDE)), "white")
    canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
    return canvas


def _encode(picture: _Picture) -> Frame:
    image = picture.image
    shown = fingerprint.of(picture.shown)
    quality = JPEG_QUALITY
    while True:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        data = buffer.getvalue()
        if len(data) <= MAX_BYTES:
            return Frame(
                data, "JPEG", image.width, image.height, picture.views, picture.grid, shown
            )
        if quality > 60:
            quality -= 15
        else:
            size = (max(MIN_SIDE, int(image.width * 0.75)), max(MIN_SIDE, int(image.height * 0.75)))
            if size == image.size:
                raise UnsupportedImage("cannot encode the picture within the backend's 5 MB")
            image = image.resize(size, Image.Resampling.BILINEAR)
