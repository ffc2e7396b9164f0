"""What rides along a picture's pixels, removed from an original before it is judged.

The backend judges pixels; Thumbor serves more than pixels. It copies a picture's colour
profile into every output, its EXIF block too under PRESERVE_EXIF_INFO, and the upload
API answers a stored original byte for byte. So whatever a file carries besides its
pixels (a colour profile that is really another picture, an EXIF thumbnail, an XMP or MPF
preview, a comment, data after the end of the image) would be served unjudged. Each JPEG,
PNG, WebP and GIF is rebuilt here from what decodes its pixels, an EXIF block without its
thumbnail or any picture in it, and a colour profile viewers can use; nothing is
re-encoded (docs/doors.md lists what is kept, format by format).

A colour profile viewers cannot use is removed, so the picture is served as it is judged:
as stored. Cleaning is deterministic and idempotent: a decision's content hash is that of
the cleaned bytes, which an original and its stored copy share. EXIF blocks are walked,
and pictures inside bytes told, by ``exif``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import struct
import zlib
from dataclasses import dataclass

from PIL import ImageCms

from thumbor_rekognition.exif import exif, holds_picture
from thumbor_rekognition.preparation import UnsupportedImage

JPEG = b"\xff\xd8\xff"
PNG = b"\x89PNG\r\n\x1a\n"
# A colour profile larger than this once inflated is not read: removed.
MAX_INFLATED = 16 * 1024 * 1024
# In entropy-coded data: the first FF (after any fill FFs) that starts a marker.
_NEXT_MARKER = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
# A picture in a JPEG's scan data (decoders skip what they do not need): signatures too
# long to occur there by chance.
_PICTURE_IN_SCAN = re.compile(
    rb"\x89PNG\r\n\x1a\n|GIF8[79]a|RIFF....WEBP|iVBORw0KGgo|R0lGODlh|R0lGODdh|/9j/4AAQ|/9j/4QA",
    re.DOTALL,
)
# The segments besides APPn and COM that a JPEG (baseline, extended, progressive,
# lossless) is decoded with: frames, tables, restart interval, scans, line count.
_DECODED = frozenset(range(0xC0, 0xD0)) - {0xC8} | {0xDA, 0xDB, 0xDC, 0xDD}


@dataclass(frozen=True)
class Cleaned:
    """An original as it is judged and served, and what was removed from it."""

    data: bytes
    removed: tuple[str, ...] = ()
    was: str = ""
    """The sha256 of the bytes as they came, when cleaning changed them; "" otherwise."""


def cleaned(data: bytes, upright: bool = False) -> Cleaned:
    """The original without what viewers are not shown, or raise UnsupportedImage when
    its structure cannot be followed (a decoder would guess; nothing is served on a guess).

    upright: its EXIF orientation is set to 1 (RESPECT_ORIENTATION = False): Thumbor does
    not turn it, so no viewer may (browsers would, in the original and under
    PRESERVE_EXIF_INFO); it is judged as stored."""
    if data.startswith(JPEG):
        out, removed = _jpeg(data, upright)
    elif data.startswith(PNG):
        out, removed = _png(data, upright)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        out, removed = _webp(data, upright)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        out, removed = _gif(data)
    else:
        return Cleaned(data)
    if out == data:
        return Cleaned(data)
    return Cleaned(out, tuple(dict.fromkeys(removed)), hashlib.sha256(data).hexdigest())


def usable_profile(icc: bytes, space: str) -> bool:
    """Whether a colour profile is one viewers apply to pixels of this colour space
    (RGB, GRAY or CMYK) and carries nothing but a profile."""
    # Common profiles are a few kB and come again and again; a large one is not kept.
    return (_usable_often if len(icc) <= 65_536 else _usable)(icc, space)


def _usable(icc: bytes, space: str) -> bool:
    if holds_picture(icc):
        return False
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space.strip() != space:
            return False
        mode = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}[space]
        ImageCms.buildTransform(profile, ImageCms.createProfile("sRGB"), mode, "RGB")
    except (OSError, ValueError, KeyError, ImageCms.PyCMSError):
        return False
    return True


_usable_often = functools.lru_cache(maxsize=64)(_usable)


# JPEG


def _jpeg(data: bytes, upright: bool) -> tuple[bytes, list[str]]:
    segments, removed = _segments(data)
    space = {1: "GRAY", 3: "RGB", 4: "CMYK"}.get(_components(segments), "")
    icc_parts = [s for s in segments if s[0] == 0xE2 and s[1].startswith(b"ICC_PROFILE\0")]
    icc = b"".join(part[1][14:] for part in sorted(icc_parts, key=lambda s: s[1][12:13]))
    keep_icc = bool(icc) and usable_profile(icc, space)
    if icc and not keep_icc:
        removed.append("colour profile")
    out = [b"\xff\xd8"]
    exif_seen = False
    for marker, payload in segments:
        if marker is None:
            out.append(payload)
            continue
        if marker == 0xE0 and payload.startswith(b"JFIF\0") and len(payload) >= 14:
            if len(payload) > 14 or payload[12:14] != b"\0\0":
                removed.append("JFIF thumbnail")
            payload = payload[:12] + b"\0\0"
        elif marker == 0xE1 and payload.startswith(b"Exif\0\0") and not exif_seen:
            exif_seen = True
            tiff, lost = exif(payload[6:], upright)
            removed.extend(lost)
            if not tiff:
                continue
            payload = b"Exif\0\0" + tiff
        elif marker == 0xE2 and payload.startswith(b"ICC_PROFILE\0"):
            if not keep_icc:
                continue
        elif marker == 0xEE and payload.startswith(b"Adobe") and len(payload) >= 12:
            payload = payload[:12]
        elif marker not in _DECODED:
            removed.append(_segment_name(marker, payload))
            continue
        out.append(bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload)
    out.append(b"\xff\xd9")
    return b"".join(out), removed


def _segments(data: bytes) -> tuple[list[tuple[int | None, bytes]], list[str]]:
    """The segments between SOI and EOI as (marker, payload); entropy-coded data and
    standalone markers as (None, bytes). What lies outside that structure is removed."""
    segments: list[tuple[int | None, bytes]] = []
    removed: list[str] = []
    position = 2
    size = len(data)
    while True:
        if position + 2 > size:
            raise UnsupportedImage("JPEG without an end of image")
        if data[position] != 0xFF:
            # Bytes between segments: decoders skip them, so they are no part of the image.
            following = data.find(b"\xff", position)
            if following == -1:
                raise UnsupportedImage("JPEG without an end of image")
            removed.append("bytes between segments")
            position = following
            continue
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1
            continue
        if marker == 0xD9:
            if data[position + 2 :].strip(b"\0"):
                removed.append("data after the end of the image")
            return segments, removed
        if marker == 0xD8:
            raise UnsupportedImage("a second start of image inside the JPEG")
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            segments.append((None, data[position : position + 2]))
            position += 2
            continue
        if position + 4 > size:
            raise UnsupportedImage("JPEG segment cut short")
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        end = position + 2 + length
        if length < 2 or end > size:
            raise UnsupportedImage("JPEG segment longer than the file")
        segments.append((marker, data[position + 4 : end]))
        position = end
        if marker == 0xDA:
            # Entropy-coded data runs to the next marker other than a restart or a stuffed FF.
            found = _NEXT_MARKER.search(data, position)
            if found is None:
                raise UnsupportedImage("JPEG without an end of image")
            scan = found.end() - 2
            if _PICTURE_IN_SCAN.search(data, position, scan):
                raise UnsupportedImage("a picture inside the JPEG's scan data")
            segments.append((None, data[position:scan]))
            position = scan


def _components(segments: list[tuple[int | None, bytes]]) -> int:
    """The colour components of the JPEG's one frame."""
    frames = [
        payload
        for marker, payload in segments
        if marker is not None and 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)
    ]
    if len(frames) != 1:
        # Decoders show the first; a second would be served unjudged.
        raise UnsupportedImage(f"a JPEG of {len(frames)} frames")
    return frames[0][5] if len(frames[0]) > 5 else 0


def _segment_name(marker: int, payload: bytes) -> str:
    if marker == 0xFE:
        return "comment"
    if not 0xE0 <= marker <= 0xEF:
        return f"segment 0x{marker:02x}"
    name = payload[:30].split(b"\0", 1)[0].decode("latin-1", "replace")
    known = {"http://ns.adobe.com/xap/1.0/": "XMP", "MPF": "MPF preview"}
    return f"APP{marker - 0xE0} {known.get(name, name[:20] or 'segment')}"


# PNG

# Chunks that decode or colour the image, or animate it (APNG).
_PNG_KEPT = {
    b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT",
    b"bKGD", b"pHYs", b"cICP", b"acTL", b"fcTL", b"fdAT",
}  # fmt: skip


def _png(data: bytes, upright: bool) -> tuple[bytes, list[str]]:
    # Chunks are sliced out only to be kept or read: a large text chunk is never copied.
    view = memoryview(data)
    out: list[bytes | memoryview] = [PNG]
    removed: list[str] = []
    position = len(PNG)
    space = ""
    # Each at most once (the first, as decoders read it); another is removed unread.
    seen: set[bytes] = set()
    rewritten = False
    while True:
        if position + 12 > len(data):
            raise UnsupportedImage("truncated PNG: no IEND chunk")
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        end = position + 12 + length
        if end > len(data):
            raise UnsupportedImage("PNG chunk longer than the file")
        body = view[position + 8 : end - 4]
        chunk: bytes | memoryview = view[position:end]
        position = end
        if kind == b"IHDR" and len(body) >= 10:
            space = "GRAY" if body[9] in (0, 4) else "RGB"
        if kind in (b"iCCP", b"eXIf") and kind in seen:
            removed.append(f"{kind.decode('latin-1')} chunk")
            continue
        seen.add(kind)
        if kind == b"iCCP":
            if not _usable_png_profile(bytes(body), space):
                removed.append("colour profile")
                continue
        elif kind == b"eXIf":
            tiff, lost = exif(bytes(body), upright)
            removed.extend(lost)
            if not tiff:
                continue
            if tiff != body:
                rewritten = True
                chunk = _png_chunk(kind, tiff)
        elif kind not in _PNG_KEPT:
            removed.append(f"{kind.decode('latin-1')} chunk")
            continue
        out.append(chunk)
        if kind == b"IEND":
            if data[position:]:
                removed.append("data after the end of the image")
            if not removed and not rewritten:
                # Nothing to take out: the bytes as they came, not a copy of them (a
                # large original would be held twice while it is judged).
                return data, removed
            return b"".join(out), removed


def _usable_png_profile(body: bytes, space: str) -> bool:
    name_end = body.find(b"\0")
    if name_end == -1 or name_end + 2 > len(body):
        return False
    inflater = zlib.decompressobj()
    try:
        icc = inflater.decompress(body[name_end + 2 :], MAX_INFLATED)
    except zlib.error:
        return False
    return not inflater.unconsumed_tail and usable_profile(icc, space)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


# WebP

_WEBP_IMAGE = {b"VP8 ", b"VP8L", b"ALPH"}
_WEBP_KEPT = _WEBP_IMAGE | {b"VP8X", b"ANIM", b"ANMF"}
_VP8X_ICC = 0x20
_VP8X_EXIF = 0x08
_VP8X_XMP = 0x04


def _webp(data: bytes, upright: bool) -> tuple[bytes, list[str]]:
    (riff_size,) = struct.unpack("<I", data[4:8])
    end_of_riff = min(len(data), 8 + riff_size)
    removed = ["data after the end of the image"] if data[end_of_riff:] else []
    chunks = _riff_chunks(data, 12, end_of_riff)
    kept: list[tuple[bytes, bytes]] = []
    for kind, body in chunks:
        if kind in (b"ICCP", b"EXIF", b"VP8X") and any(kind == k for k, _ in kept):
            # Each at most once (the first, as decoders read it); another is removed unread.
            removed.append(f"{kind.decode('latin-1')} chunk")
            continue
        if kind == b"ICCP":
            if not usable_profile(body, "RGB"):
                removed.append("colour profile")
                continue
        elif kind == b"EXIF":
            tiff, lost = exif(body[6:] if body.startswith(b"Exif\0\0") else body, upright)
            removed.extend(lost)
            if not tiff:
                continue
            body = tiff
        elif kind == b"ANMF" and len(body) >= 16:
            # A frame: its header, then its image chunks and perhaps unknown ones.
            frame = _riff_chunks(body, 16, len(body))
            removed.extend(
                f"{kind.decode('latin-1').strip()} chunk"
                for kind, _ in frame
                if kind not in _WEBP_IMAGE
            )
            body = body[:16] + b"".join(
                _riff_chunk(kind, part) for kind, part in frame if kind in _WEBP_IMAGE
            )
        elif kind not in _WEBP_KEPT:
            removed.append(f"{kind.decode('latin-1').strip()} chunk")
            continue
        kept.append((kind, body))
    kinds = {kind for kind, _ in kept}
    out = []
    for kind, body in kept:
        if kind == b"VP8X" and body:
            flags = body[0] & ~(_VP8X_XMP | _VP8X_ICC | _VP8X_EXIF)
            flags |= (_VP8X_ICC if b"ICCP" in kinds else 0) | (
                _VP8X_EXIF if b"EXIF" in kinds else 0
            )
            body = bytes((flags,)) + body[1:]
        out.append(_riff_chunk(kind, body))
    payload = b"WEBP" + b"".join(out)
    return b"RIFF" + struct.pack("<I", len(payload)) + payload, removed


def _riff_chunks(data: bytes, position: int, end: int) -> list[tuple[bytes, bytes]]:
    """The (kind, body) of each RIFF chunk from position to end."""
    chunks = []
    while position + 8 <= end:
        kind = data[position : position + 4]
        (length,) = struct.unpack("<I", data[position + 4 : position + 8])
        if position + 8 + length > end:
            raise UnsupportedImage("WebP chunk longer than the file")
        chunks.append((kind, data[position + 8 : position + 8 + length]))
        position += 8 + length + (length & 1)
    return chunks


def _riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


# GIF

# Application extensions that loop an animation; every other one (XMP, ICC) is removed.
_GIF_LOOPS = (b"NETSCAPE2.0", b"ANIMEXTS1.0")


def _gif(data: bytes) -> tuple[bytes, list[str]]:
    if len(data) < 13:
        raise UnsupportedImage("truncated GIF")
    position = 13 + _colour_table(data[10])
    # What is removed, as ranges: an animation of many frames is not copied block by block.
    dropped: list[tuple[int, int]] = []
    removed: list[str] = []
    while True:
        if position >= len(data):
            raise UnsupportedImage(
                "truncated GIF, or data after it: it does not end with its trailer"
            )
        block = data[position]
        if block == 0x3B:
            if data[position + 1 :].strip(b"\0"):
                # Refused, as preparation refuses it: a GIF/HTML polyglot, say.
                raise UnsupportedImage("data after the GIF's trailer")
            dropped.append((position + 1, len(data)))
            pairs = zip([(0, 0), *dropped[:-1]], dropped, strict=True)
            kept = [data[end:start] for (_, end), (start, _) in pairs]
            return b"".join(kept), removed
        if block == 0x2C:
            if position + 11 > len(data):
                raise UnsupportedImage("truncated GIF")
            position = _sub_blocks(data, position + 10 + _colour_table(data[position + 9]) + 1)
        elif block == 0x21 and position + 2 <= len(data):
            label = data[position + 1]
            start = position
            position = _sub_blocks(data, position + 2)
            loops = label == 0xFF and data[start + 3 : start + 14] in _GIF_LOOPS
            if label != 0xF9 and not loops:
                names = {0xFE: "comment", 0x01: "plain text", 0xFF: "application extension"}
                removed.append(f"GIF {names.get(label, 'extension')}")
                dropped.append((start, position))
        else:
            raise UnsupportedImage(f"GIF block 0x{block:02x} unknown")


def _colour_table(flags: int) -> int:
    """The size of the colour table a GIF descriptor's packed flags announce."""
    return 3 * 2 ** ((flags & 0x07) + 1) if flags & 0x80 else 0


def _sub_blocks(data: bytes, position: int) -> int:
    """Where the chain of data sub-blocks starting at position ends."""
    while True:
        if position >= len(data):
            raise UnsupportedImage("truncated GIF")
        size = data[position]
        position += 1 + size
        if size == 0:
            return position
