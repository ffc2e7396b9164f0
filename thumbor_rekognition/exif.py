"""EXIF blocks (a TIFF structure) as they are kept in a cleaned original: without a
thumbnail, pictures in their values or bytes no directory points to; and the test for the
start of a picture in bytes, which the cleaning of every format uses (see ``embedded``)."""

from __future__ import annotations

import re
import struct

# Bytes of EXIF directories and values read, besides four times the block's size.
MAX_EXIF_WALK = 1024 * 1024
# The start of a picture any common tool opens, raw or base64-encoded.
_PICTURE = re.compile(
    rb"\xff\xd8\xff[\xc0-\xfe]|\x89PNG\r\n|GIF8[79]a|RIFF....WEBP|II\*\x00|MM\x00\*"
    rb"|/9j/[0-9A-Za-z+/]|iVBORw0KGgo|R0lGOD[dl]|UklGR",
    re.DOTALL,
)


def holds_picture(data: bytes) -> bool:
    """Whether bytes contain the start of a picture (raw or base64)."""
    return _PICTURE.search(data) is not None


_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_ORIENTATION = 0x0112
# Tags pointing to a directory of their own: Exif, GPS, Interoperability.
_SUB_DIRECTORIES = (0x8769, 0x8825, 0xA005)


def exif(tiff: bytes, upright: bool = False) -> tuple[bytes, list[str]]:
    """An EXIF block without its thumbnail, pictures in its values, or bytes no directory
    points to (zeroed in place, the block cut after its last used byte), its orientation
    set to 1 when upright; b"" when it cannot be followed (removed whole)."""
    if tiff[:4] not in (b"II*\0", b"MM\0*") or len(tiff) < 8:
        return b"", ["unreadable EXIF"]
    order = "<" if tiff[:2] == b"II" else ">"
    used: list[tuple[int, int]] = [(0, 8)]
    removed: list[str] = []
    (first,) = struct.unpack(order + "I", tiff[4:8])
    pending = [first]
    seen: set[int] = set()
    first_next = -1
    turned = -1
    # Directories and values may overlap: a hostile block could make the walk quadratic.
    budget = MAX_EXIF_WALK + 4 * len(tiff)
    while pending:
        offset = pending.pop()
        if offset in seen or offset + 2 > len(tiff):
            continue
        seen.add(offset)
        (count,) = struct.unpack(order + "H", tiff[offset : offset + 2])
        end = offset + 2 + 12 * count + 4
        budget -= end - offset
        if end - (0 if offset == first else 4) > len(tiff) or budget < 0:
            return b"", ["unreadable EXIF"]
        if offset == first:
            first_next = end - 4
        # A directory's link to a next one is kept for the first only (and cut there);
        # writers leave it out of sub-directories, whose values may start right there.
        used.append((offset, end if offset == first else end - 4))
        for entry in range(offset + 2, end - 4, 12):
            tag, kind, number = struct.unpack(order + "HHI", tiff[entry : entry + 8])
            length = _TYPE_SIZES.get(kind, 1) * number
            start = entry + 8
            if length > 4:
                (start,) = struct.unpack(order + "I", tiff[entry + 8 : entry + 12])
            if start + length > len(tiff):
                continue
            budget -= length
            if budget < 0:
                return b"", ["unreadable EXIF"]
            if tag == _ORIENTATION and offset == first and kind == 3 and number == 1:
                turned = start
            if tag in _SUB_DIRECTORIES and kind in (4, 13) and number == 1:
                pending.append(struct.unpack(order + "I", tiff[start : start + 4])[0])
            elif length > 4 and holds_picture(tiff[start : start + length]):
                removed.append(f"picture in EXIF tag 0x{tag:04x}")
                continue
            if length > 4:
                used.append((start, start + length))
    if first_next < 0:
        return b"", ["unreadable EXIF"]
    out = bytearray(len(tiff))
    for start, end in used:
        out[start:end] = tiff[start:end]
    upright_value = struct.pack(order + "H", 1)
    if upright and turned >= 0 and out[turned : turned + 2] != upright_value:
        removed.append("EXIF orientation (RESPECT_ORIENTATION is off)")
        out[turned : turned + 2] = upright_value
    # IFD1, the thumbnail's directory, is no longer linked: its bytes were zeroed above.
    if out[first_next : first_next + 4] != b"\0\0\0\0":
        removed.append("EXIF thumbnail")
        out[first_next : first_next + 4] = b"\0\0\0\0"
    cut = max(end for _, end in used)
    if holds_picture(bytes(out[8:cut])):
        # Spread over values that each hold none: the block is removed whole.
        return b"", ["picture in EXIF"]
    if not removed and (bytes(out[:cut]) != tiff[:cut] or tiff[cut:].strip(b"\0")):
        removed.append("EXIF bytes no directory points to")
    return bytes(out[:cut]), removed
