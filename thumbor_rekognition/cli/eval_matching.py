"""`eval-matching`: how well the plugin's fingerprint and PDQ tell copies of a picture
from other pictures, on a folder of pictures, at the configured thresholds.

Each picture is put through the standard edits of a re-upload (JPEG quality 50 and 30,
half size, a 5 % crop, a mirror, 10 % brighter, a small watermark, a 10-pixel border);
every original and copy goes through the same preparation as a judged picture. Per edit:
the share of copies caught (the plugin's former fingerprint, see ``old_fingerprint``, of
the picture the backend is sent and of its mirror, at MODERATION_DUPLICATE_SIMILARITY;
PDQ at MODERATION_HASH_BANK_DISTANCE with its rotations and mirrors); then the share of
pairs of distinct pictures of the folder that would match (false positives).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from thumbor_rekognition import pdq, preparation
from thumbor_rekognition.cli import old_fingerprint
from thumbor_rekognition.cli.environment import EXIT_OK, Environment, UsageError
from thumbor_rekognition.cli.old_fingerprint import Print
from thumbor_rekognition.pdq_index import packed

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def _saved(image: Image.Image, image_format: str = "PNG", **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _watermarked(image: Image.Image) -> bytes:
    marked = image.copy()
    draw = ImageDraw.Draw(marked)
    width, height = marked.size
    box = (width - width // 5, height - height // 12, width - 8, height - 8)
    draw.rectangle(box, fill=(255, 255, 255))
    draw.text((box[0] + 4, box[1] + 2), "example.com", fill=(0, 0, 0))
    return _saved(marked)


def _cropped(image: Image.Image) -> bytes:
    dx, dy = round(image.width * 0.025), round(image.height * 0.025)
    return _saved(image.crop((dx, dy, image.width - dx, image.height - dy)))


EDITS: dict[str, Callable[[Image.Image], bytes]] = {
    "JPEG quality 50": lambda image: _saved(image, "JPEG", quality=50),
    "JPEG quality 30": lambda image: _saved(image, "JPEG", quality=30),
    "half size": lambda image: _saved(image.reduce(2)),
    "5 % crop": _cropped,
    "mirror": lambda image: _saved(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    "10 % brighter": lambda image: _saved(ImageEnhance.Brightness(image).enhance(1.1)),
    "small watermark": _watermarked,
    "10-px border": lambda image: _saved(ImageOps.expand(image, 10, fill=(255, 255, 255))),
}


@dataclass(frozen=True)
class Hashed:
    """A picture's old fingerprint (and its mirrored picture's, looked up too) and PDQ
    hash, as preparation computes them (None: too little detail for one)."""

    old: Print | None
    mirrored: Print | None
    pdq: pdq.Hash | None

    def old_similarity(self, original: Print) -> float:
        """How alike to an original's fingerprint, as a lookup of this picture finds it."""
        return max(
            (own.similarity(original) for own in (self.old, self.mirrored) if own is not None),
            default=0.0,
        )


@dataclass
class Row:
    """How one edit fared: copies caught by each hash, of those hashed."""

    edit: str
    old_caught: int = 0
    old_total: int = 0
    pdq_caught: int = 0
    pdq_total: int = 0


def hashed(data: bytes) -> Hashed:
    """The hashes of a picture's first frame, through the preparation a judgement uses."""
    frame = preparation.prepare(data).frames[0]
    usable = frame.pdq if frame.pdq is not None and frame.pdq.usable else None
    with Image.open(io.BytesIO(frame.data)) as sent:
        columns, rows = frame.grid
        shown = sent.crop((0, 0, sent.width // columns, sent.height // rows))
    return Hashed(
        old_fingerprint.of(shown),
        old_fingerprint.of(shown.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        usable,
    )


def evaluate(
    folder: Path, similarity: float, distance: int, limit: int | None = None
) -> dict[str, object]:
    """The figures of eval-matching for the pictures of a folder."""
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in SUFFIXES)
    originals: list[Hashed] = []
    rows = {name: Row(name) for name in EDITS}
    skipped = 0
    for path in paths[:limit]:
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
            original = hashed(_saved(image))
        except (OSError, preparation.UnsupportedImage):
            skipped += 1
            continue
        originals.append(original)
        for name, edit in EDITS.items():
            copy = hashed(edit(image))
            _count(rows[name], original, copy, similarity, distance)
    if len(originals) < 2:
        raise UsageError(f"{folder}: fewer than two pictures to compare")
    old_pairs, old_false = _old_false_positives(originals, similarity)
    pdq_pairs, pdq_false = _pdq_false_positives(originals, distance)
    return {
        "pictures": len(originals),
        "skipped": skipped,
        "similarity": similarity,
        "distance": distance,
        "edits": [row.__dict__ for row in rows.values()],
        "false_positives": {
            "old": {"pairs": old_pairs, "matching": old_false},
            "pdq": {"pairs": pdq_pairs, "matching": pdq_false},
        },
        "no_pdq": sum(1 for original in originals if original.pdq is None),
        "no_old": sum(1 for original in originals if original.old is None),
    }


def _count(row: Row, original: Hashed, copy: Hashed, similarity: float, distance: int) -> None:
    if original.old is not None:
        row.old_total += 1
        row.old_caught += copy.old_similarity(original.old) >= similarity
    if original.pdq is not None:
        row.pdq_total += 1
        row.pdq_caught += copy.pdq is not None and copy.pdq.distance(original.pdq.value) <= distance


def _old_false_positives(originals: list[Hashed], similarity: float) -> tuple[int, int]:
    hashed = [(original, original.old) for original in originals if original.old is not None]
    pairs = list(itertools.combinations(hashed, 2))
    matching = 0
    for (one, one_print), (other, other_print) in pairs:
        alike = max(one.old_similarity(other_print), other.old_similarity(one_print))
        matching += alike >= similarity
    return len(pairs), matching


def _pdq_false_positives(originals: list[Hashed], distance: int) -> tuple[int, int]:
    hashes = [original.pdq for original in originals if original.pdq is not None]
    if len(hashes) < 2:
        return 0, 0
    words = packed([hashed.value for hashed in hashes])
    variants = packed([value for hashed in hashes for value in hashed.variants])
    # Each picture's 8 variants against every picture's own hash: the least distance.
    apart = np.bitwise_count(variants[:, None, :] ^ words[None, :, :]).sum(axis=2)
    nearest = apart.reshape(len(hashes), 8, len(hashes)).min(axis=1)
    nearest = np.minimum(nearest, nearest.T)
    upper = np.triu_indices(len(hashes), k=1)
    return len(upper[0]), int((nearest[upper] <= distance).sum())


def table(figures: dict[str, object]) -> str:
    """The figures as a Markdown table, as docs/duplicates.md shows them."""
    similarity, distance = figures["similarity"], figures["distance"]
    lines = [
        f"| edit | old fingerprint caught (>= {similarity}) | PDQ caught (<= {distance} bits) |",
        "| --- | --- | --- |",
    ]
    for row in figures["edits"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {row['edit']} | {_share(row['old_caught'], row['old_total'])} | "
            f"{_share(row['pdq_caught'], row['pdq_total'])} |"
        )
    false = figures["false_positives"]
    old, hashed_ = false["old"], false["pdq"]  # type: ignore[index]
    lines.append(
        f"| distinct pictures matching (false positives) | "
        f"{_share(old['matching'], old['pairs'])} of pairs | "
        f"{_share(hashed_['matching'], hashed_['pairs'])} of pairs |"
    )
    return "\n".join(lines)


def _share(count: int, total: int) -> str:
    if not total:
        return "-"
    return f"{count} of {total} ({100 * count / total:.1f} %)"


def run_eval_matching(environment: Environment, arguments: argparse.Namespace) -> int:
    """Caught copies and false positives of both hashes on a folder of pictures."""
    folder = Path(arguments.folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    settings = environment.runtime.settings
    figures = evaluate(
        folder, settings.duplicate_similarity, settings.hash_bank_distance, arguments.limit
    )
    if arguments.json:
        print(json.dumps(figures, indent=2))
        return EXIT_OK
    print(
        f"{figures['pictures']} pictures ({figures['skipped']} unreadable skipped; "
        f"{figures['no_pdq']} below PDQ quality {pdq.MIN_QUALITY}, "
        f"{figures['no_old']} without an old fingerprint)"
    )
    print(table(figures))
    return EXIT_OK
