"""Original bytes -> what a backend accepts.

Rekognition takes JPEG or PNG, at most 5 MB, each side 80..10,000 px. Whatever Pillow can
open is turned into that: turned by its EXIF orientation when Thumbor turns it
(RESPECT_ORIENTATION), decoded at reduced size where the format allows (JPEG draft mode),
reduced towards the analysis size, small ones scaled up and padded. A picture is judged as
every viewer can be shown it, all views in the one picture sent: one that is not fully
opaque flattened onto white as a browser shows it and with its alpha dropped as Thumbor's
JPEG output shows it; one with a colour profile in sRGB as colour-managed viewers show it,
and also as stored where the profile changes what it shows. Each frame also gets the
PDQ hash of its first view, with its rotations' and mirrors' (see ``pdq``; the index of
judged pictures keeps it as the frame's ``fingerprint``), computed here once from the
pixels the backend is sent. This is blocking work: callers
run it in the plugin's executor.

The parts below this one: ``pixels`` (modes, alpha, layout), ``colour`` (ICC profiles),
``signatures`` (telling an animation's frames apart).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, replace

from PIL import Image, ImageOps, UnidentifiedImageError

from thumbor_rekognition import fingerprint, pdq
from thumbor_rekognition.pdq import Hash as PdqHash
from thumbor_rekognition.preparation import colour, pixels, signatures

MAX_BYTES = 5 * 1024 * 1024
MIN_SIDE = 80
MAX_SIDE = 10_000
JPEG_QUALITY = 90
# An animation is walked frame by frame: these bound the work a hostile one can cause.
MAX_SCANNED_FRAMES = 1000
SCAN_BUDGET = 4
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
    pdq: PdqHash | None = None
    """The first view's PDQ hash and quality, with its rotations' and mirrors'."""


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
        """The fingerprint of each frame whose PDQ quality is enough to match it, by its
        position in frames."""
        prints = {index: fingerprint.of(frame.pdq) for index, frame in enumerate(self.frames)}
        return {index: print_ for index, print_ in prints.items() if print_ is not None}

    @property
    def pdq(self) -> dict[int, PdqHash]:
        """The PDQ hash of each frame whose quality is enough to match it, by position."""
        return {
            index: frame.pdq
            for index, frame in enumerate(self.frames)
            if frame.pdq is not None and frame.pdq.usable
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
            profile = colour.Profile.of(image)
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
    image: Image.Image,
    max_side: int,
    max_pixels: int,
    max_frames: int,
    profile: colour.Profile | None,
) -> tuple[tuple[Frame, ...], int, int]:
    """Every distinct frame of an animation up to max_frames, the frame count, and how
    many distinct frames max_frames left out.

    A first pass walks every frame (each is drawn over the previous ones, so none can be
    skipped) and keeps a small signature of each; a frame whose signature is close to
    one already kept is a near-duplicate. The second pass encodes the chosen frames.
    """
    distinct: list[tuple[int, signatures.Signature]] = []
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
        signature = signatures.of(_reduced(image, signatures.SIGNATURE_SIDE, profile).image)
        if all(not signature.close_to(kept) for _, kept in distinct):
            distinct.append((index, signature))
        index += 1
    frames = []
    for position in signatures.most_different(distinct, max_frames):
        image.seek(position)
        frames.append(_encode(_within_limits(_reduced(image, max_side, profile))))
    return tuple(frames), index, len(distinct) - len(frames)


def _reduced(image: Image.Image, side: int, profile: colour.Profile | None) -> _Picture:
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
    image: Image.Image, max_side: int, profile: colour.Profile | None, oriented: bool
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


def _picture(image: Image.Image, side: int, profile: colour.Profile | None) -> _Picture:
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
    alpha = pixels.alpha(image)
    if alpha is None:
        # A CMYK profile converts CMYK values, not Pillow's rough RGB of them.
        keep_cmyk = image.mode == "CMYK" and profile is not None
        stored: list[Image.Image] = [image if keep_cmyk else pixels.to_rgb(image)]
        names: tuple[str, ...] = (SHOWN,)
    else:
        colour = pixels.without_alpha(image)
        stored = [pixels.on_white(colour, alpha), colour]
        names = (ON_WHITE, ALPHA_IGNORED)
    # Colours are converted after the reduction: on far fewer pixels, to the same effect.
    stored = pixels.reduced_towards(stored, side)
    views = [pixels.to_rgb(view) for view in stored]
    managed = profile.to_srgb(stored) if profile is not None else None
    if managed is not None:
        if all(signatures.alike(shown, raw) for shown, raw in zip(managed, views, strict=True)):
            views = managed
        else:
            views = pixels.reduced_towards([*managed, *views], side)
            names = (*names, *(f"{name} {WITHOUT_PROFILE}" for name in names))
    return _Picture(pixels.tiled(views), names, pixels.grid(len(views), *views[0].size), views[0])


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


def _pad(image: Image.Image) -> Image.Image:
    width, height = image.size
    canvas = Image.new(image.mode, (max(width, MIN_SIDE), max(height, MIN_SIDE)), "white")
    canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
    return canvas


def _encode(picture: _Picture) -> Frame:
    image = picture.image
    hashed = pdq.of(picture.shown)
    quality = JPEG_QUALITY
    while True:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        data = buffer.getvalue()
        if len(data) <= MAX_BYTES:
            return Frame(
                data,
                "JPEG",
                image.width,
                image.height,
                picture.views,
                picture.grid,
                hashed,
            )
        if quality > 60:
            quality -= 15
        else:
            size = (max(MIN_SIDE, int(image.width * 0.75)), max(MIN_SIDE, int(image.height * 0.75)))
            if size == image.size:
                raise UnsupportedImage("cannot encode the picture within the backend's 5 MB")
            image = image.resize(size, Image.Resampling.BILINEAR)
