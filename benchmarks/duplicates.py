"""Print the near-duplicate figures: how well fingerprints (PDQ hashes with their
rotations and mirrors) tell copies from other pictures, and what a lookup in the index of
judged pictures costs at a million entries.

    python benchmarks/duplicates.py [--pictures 100] [--index 1000000] [--lookups 2000]

Quality, on generated pictures (tests/pictures.py, four families of --pictures each):
every pair of distinct pictures, counted at or above the default similarity (false
matches), and each picture's copies (a JPEG at quality 70 scaled to 70 %, 6 % brighter,
a JPEG at quality 45) counted at or above it (hits); then what the fingerprint is not
built for (cropped, covered in part), for the README. Pictures whose PDQ quality is below
50 get no fingerprint.

Speed: --index judged pictures, each a random PDQ hash (half its bits set, as real ones
are), a share --rejected of them rejected (their 7 rotations and mirrors indexed too, as
random hashes), put in the indexes of the SQLite store and of the Redis store (a real
redis-server, on this machine), then --lookups lookups of each kind through
Duplicates.nearest at the default similarity, each with 8 variants as a judged picture
has: a first view (the index of rejecting frames, asked with the picture's own hash) of a
new picture and of a mirrored or rotated copy of a rejected one (a few bits changed), a
rejection (every frame's own hash, asked with 8 variants) finding no copy and finding one;
with the memory or disk the indexes take.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import percentile  # noqa: E402
from tests import pictures  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from thumbor_rekognition import fingerprint, pdq  # noqa: E402
from thumbor_rekognition.config import DEFAULTS  # noqa: E402
from thumbor_rekognition.duplicates import Duplicates, probes  # noqa: E402
from thumbor_rekognition.fingerprint import BAND_BITS, BITS, Print  # noqa: E402
from thumbor_rekognition.stores import Store, redis_index  # noqa: E402
from thumbor_rekognition.stores import redis as redis_store  # noqa: E402
from thumbor_rekognition.stores import sqlite as sqlite_store  # noqa: E402

SIMILARITY = float(DEFAULTS["MODERATION_DUPLICATE_SIMILARITY"])
BATCH = 20_000

COPIES: dict[str, Callable[[Image.Image], bytes]] = {
    "JPEG q70, 70 % size": pictures.resized_jpeg,
    "6 % brighter": pictures.brighter,
    "JPEG q45": pictures.reencoded,
}


def _png(image: Image.Image) -> bytes:
    return pictures.encoded(image, "PNG")


def _cropped(share: float) -> Callable[[Image.Image], bytes]:
    def crop(image: Image.Image) -> bytes:
        dx, dy = round(image.width * share / 2), round(image.height * share / 2)
        return _png(image.crop((dx, dy, image.width - dx, image.height - dy)))

    return crop


def _covered(share: float, top: bool = True) -> Callable[[Image.Image], bytes]:
    def cover(image: Image.Image) -> bytes:
        covered = image.copy()
        height = round(image.height * share)
        box = (0, 0, image.width, height) if top else (0, image.height - height, *image.size)
        ImageDraw.Draw(covered).rectangle(box, fill=(255, 255, 255))
        return _png(covered)

    return cover


NOT_BUILT_FOR: dict[str, Callable[[Image.Image], bytes]] = {
    "grey": lambda image: _png(image.convert("L")),
    "cropped 2 % a side": _cropped(0.04),
    "cropped 5 % a side": _cropped(0.1),
    "cropped 10 % a side": _cropped(0.2),
    "a caption band (10 %)": _covered(0.1, top=False),
    "top third covered": _covered(1 / 3),
    "mirrored": lambda image: _png(ImageOps.mirror(image)),
    "rotated 90 degrees": lambda image: _png(image.transpose(Image.Transpose.ROTATE_90)),
}


def quality(per_family: int) -> None:
    generated = {
        (family, seed): make(seed)
        for family, make in pictures.FAMILIES.items()
        for seed in range(per_family)
    }
    started = time.perf_counter()
    prints = {key: fingerprint.of(pdq.of(image)) for key, image in generated.items()}
    per_print = (time.perf_counter() - started) / len(prints) * 1000
    kept = {key: value for key, value in prints.items() if value is not None}
    print(f"quality: {len(generated)} generated pictures, 640x480, four families")
    print(f"  fingerprint                {per_print:6.2f} ms a picture (640x480)")
    print(f"  without a fingerprint      {len(generated) - len(kept):6d} (PDQ quality below 50)")

    false_pairs: Counter[str] = Counter()
    closest: dict[str, float] = {}
    pairs = 0
    for (one, a), (other, b) in itertools.combinations(kept.items(), 2):
        pairs += 1
        score = a.similarity(b)
        kind = one[0] if one[0] == other[0] else "across families"
        closest[kind] = max(closest.get(kind, 0.0), score)
        if score >= SIMILARITY:
            false_pairs[kind] += 1
    falsely_matched = {
        key
        for key, value in kept.items()
        if any(other != key and value.similarity(o) >= SIMILARITY for other, o in kept.items())
    }
    print(f"  distinct pairs             {pairs:6d}")
    print(
        f"  pairs at or above {SIMILARITY:g}     {sum(false_pairs.values()):6d}"
        f"  ({dict(false_pairs) or 'none'})"
    )
    print(
        f"  pictures matching another  {len(falsely_matched):6d} of {len(kept)}"
        f"  (a false duplicate against an index of all the others)"
    )
    print("  closest distinct pair:    " + ", ".join(f"{k} {v:.3f}" for k, v in closest.items()))

    print(f"  copies at or above {SIMILARITY:g} (hits), lowest similarity per family:")
    total_hits = total = 0
    for name, make_copy in COPIES.items():
        hits, lowest = _copies(generated, kept, make_copy)
        total_hits += sum(hits.values())
        total += len(kept)
        print(
            f"    {name:22s} {sum(hits.values()):4d}/{len(kept)}  "
            + ", ".join(f"{family} {score:.3f}" for family, score in lowest.items())
        )
    print(f"    {'all three':22s} {total_hits:4d}/{total}  ({total_hits / total:.2%})")
    print(f"  not built for: caught at or above {SIMILARITY:g}, median similarity")
    for name, make_copy in NOT_BUILT_FOR.items():
        hits, _ = _copies(generated, kept, make_copy)
        scores = _scores(generated, kept, make_copy)
        print(
            f"    {name:22s} {sum(hits.values()):4d}/{len(kept)}  "
            f"median {statistics.median(scores):.3f}"
        )


def _scores(
    generated: dict[tuple[str, int], Image.Image],
    kept: dict[tuple[str, int], Print],
    make_copy: Callable[[Image.Image], bytes],
) -> list[float]:
    scores = []
    for key, original in kept.items():
        copy = fingerprint.of(pdq.of(pictures.decoded(make_copy(generated[key]))))
        scores.append(copy.similarity(original) if copy is not None else 0.0)
    return scores


def _copies(
    generated: dict[tuple[str, int], Image.Image],
    kept: dict[tuple[str, int], Print],
    make_copy: Callable[[Image.Image], bytes],
) -> tuple[Counter[str], dict[str, float]]:
    hits: Counter[str] = Counter()
    lowest: dict[str, float] = {}
    for (family, _), score in zip(kept, _scores(generated, kept, make_copy), strict=True):
        hits[family] += score >= SIMILARITY
        lowest[family] = min(lowest.get(family, 1.0), score)
    return hits, lowest


# The index at scale.


def _balanced(rng: random.Random, bits: int) -> int:
    value = 0
    for bit in rng.sample(range(bits), bits // 2):
        value |= 1 << bit
    return value


def random_prints(count: int, seed: int) -> list[Print]:
    rng = random.Random(seed)
    return [Print(_balanced(rng, BITS)) for _ in range(count)]


def with_variants(value: Print, rng: random.Random) -> Print:
    """A query as a judged picture makes it: its hash and 7 others (its rotations')."""
    return Print(value.value, (value.value, *(_balanced(rng, BITS) for _ in range(7))))


def near(value: Print, rng: random.Random, moved: int) -> Print:
    """A copy of a hash with some bits moved, as a re-encoding moves them."""
    ones = [bit for bit in range(BITS) if value.value >> bit & 1]
    zeros = [bit for bit in range(BITS) if not value.value >> bit & 1]
    changed = value.value
    for bit in rng.sample(ones, moved // 2) + rng.sample(zeros, moved // 2):
        changed ^= 1 << bit
    return Print(changed)


def load_sqlite(path: str, prints: list[Print], rejected: dict[int, Print]) -> None:
    """Every picture's own hash (variant 0), and each rejected one's variants too, in the
    layout put_fingerprints keeps."""
    schema = sqlite_store.Store(path=path)
    schema.counters()
    schema.close()
    connection = sqlite3.connect(path)
    slots = range(len(prints[0].bands()))
    insert = (
        f"INSERT INTO prints (sha256, frame, variant, print, hash, rejecting, "
        f"{', '.join(f's{slot}' for slot in slots)}) "
        f"VALUES (?, 0, ?, ?, ?, ?, {', '.join('?' for _ in slots)})"
    )

    def rows(start: int) -> list[tuple[object, ...]]:
        found: list[tuple[object, ...]] = []
        for n in range(start, min(start + BATCH, len(prints))):
            own = rejected.get(n, prints[n])
            found.append(
                (f"{n:064x}", 0, own.to_bytes(), own.entry(), int(n in rejected), *own.bands())
            )
            for variant, value in enumerate(own.variants[1:], start=1):
                turned = Print(value)
                found.append((f"{n:064x}", variant, b"", turned.entry(), 1, *turned.bands()))
        return found

    with connection:
        for start in range(0, len(prints), BATCH):
            connection.executemany(insert, rows(start))
    connection.close()


def load_redis(store: redis_store.Store, prints: list[Print], rejected: dict[int, Print]) -> None:
    """Each slot's hashes written whole, in the layout put_fingerprints keeps: 'pdqx' every
    picture's own hash, 'pdqr' each rotation and mirror of the rejected ones'."""
    client = store._redis()
    for band in range(len(prints[0].bands())):
        for among, entries in (
            ("pdqx", ((n, value.value, n in rejected) for n, value in enumerate(prints))),
            (
                "pdqr",
                ((n, value, True) for n, own in rejected.items() for value in own.variants),
            ),
        ):
            by_field: dict[str, bytearray] = {}
            for n, value, rejecting in entries:
                hashed = Print(value)
                entry = hashed.entry() + bytes.fromhex(f"{n:064x}") + bytes([rejecting])
                by_field.setdefault(redis_index._field(hashed.bands()[band]), bytearray()).extend(
                    entry
                )
            fields = list(by_field.items())
            for start in range(0, len(fields), BATCH):
                client.hset(
                    store._band_key(band, among), mapping=dict(fields[start : start + BATCH])
                )


def lookups(
    store: Store, queries: list[Print], expect_match: bool, only_rejecting: bool
) -> list[float]:
    duplicates = Duplicates(store, SIMILARITY, "benchmark")
    timings = []
    for query in queries:
        started = time.perf_counter()
        found = duplicates.nearest({0: query}, SIMILARITY, 10, only_rejecting)
        timings.append((time.perf_counter() - started) * 1000)
        if bool(found) != expect_match:
            raise RuntimeError(f"lookup of {query} found {found}, expected a match: {expect_match}")
    return timings


def _report(store: Store, name: str, queries: dict[str, list[Print]]) -> None:
    lookups(store, queries["new"][:50], expect_match=False, only_rejecting=True)
    for label, kind, only_rejecting, expect in (
        ("first view, new picture", "new", True, False),
        ("first view, copy of a rejected one", "copy", True, True),
        ("rejection, no copy", "new", False, False),
        ("rejection, a copy indexed", "indexed", False, True),
    ):
        timings = lookups(store, queries[kind], expect, only_rejecting)
        print(
            f"  {name:7s} {label:36s} p50 {statistics.median(timings):6.2f} ms"
            f"   p99 {percentile(timings, 0.99):6.2f} ms"
        )


def index(size: int, count: int, share: float, work: Path, kinds: set[str]) -> None:
    print(
        f"index: {size:,} judged pictures, {share:.0%} of them rejected, "
        f"lookups at similarity {SIMILARITY:g}, load average {os.getloadavg()[0]:.1f}"
    )
    started = time.perf_counter()
    prints = random_prints(size, seed=1)
    rng = random.Random(2)
    rejected = {
        n: with_variants(prints[n], rng) for n in rng.sample(range(size), int(size * share))
    }
    chosen = list(rejected.values())
    queries = {
        "new": [with_variants(value, rng) for value in random_prints(count, seed=3)],
        # A copy of a rejected picture as it was, mirrored or rotated: its own hash near
        # one of the rejected picture's variants.
        "copy": [
            with_variants(
                near(
                    Print(rng.choice(rng.choice(chosen).variants)), rng, rng.choice([0, 4, 8, 16])
                ),
                rng,
            )
            for _ in range(count)
        ],
        # A rejected picture whose copy was judged before it: one of its variants near
        # that copy's own hash.
        "indexed": [
            Print(
                value.value,
                (
                    value.value,
                    near(prints[rng.randrange(size)], rng, 8).value,
                    *with_variants(value, rng).variants[2:],
                ),
            )
            for value in random_prints(count, seed=4)
        ],
    }
    buckets = Counter(value.bands()[0] for value in prints)
    probed = sum(map(len, probes([Print(prints[0].value)], fingerprint.within(SIMILARITY))))
    print(
        f"  generated in {time.perf_counter() - started:.0f} s; entries per slot value: "
        f"mean {size / 2**BAND_BITS:.1f}, largest {max(buckets.values())}; slot values a "
        f"first view probes: {probed}, a rejection: {probed * 8}"
    )

    if "sqlite" in kinds:
        _sqlite(work, prints, rejected, queries)
    if "redis" in kinds:
        _redis(work, prints, rejected, queries)


def _sqlite(
    work: Path, prints: list[Print], rejected: dict[int, Print], queries: dict[str, list[Print]]
) -> None:
    size = len(prints)
    path = str(work / "index.sqlite3")
    started = time.perf_counter()
    load_sqlite(path, prints, rejected)
    loaded = time.perf_counter() - started
    sqlite = sqlite_store.Store(path=path)
    _report(sqlite, "SQLite", queries)
    sqlite.close()
    print(
        f"  SQLite  file {os.path.getsize(path) / 2**20:.0f} MiB "
        f"({os.path.getsize(path) / size:.0f} bytes a judged picture), loaded in {loaded:.0f} s"
    )


def _redis(
    work: Path, prints: list[Print], rejected: dict[int, Print], queries: dict[str, list[Print]]
) -> None:
    size = len(prints)
    # redis-py parses replies with hiredis when it is installed (pip install hiredis).
    parser = "hiredis" if importlib.util.find_spec("hiredis") else "redis-py's own parser"
    with RedisServer(work / "redis") as server:
        store = redis_store.Store(url=server.url, prefix="bench:", timeout=5.0)
        client = store._redis()
        # Loading a million entries, not durability, is measured here.
        client.config_set("appendonly", "no")
        before = int(client.info("memory")["used_memory"])
        started = time.perf_counter()
        load_redis(store, prints, rejected)
        loaded = time.perf_counter() - started
        used = int(client.info("memory")["used_memory"]) - before
        _report(store, "Redis", queries)
        version = client.info("server")["redis_version"]
        print(
            f"  Redis   {used / 2**20:.0f} MiB ({used / size:.0f} bytes a judged picture, "
            f"Redis {version}, {parser}), loaded in {loaded:.0f} s"
        )
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pictures", type=int, default=100, help="pictures per family")
    parser.add_argument("--index", type=int, default=1_000_000, help="fingerprints indexed")
    parser.add_argument("--lookups", type=int, default=2000, help="lookups of each kind")
    parser.add_argument(
        "--rejected", type=float, default=0.05, help="share of judged pictures rejected"
    )
    parser.add_argument(
        "--stores", default="sqlite,redis", help="stores whose index is measured, comma-separated"
    )
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-index", action="store_true")
    arguments = parser.parse_args()
    if not arguments.skip_quality:
        quality(arguments.pictures)
    if not arguments.skip_index:
        with tempfile.TemporaryDirectory() as work:
            index(
                arguments.index,
                arguments.lookups,
                arguments.rejected,
                Path(work),
                set(arguments.stores.split(",")),
            )


if __name__ == "__main__":
    main()
