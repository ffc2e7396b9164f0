"""Hostile input: whatever bytes an origin serves, a defined answer, never a 500.

Every input is generated here, none is downloaded. Through the real Thumbor each one gets
either an image carrying X-Moderation-Status or a 4xx; what is not a picture never
reaches the backend; bombs leave the process's memory bounded. `prepare()` and the HTTP
path are also fuzzed with hypothesis, derandomised so that CI sees the same examples, and
`prepare()` must accept every valid picture hypothesis writes.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, features

from tests.fakes.rekognition import FakeRekognition
from tests.servers import Response, ThumborServer, base_config
from thumbor_rekognition.preparation import (
    MAX_BYTES,
    MAX_SIDE,
    MIN_SIDE,
    PreparedImage,
    UnsupportedImage,
    prepare,
)

SAFE = (20, 200, 120)
IMAGE = "image"
NOT_AN_IMAGE = "not an image"
BOMB = "bomb"
# A bomb decoded within MODERATION_MAX_PIXELS and Thumbor's MAX_PIXELS: judged, served.
DECODED_BOMB = "bomb within limits"
PATHS = ("/unsafe/100x100/{name}", "/unsafe/fit-in/64x64/{name}")
MODERATION_STATUSES = {"approved", "rejected", "pending"}
RSS_GROWTH_LIMIT_MB = 300
# Thumbor's own default: Pillow warns above it, which the plugin and Thumbor both refuse.
THUMBOR_MAX_PIXELS = 75_000_000


# Builders.


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def safe(size: tuple[int, int] = (160, 120), mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", size, SAFE).convert(mode)


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, rows: int | None = None, colour_type: int = 2) -> bytes:
    """A PNG of zero pixels claiming width x height, with pixel data for `rows` rows only."""
    channels = 3 if colour_type == 2 else 1
    row = b"\x00" * (1 + width * channels)
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", pixels + compressor.flush())
        + chunk(b"IEND", b"")
    )


# One 1x1 frame: graphic control extension, image descriptor, LZW data.
_GIF_FRAME = b"!\xf9\x04\x00\x02\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00"


def frame_bomb_gif(frames: int, canvas: tuple[int, int] = (1, 1)) -> bytes:
    """A GIF of `frames` 1x1 frames on a canvas of the given size, about 20 bytes a frame."""
    header = b"GIF89a" + struct.pack("<HH", *canvas) + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    loop = b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    return header + loop + _GIF_FRAME * frames + b";"


def truncated(data: bytes, fraction: float = 0.6) -> bytes:
    return data[: int(len(data) * fraction)]


def cmyk_jpeg() -> bytes:
    return encode(safe(mode="CMYK"), "JPEG")


def sixteen_bit_png() -> bytes:
    return encode(Image.new("I;16", (160, 120), 40000), "PNG")


def palette_png_with_transparency() -> bytes:
    image = safe().quantize(4)
    return encode(image, "PNG", transparency=0)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(safe((160, 100)), "JPEG", exif=exif.tobytes())


def polyglot_gif_then_html() -> bytes:
    return encode(safe(), "GIF") + b"<html><script>alert(document.cookie)</script></html>"


def jpeg_with_script_comment() -> bytes:
    data = encode(safe(), "JPEG")
    comment = b"<script>alert(1)</script>"
    segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
    return data[:2] + segment + data[2:]


def avif_without_its_primary_item() -> bytes:
    data = bytearray(encode(safe(), "AVIF"))
    item = data.index(b"pitm") + 8
    data[item : item + 2] = b"\x77\x77"
    return bytes(data)


def damaged_png() -> bytes:
    """A PNG whose compressed pixel data has one byte changed (its CRC no longer matches)."""
    data = bytearray(encode(Image.effect_mandelbrot((160, 120), (-2, -1.5, 1, 1.5), 50), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 40] ^= 0xFF
    return bytes(data)


def ztxt_bomb_png() -> bytes:
    """A valid picture carrying a zTXt chunk that inflates to 64 MB."""
    data = encode(safe(), "PNG")
    text = b"Comment\x00\x00" + zlib.compress(b"\x00" * (64 << 20), 9)
    return data[:-12] + chunk(b"zTXt", text) + data[-12:]


@dataclass(frozen=True)
class Hostile:
    """One input of the corpus and what it is."""

    name: str
    kind: str
    build: Callable[[], bytes]
    # A known defect, with where it lies, when this input exposes one.
    known: str = ""
    # The format Pillow must have been built with to write this input, if an optional one.
    needs: str = ""

    @property
    def available(self) -> bool:
        return not self.needs or pillow_has(self.needs)


def pillow_has(image_format: str) -> bool:
    """Whether Pillow here writes AVIF or HEIF, which depend on how it was built."""
    if image_format == "AVIF":
        return features.check("avif")
    return ".heic" in Image.registered_extensions()


EMPTY = "empty file"
VERY_WIDE = "20000x20 PNG"
SCANNED_BOMB = "GIF frame-count bomb on a 5000x5000 canvas, 23 kB"
# Damaged files on which Pillow raises struct.error, IndexError or RuntimeError.
PILLOW_TRIPS_OVER = frozenset(
    {"GIF cut in its second image descriptor", "AVIF naming a primary item it lacks"}
)
VERY_WIDE_BUG = (
    "Thumbor 7.8 (stock Thumbor too): fit-in of 20000x20 into 64x64 asks Pillow for a "
    "64x0 resize, ValueError, HTTP 500"
)


def hostile_corpus() -> list[Hostile]:
    """Every hostile input, bombs last so that memory can be read before and after them."""
    rng = random.Random(20240601)
    return [
        Hostile(EMPTY, NOT_AN_IMAGE, lambda: b""),
        Hostile("random bytes", NOT_AN_IMAGE, lambda: rng.randbytes(4096)),
        Hostile("truncated JPEG", NOT_AN_IMAGE, lambda: truncated(encode(safe(), "JPEG"))),
        Hostile("truncated PNG", NOT_AN_IMAGE, lambda: truncated(encode(safe(), "PNG"))),
        # Pillow reads the part of a GIF that arrived: what is judged is what is served.
        Hostile("truncated GIF", NOT_AN_IMAGE, lambda: truncated(encode(safe(), "GIF"))),
        Hostile(
            "SVG with script",
            NOT_AN_IMAGE,
            lambda: (
                b'<svg xmlns="http://www.w3.org/2000/svg" width="160" height="120">'
                b"<script>alert(1)</script><rect width='160' height='120' fill='red'/></svg>"
            ),
        ),
        Hostile(
            "HTML",
            NOT_AN_IMAGE,
            lambda: b"<!doctype html><html><body><script>alert(1)</script></body></html>",
        ),
        Hostile("JSON", NOT_AN_IMAGE, lambda: json.dumps({"image": "no"}).encode()),
        Hostile(
            "GIF header then HTML",
            NOT_AN_IMAGE,
            lambda: b"GIF89a<html><script>alert(1)</script></html>",
        ),
        Hostile(
            "GIF cut in its second image descriptor",
            NOT_AN_IMAGE,
            lambda: encode(safe(), "GIF")[:-1] + b",",
        ),
        Hostile("polyglot: GIF then HTML", NOT_AN_IMAGE, polyglot_gif_then_html),
        Hostile("polyglot: JPEG with script comment", IMAGE, jpeg_with_script_comment),
        Hostile("1x1 PNG", IMAGE, lambda: encode(safe((1, 1)), "PNG")),
        Hostile(VERY_WIDE, IMAGE, lambda: encode(safe((20000, 20)), "PNG"), known=VERY_WIDE_BUG),
        Hostile("CMYK JPEG", IMAGE, cmyk_jpeg),
        Hostile("16-bit PNG", IMAGE, sixteen_bit_png),
        Hostile("palette PNG with transparency", IMAGE, palette_png_with_transparency),
        Hostile("EXIF-rotated JPEG", IMAGE, exif_rotated_jpeg),
        Hostile("TIFF (LZW)", IMAGE, lambda: encode(safe(), "TIFF", compression="tiff_lzw")),
        Hostile("BMP", IMAGE, lambda: encode(safe(), "BMP")),
        Hostile("ICO", IMAGE, lambda: encode(safe((96, 96)), "ICO", sizes=[(96, 96)])),
        Hostile("WebP", IMAGE, lambda: encode(safe(), "WEBP")),
        Hostile("JPEG 2000", IMAGE, lambda: encode(safe(), "JPEG2000")),
        Hostile("PNG with damaged pixel data", IMAGE, damaged_png),
        Hostile("PNG with a 64 MB zTXt chunk", IMAGE, ztxt_bomb_png),
        Hostile("AVIF", IMAGE, lambda: encode(safe(), "AVIF"), needs="AVIF"),
        Hostile(
            "AVIF naming a primary item it lacks",
            NOT_AN_IMAGE,
            avif_without_its_primary_item,
            needs="AVIF",
        ),
        Hostile("HEIC", IMAGE, lambda: encode(safe(), "HEIF"), needs="HEIF"),
        Hostile(
            "PNG bomb: 50000x50000 declared, 69 bytes",
            BOMB,
            lambda: png(50000, 50000, rows=0),
        ),
        Hostile(
            "PNG bomb: 9000x9000 declared (over Thumbor's MAX_PIXELS)",
            BOMB,
            lambda: png(9000, 9000, rows=1),
        ),
        Hostile("GIF frame-count bomb: 50000 frames, 1 MB", BOMB, lambda: frame_bomb_gif(50_000)),
        Hostile(
            "GIF canvas bomb: 4000x4000, 2 frames, 85 bytes",
            DECODED_BOMB,
            lambda: frame_bomb_gif(2, canvas=(4000, 4000)),
        ),
        Hostile("PNG bomb: 5000x5000 of zeros, 73 kB", DECODED_BOMB, lambda: png(5000, 5000)),
        # Last: what it costs is read apart from the other bombs.
        Hostile(
            SCANNED_BOMB,
            BOMB,
            lambda: frame_bomb_gif(1001, canvas=(5000, 5000)),
        ),
    ]


def heic_status() -> str:
    return "tried" if pillow_has("HEIF") else "not supported by Pillow here"


# Running the corpus through Thumbor.


@dataclass
class Outcome:
    """What Thumbor answered for one hostile input."""

    name: str
    kind: str
    size: int
    known: str
    codes: list[int] = field(default_factory=list)
    statuses: list[str | None] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    backend_calls: int = 0
    backend_errors: list[str] = field(default_factory=list)
    served_raw: int = 0
    undefined: int = 0
    tracebacks: int = 0


@dataclass
class HostileRun:
    outcomes: list[Outcome]
    # VmRSS and VmHWM (its peak) of the Thumbor process in MB: before the bombs, after
    # them, and after the bombs that expose a known defect.
    rss: tuple[float, float, float]
    peak: tuple[float, float, float]

    def outcome(self, name: str) -> Outcome:
        return next(outcome for outcome in self.outcomes if outcome.name == name)


_names = itertools.count()


def memory_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (its peak) of a process, in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def defined(response: Response) -> bool:
    """A moderated image, or a 4xx: the only answers a hostile input may get."""
    if 400 <= response.status < 500:
        return True
    return (
        response.status == 200
        and response.header("X-Moderation-Status") in MODERATION_STATUSES
        and (response.header("Content-Type") or "").startswith("image/")
    )


def try_input(
    server: ThumborServer,
    images: Path,
    fake: FakeRekognition,
    hostile: Hostile,
    paths: tuple[str, ...] = PATHS,
) -> Outcome:
    data = hostile.build()
    name = f"hostile-{next(_names)}.bin"
    (images / name).write_bytes(data)
    outcome = Outcome(hostile.name, hostile.kind, len(data), hostile.known)
    calls_before, log_before = fake.call_count, server.log.count("Traceback")
    for path in paths:
        started = time.perf_counter()
        response = server.get(path.format(name=name))
        outcome.seconds.append(time.perf_counter() - started)
        outcome.codes.append(response.status)
        outcome.statuses.append(response.header("X-Moderation-Status"))
        outcome.undefined += not defined(response)
        outcome.served_raw += bool(data) and response.status == 200 and response.body == data
    outcome.backend_calls = fake.call_count - calls_before
    outcome.backend_errors = [call.fault for call in fake.calls[calls_before:] if call.fault]
    outcome.tracebacks = server.log.count("Traceback") - log_before
    return outcome


@contextmanager
def strict_pillow() -> Iterator[None]:
    """Pillow refusing damaged files, as a backend's decoder does.

    Importing Thumbor's PIL engine turns LOAD_TRUNCATED_IMAGES on for the whole process,
    the fake Rekognition endpoint's decoder included, whenever another test imported it.
    """
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def run_hostile(server: ThumborServer, images: Path, fake: FakeRekognition) -> HostileRun:
    """Every corpus input through Thumbor, reading its memory around the bombs."""
    with strict_pillow():
        return _run_hostile(server, images, fake)


def _run_hostile(server: ThumborServer, images: Path, fake: FakeRekognition) -> HostileRun:
    assert server.process is not None
    pid = server.process.pid
    corpus = [hostile for hostile in hostile_corpus() if hostile.available]
    bombs = [hostile for hostile in corpus if hostile.kind in (BOMB, DECODED_BOMB)]
    known_bombs = [hostile for hostile in bombs if hostile.known]
    outcomes = [try_input(server, images, fake, h) for h in corpus if h not in bombs]
    memory = [memory_mb(pid)]
    outcomes += [try_input(server, images, fake, h) for h in bombs if h not in known_bombs]
    memory.append(memory_mb(pid))
    outcomes += [try_input(server, images, fake, hostile) for hostile in known_bombs]
    memory.append(memory_mb(pid))
    (rss_0, peak_0), (rss_1, peak_1), (rss_2, peak_2) = memory
    return HostileRun(outcomes, rss=(rss_0, rss_1, rss_2), peak=(peak_0, peak_1, peak_2))


@pytest.fixture(scope="module")
def server(
    module_root: Path, images: Path, module_fake: FakeRekognition
) -> Iterator[ThumborServer]:
    thumbor = ThumborServer(module_root, base_config(module_root, images, module_fake.url))
    thumbor.start()
    yield thumbor
    thumbor.stop()


@pytest.fixture(scope="module")
def run(server: ThumborServer, images: Path, module_fake: FakeRekognition) -> HostileRun:
    module_fake.reset()
    return run_hostile(server, images, module_fake)


def plain(run: HostileRun, *kinds: str) -> list[Outcome]:
    """The outcomes of these kinds, less those of inputs that expose a known defect."""
    return [outcome for outcome in run.outcomes if outcome.kind in kinds and not outcome.known]


@pytest.mark.e2e
def test_every_hostile_input_gets_a_moderated_image_or_a_4xx(run: HostileRun) -> None:
    outcomes = plain(run, IMAGE, NOT_AN_IMAGE, BOMB, DECODED_BOMB)

    undefined = {
        o.name: list(zip(o.codes, o.statuses, strict=True)) for o in outcomes if o.undefined
    }

    assert undefined == {}


@pytest.mark.e2e
def test_inputs_that_are_not_pictures_get_400_and_never_reach_the_backend(run: HostileRun) -> None:
    refused = plain(run, NOT_AN_IMAGE, BOMB)

    found = {outcome.name: (outcome.codes, outcome.backend_calls) for outcome in refused}

    assert found == {outcome.name: ([400, 400], 0) for outcome in refused}


@pytest.mark.e2e
def test_pictures_in_any_format_are_judged_once_and_approved(run: HostileRun) -> None:
    pictures = plain(run, IMAGE, DECODED_BOMB)

    found = {outcome.name: (outcome.statuses, outcome.backend_calls) for outcome in pictures}

    assert found == {outcome.name: (["approved"] * 2, 1) for outcome in pictures}


@pytest.mark.e2e
def test_damaged_files_pillow_trips_over_get_400_not_500(run: HostileRun) -> None:
    damaged = [outcome for outcome in run.outcomes if outcome.name in PILLOW_TRIPS_OVER]

    found = {outcome.name: (outcome.codes, outcome.tracebacks) for outcome in damaged}

    assert found == {outcome.name: ([400, 400], 0) for outcome in damaged}


@pytest.mark.e2e
def test_backend_is_sent_only_pictures_it_can_decode(run: HostileRun) -> None:
    refused_by_backend = {
        outcome.name: outcome.backend_errors for outcome in run.outcomes if outcome.backend_errors
    }

    assert refused_by_backend == {}


@pytest.mark.e2e
def test_polyglots_are_served_reencoded_never_as_their_original_bytes(
    server: ThumborServer, images: Path, module_fake: FakeRekognition
) -> None:
    polyglots = [h for h in hostile_corpus() if h.name.startswith("polyglot")]
    paths = (*PATHS, "/unsafe/{name}")

    outcomes = [try_input(server, images, module_fake, h, paths) for h in polyglots]

    # A GIF with something appended is refused; a JPEG with a script comment is judged
    # and served re-encoded. Neither is ever served as its original bytes.
    assert {outcome.name: (outcome.codes, outcome.served_raw) for outcome in outcomes} == {
        "polyglot: GIF then HTML": ([400, 400, 400], 0),
        "polyglot: JPEG with script comment": ([200, 200, 200], 0),
    }


@pytest.mark.e2e
def test_hostile_inputs_leave_no_traceback_in_the_log(run: HostileRun) -> None:
    outcomes = plain(run, IMAGE, NOT_AN_IMAGE, BOMB, DECODED_BOMB)

    tracebacks = {outcome.name: outcome.tracebacks for outcome in outcomes if outcome.tracebacks}

    assert tracebacks == {}


@pytest.mark.e2e
@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(
            hostile,
            id=hostile.name,
            marks=pytest.mark.skipif(
                not hostile.available, reason=f"Pillow here cannot write {hostile.needs}"
            ),
        )
        for hostile in hostile_corpus()
        if hostile.needs
    ],
)
def test_input_in_a_format_pillow_may_lack_is_tried_and_answered_as_its_kind(
    run: HostileRun, hostile: Hostile
) -> None:
    answers = {
        IMAGE: ([200, 200], ["approved", "approved"], 1),
        NOT_AN_IMAGE: ([400, 400], [None, None], 0),
    }

    outcome = run.outcome(hostile.name)

    assert (outcome.codes, outcome.statuses, outcome.backend_calls) == answers[hostile.kind]


@pytest.mark.e2e
def test_empty_original_is_a_400_without_a_traceback(run: HostileRun) -> None:
    empty = run.outcome(EMPTY)

    assert (empty.codes, empty.tracebacks) == ([400, 400], 0)


@pytest.mark.e2e
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=VERY_WIDE_BUG)
def test_very_wide_picture_fitted_in_a_small_box_is_not_a_500(run: HostileRun) -> None:
    wide = run.outcome(VERY_WIDE)

    assert 500 not in wide.codes


@pytest.mark.e2e
def test_refused_bomb_is_not_scanned_again_on_every_request(run: HostileRun) -> None:
    first, second = run.outcome(SCANNED_BOMB).seconds

    assert second < min(1.0, first / 4), (first, second)


@pytest.mark.e2e
def test_bombs_refused_before_decoding_cost_no_memory(
    run: HostileRun, server: ThumborServer, images: Path, module_fake: FakeRekognition
) -> None:
    assert server.process is not None
    pid = server.process.pid
    bombs = [h for h in hostile_corpus() if h.kind == BOMB and not h.known]
    # Writing 5 to clear_refs resets the process's peak, VmHWM, to its current RSS.
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = memory_mb(pid)[1]

    outcomes = [try_input(server, images, module_fake, bomb) for bomb in bombs]

    assert [outcome.codes for outcome in outcomes] == [[400, 400]] * len(bombs)
    assert memory_mb(pid)[1] - before < 20


@pytest.mark.e2e
def test_bombs_leave_the_thumbor_process_memory_bounded(run: HostileRun) -> None:
    before, after, _ = run.rss

    assert after - before < RSS_GROWTH_LIMIT_MB, run.rss


def in_fresh_process(script: str, timeout: float) -> list[str]:
    """The words a script printed, run in a new Python process that can import this
    project: its memory holds only what the script did."""
    root = Path(__file__).resolve().parents[1]
    program = f"import sys; sys.path.insert(0, {str(root)!r})\n" + textwrap.dedent(script)
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=timeout
    )
    return completed.stdout.split()


def test_refused_animation_frees_its_pixels_while_the_refusal_is_still_referenced() -> None:
    # In a process of its own: the suite's process also runs fakes that decode pictures
    # in their threads, which would count here.
    script = """
        import gc, os
        from tests.test_hostile import frame_bomb_gif, memory_mb
        from thumbor_rekognition.preparation import ImageTooLarge, prepare
        data = frame_bomb_gif(1001, canvas=(2000, 2000))
        try:
            prepare(data, max_pixels=4_000_000)  # decoders and imports in place first
        except ImageTooLarge:
            pass
        refusals = []
        gc.disable()
        before = memory_mb(os.getpid())[0]
        for _ in range(4):
            try:
                prepare(data, max_pixels=4_000_000)
            except ImageTooLarge as refusal:
                # As an asyncio future does until it is collected.
                refusals.append(refusal)
        print(len(refusals), memory_mb(os.getpid())[0] - before)
        """
    one_canvas_mb = 2000 * 2000 * 4 / 2**20

    refused, growth = in_fresh_process(script, timeout=120)

    assert int(refused) == 4
    assert float(growth) < one_canvas_mb, f"{float(growth):.0f} MB kept by 4 refusals"


@pytest.mark.parametrize(
    ("builder", "copies"),
    [
        pytest.param(
            "png(6000, 6000)",
            1.5,
            id="png",
        ),
        pytest.param(
            "frame_bomb_gif(2, canvas=(6000, 6000))",
            2.5,
            id="gif-canvas",
        ),
    ],
)
def test_preparing_a_bomb_holds_few_decoded_copies(builder: str, copies: float) -> None:
    script = f"""
        import os
        from tests.test_hostile import frame_bomb_gif, memory_mb, png
        from thumbor_rekognition.preparation import prepare
        data = {builder}
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent.
        before = memory_mb(os.getpid())[1]
        prepare(data)
        print(memory_mb(os.getpid())[1] - before)
        """
    one_copy_mb = 6000 * 6000 * 4 / 2**20

    (peak,) = in_fresh_process(script, timeout=60)
    peak_mb = float(peak)

    assert peak_mb < copies * one_copy_mb, (
        f"{peak_mb:.0f} MB, one decoded copy {one_copy_mb:.0f} MB"
    )


# Fuzzing.


def seed_files() -> list[bytes]:
    """Small valid files of every family prepare() meets, for mutation."""
    frames = [safe(), Image.new("RGB", (160, 120), (200, 30, 30)), safe((160, 120), "L")]
    seeds = [
        encode(safe(), "PNG"),
        encode(safe(), "JPEG"),
        encode(safe(), "JPEG", progressive=True),
        exif_rotated_jpeg(),
        cmyk_jpeg(),
        sixteen_bit_png(),
        palette_png_with_transparency(),
        encode(safe(), "GIF"),
        encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        encode(safe(), "BMP"),
        encode(safe(), "TIFF", compression="tiff_lzw"),
        encode(safe((64, 64)), "ICO"),
    ]
    if features.check("avif"):
        seeds.append(encode(safe(), "AVIF"))
    return seeds


SEEDS = seed_files()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid file with a few bytes flipped, inserted or cut, headers hit more often."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        operation = draw(st.sampled_from(["header", "flip", "insert", "cut", "truncate"]))
        end = 64 if operation == "header" else len(data)
        position = draw(st.integers(0, max(0, min(end, len(data)) - 1)))
        if operation in ("header", "flip") and data:
            data[position] = draw(st.integers(0, 255))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "cut":
            del data[position : position + draw(st.integers(1, 64))]
        else:
            del data[position:]
    return bytes(data)


# Any bytes through prepare(): backend-ready frames or UnsupportedImage, nothing else.

any_bytes = st.one_of(st.binary(max_size=2048), mutated_images())


@contextmanager
def inside_thumbor() -> Iterator[None]:
    """Pillow's process-wide settings as Thumbor's PIL engine leaves them."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = True, THUMBOR_MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Pillow's own complaints about broken metadata are not the plugin's.
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="PIL")
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = saved


def check_backend_ready(prepared: PreparedImage, max_frames: int) -> None:
    """Frames the backend takes: JPEG or PNG, within 5 MB and 80..10,000 px a side."""
    assert 1 <= len(prepared.frames) <= max_frames
    for frame in prepared.frames:
        assert frame.format in ("JPEG", "PNG")
        assert len(frame.data) <= MAX_BYTES
        assert min(frame.width, frame.height) >= MIN_SIDE
        assert max(frame.width, frame.height) <= MAX_SIDE
        with strict_pillow(), Image.open(io.BytesIO(frame.data)) as image:
            assert (image.format, image.size) == (frame.format, (frame.width, frame.height))
            image.load()


@settings(
    max_examples=1000,
    derandomize=True,
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=any_bytes, lenient=st.booleans())
def test_prepare_answers_any_bytes_with_backend_ready_frames_or_a_refusal(
    data: bytes, lenient: bool
) -> None:
    max_frames = 3

    with inside_thumbor():
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient
        try:
            prepared = prepare(data, max_pixels=4_000_000, max_frames=max_frames)
        except UnsupportedImage as refusal:
            event(f"refused: {type(refusal).__name__}")
            prepared = None
        else:
            event(f"prepared: {prepared.format}")

    if prepared is not None:
        check_backend_ready(prepared, max_frames)


# Valid pictures through prepare(): every one accepted, as it is, whatever its family.

# The modes each format writes as it is; animated where the format has frames.
VALID_MODES = {
    "PNG": ("RGB", "RGBA", "L", "LA", "P"),
    "JPEG": ("RGB", "L", "CMYK"),
    "GIF": ("P", "L"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("RGB", "L", "P"),
    "TIFF": ("RGB", "RGBA", "L"),
    **({"AVIF": ("RGB", "RGBA")} if features.check("avif") else {}),
}
ANIMATED = ("PNG", "GIF", "WEBP")


@dataclass(frozen=True)
class ValidPicture:
    """A generated picture's bytes and what was written into them."""

    image_format: str
    mode: str
    size: tuple[int, int]
    frames: int
    seed: int
    data: bytes = field(repr=False)


@st.composite
def valid_pictures(draw: st.DrawFn) -> ValidPicture:
    """A picture any viewer would show: a format, mode, size and frame count Pillow writes,
    with noisy pixels so that frames differ."""
    image_format = draw(st.sampled_from(sorted(VALID_MODES)))
    mode = draw(st.sampled_from(VALID_MODES[image_format]))
    size = (draw(st.integers(1, 700)), draw(st.integers(1, 700)))
    count = draw(st.integers(1, 4)) if image_format in ANIMATED else 1
    seed = draw(st.integers(0, 2**32 - 1))
    noise = random.Random(seed)
    frames = [
        Image.frombytes("RGB", size, noise.randbytes(size[0] * size[1] * 3)).convert(mode)
        for _ in range(count)
    ]
    extra: dict[str, object] = {"save_all": True, "append_images": frames[1:]} if count > 1 else {}
    data = encode(frames[0], image_format, **extra)
    return ValidPicture(image_format, mode, size, count, seed, data)


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(picture=valid_pictures())
def test_prepare_accepts_every_valid_picture_with_backend_ready_frames(
    picture: ValidPicture,
) -> None:
    max_frames = 3
    event(f"{picture.image_format}, {picture.frames} frame(s)")

    with inside_thumbor():
        prepared = prepare(picture.data, max_pixels=4_000_000, max_frames=max_frames)

    assert (prepared.format, (prepared.width, prepared.height)) == (
        picture.image_format,
        picture.size,
    )
    assert prepared.frame_count == picture.frames
    check_backend_ready(prepared, max_frames)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: encode(safe(), "GIF")[:-1] + b",", id="gif-cut"),
        pytest.param(
            avif_without_its_primary_item,
            id="avif-no-primary-item",
            marks=pytest.mark.skipif(not features.check("avif"), reason="no AVIF in Pillow"),
        ),
    ],
)
def test_damaged_files_pillow_trips_over_are_unsupported(build: Callable[[], bytes]) -> None:
    data = build()

    with inside_thumbor(), pytest.raises(UnsupportedImage):
        prepare(data)


@pytest.mark.parametrize("build", [damaged_png, ztxt_bomb_png], ids=["damaged", "ztxt"])
def test_png_opened_only_leniently_is_not_sent_as_it_is(build: Callable[[], bytes]) -> None:
    data = build()

    with inside_thumbor():
        try:
            prepared = prepare(data)
        except UnsupportedImage:
            prepared = None

    if prepared is not None:
        check_backend_ready(prepared, max_frames=5)


@pytest.mark.e2e
@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.one_of(st.binary(max_size=512), mutated_images()))
def test_any_file_served_by_the_origin_gets_a_defined_answer(
    server: ThumborServer, images: Path, data: bytes
) -> None:
    name = f"fuzz-{next(_names)}.jpg"
    (images / name).write_bytes(data)

    response = server.get(f"/unsafe/60x60/{name}")

    assert defined(response), (response.status, response.header("X-Moderation-Status"))


# Every known defect this module pins, for the reliability report.
KNOWN_DEFECTS = [VERY_WIDE_BUG]
