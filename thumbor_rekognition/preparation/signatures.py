"""Small signatures of pictures, to tell an animation's distinct frames apart and to see
whether two views of a picture show the same."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

# Frame signatures: computed on a copy this small; a step between neighbouring grey
# levels counts as an edge above EDGE; frames closer than the tolerances are one frame.
SIGNATURE_SIDE = 64
EDGE = 3
SHAPE_TOLERANCE = 6
COLOUR_TOLERANCE = 12
# ... and no part of them (an eighth of the frame a side) differs by more than this.
PART_TOLERANCE = 20


@dataclass(frozen=True)
class Signature:
    """A difference hash (shapes, ignoring flat areas), a 4x4 colour thumbnail (the whole
    frame) and an 8x8 one (its parts: a change over a sixteenth of the frame, a square or
    a band, covers at least one part entirely or half of a row of them)."""

    shape: int
    firm: int
    colours: bytes
    parts: bytes

    def distance(self, other: Signature) -> float:
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

    def close_to(self, other: Signature) -> bool:
        return self.distance(other) <= 1.0


def of(frame: Image.Image) -> Signature:
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
    return Signature(shape, firm, colours, parts)


def most_different(frames: list[tuple[int, Signature]], count: int) -> list[int]:
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


def alike(one: Image.Image, other: Image.Image) -> bool:
    """Whether two views of a picture show the same, as the frame signatures tell."""
    return of(_thumbnail(one)).close_to(of(_thumbnail(other)))


def _thumbnail(image: Image.Image) -> Image.Image:
    factor = max(image.size) // SIGNATURE_SIDE
    return image.reduce(factor) if factor >= 2 else image
