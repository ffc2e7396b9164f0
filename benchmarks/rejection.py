"""Print what matching backwards costs a rejection: the store calls and the time it takes
to find and reject the approved near-copies of a picture just rejected, with every judged
picture's fingerprint in the index.

    python benchmarks/rejection.py [--pictures 10000000] [--rejections 300] [--stores sqlite,redis]

--pictures synthetic judged pictures (one random PDQ hash each, as a still picture has;
random hashes spread over the slot values as real ones do) are loaded into the
index of the SQLite store and of the Redis store (a real redis-server on this machine).
Then --rejections pictures among them are rejected in turn, half of them with two
approved copies planted beforehand (a few bits away, as re-encodings are), and
Duplicates.catch runs as the moderator runs it after a rejection: it reads the rejected
picture's fingerprints and decisions, looks its 8 variants up in the index (17 values
a slot each at the default similarity), and rejects each approved copy through the
store's compare-and-set. Reported: store calls a rejection, index entries the lookup
reads, time per rejection (p50, p99) without copies and with two, and the space the
index takes. The time is the whole catch, store round trips included, on this machine.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import percentile  # noqa: E402
from benchmarks.duplicates import near, with_variants  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from thumbor_rekognition.config import DEFAULTS  # noqa: E402
from thumbor_rekognition.decision import Decision, Event, Source, Status  # noqa: E402
from thumbor_rekognition.duplicates import Duplicates  # noqa: E402
from thumbor_rekognition.fingerprint import BAND_BITS, BANDS, Print  # noqa: E402
from thumbor_rekognition.stores import (  # noqa: E402
    Store,
    redis_index,
    sqlite_schema,
)
from thumbor_rekognition.stores import redis as redis_store  # noqa: E402
from thumbor_rekognition.stores import sqlite as sqlite_store  # noqa: E402

SIMILARITY = float(DEFAULTS["MODERATION_DUPLICATE_SIMILARITY"])
BATCH = 50_000
COPIES = 2


def sha_of(number: int) -> str:
    """A synthetic picture's content hash: spread as real ones are (the stores' hash
    indexes key on its first bytes)."""
    return hashlib.sha256(number.to_bytes(8, "big")).hexdigest()


def random_prints(count: int, seed: int) -> list[Print]:
    rng = random.Random(seed)
    return [Print(rng.getrandbits(256)) for _ in range(count)]


class Counting:
    """A store whose calls are counted by method, and the index entries lookups read."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: collections.Counter[str] = collections.Counter()
        self.candidates = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def counted(*args: Any, **keywords: Any) -> Any:
            self.calls[name] += 1
            if name == "indexed_near":
                probes, close = args

                def seen(value: int) -> bool:
                    self.candidates += 1
                    return bool(close(value))

                return method(probes, seen, **keywords)
            return method(*args, **keywords)

        return counted


def load_sqlite(path: str, prints: list[Print]) -> float:
    """Every picture's row, the band indexes built after the rows; seconds taken."""
    started = time.perf_counter()
    schema = sqlite_store.Store(path=path)
    schema.counters()
    schema.close()
    connection = sqlite3.connect(path, isolation_level=None)
    # Only judged frames' own hashes are loaded: their index is built once they are in.
    index, rows_held = sqlite_schema.SLOT_INDEXES[False]
    for band in range(BANDS):
        connection.execute(f"DROP INDEX {index}{band}")
    connection.execute("BEGIN")
    insert = (
        f"INSERT INTO prints (sha256, frame, variant, print, hash, rejecting, "
        f"{', '.join(f's{band}' for band in range(BANDS))}) "
        f"VALUES (?, 0, 0, ?, ?, 0, {', '.join('?' for _ in range(BANDS))})"
    )
    for start in range(0, len(prints), BATCH):
        connection.executemany(
            insert,
            [
                (sha_of(start + n), value.to_bytes(), value.entry(), *value.bands())
                for n, value in enumerate(prints[start : start + BATCH])
            ],
        )
    connection.execute("COMMIT")
    for band in range(BANDS):
        connection.execute(
            f"CREATE INDEX {index}{band} ON prints (s{band}, hash) WHERE {rows_held}"
        )
    connection.close()
    return time.perf_counter() - started


def load_redis(store: redis_store.Store, prints: list[Print]) -> float:
    """Each band's hash written whole, in the layout put_fingerprints keeps; seconds taken."""
    started = time.perf_counter()
    client = store._redis()
    for band in range(BANDS):
        entries: dict[str, bytearray] = {}
        for n, value in enumerate(prints):
            entry = value.entry() + bytes.fromhex(sha_of(n)) + b"\x00"
            entries.setdefault(redis_index._field(value.bands()[band]), bytearray()).extend(entry)
        fields = list(entries.items())
        del entries
        for start in range(0, len(fields), 2000):
            client.hset(store._band_key(band), mapping=dict(fields[start : start + 2000]))
    return time.perf_counter() - started


def judged(number: int, status: Status, source: Source = Source.AUTO) -> Decision:
    return Decision(
        key=f"host/{number}.jpg",
        url=f"http://host/{number}.jpg",
        sha256=sha_of(number),
        status=status,
        source=source,
    )


def reject_all(
    store: Store, prints: list[Print], rejections: int, seed: int
) -> dict[str, list[tuple[float, int, int, int]]]:
    """Plant copies, reject pictures one by one and catch their copies: per kind, each
    rejection's (milliseconds, store calls, index entries read, copies rejected)."""
    rng = random.Random(seed)
    size = len(prints)
    chosen = rng.sample(range(size), rejections)
    event = Event(Status.APPROVED, Source.AUTO, "benchmark", "")
    planted: dict[int, int] = {}
    extra = size
    for index, number in enumerate(chosen):
        store.save(judged(number, Status.APPROVED), event)
        if index % 2:
            continue
        for _ in range(COPIES):
            copy = near(prints[number], rng, rng.choice([4, 8]))
            store.put_fingerprints(sha_of(extra), {0: copy}, ())
            store.save(judged(extra, Status.APPROVED), event)
            extra += 1
        planted[number] = COPIES
    results: dict[str, list[tuple[float, int, int, int]]] = {"no copies": [], "two copies": []}
    reject = Event(Status.REJECTED, Source.MANUAL, "benchmark", "reported")
    for number in chosen:
        rejected = judged(number, Status.REJECTED, Source.MANUAL)
        store.save(rejected, reject)
        query = with_variants(prints[number], rng)
        store.put_fingerprints(rejected.sha256, {0: query}, {0})
        counting = Counting(store)
        duplicates = Duplicates(counting, SIMILARITY, "benchmark")  # type: ignore[arg-type]
        started = time.perf_counter()
        caught = duplicates.catch(rejected)
        elapsed = (time.perf_counter() - started) * 1000
        if len(caught) != planted.get(number, 0):
            raise RuntimeError(f"{rejected.key}: caught {len(caught)}, planted {planted}")
        kind = "two copies" if number in planted else "no copies"
        calls = sum(counting.calls.values())
        results[kind].append((elapsed, calls, counting.candidates, len(caught)))
    return results


def report(name: str, results: dict[str, list[tuple[float, int, int, int]]]) -> None:
    for kind, rows in results.items():
        timings = [row[0] for row in rows]
        calls = statistics.mean(row[1] for row in rows)
        read = statistics.mean(row[2] for row in rows)
        print(
            f"  {name:7s} rejection, {kind:10s}: p50 {statistics.median(timings):7.2f} ms"
            f"  p99 {percentile(timings, 0.99):7.2f} ms  {calls:4.1f} store calls"
            f"  {read:8.0f} index entries read"
        )


def run(size: int, rejections: int, names: list[str], work: Path) -> None:
    started = time.perf_counter()
    prints = random_prints(size, seed=1)
    print(
        f"{size:,} judged pictures in the index, {rejections} rejections at similarity "
        f"{SIMILARITY:g} (generated in {time.perf_counter() - started:.0f} s; "
        f"{size / 2**BAND_BITS:.0f} entries per slot value on average)"
    )
    if "sqlite" in names:
        path = str(work / "index.sqlite3")
        loaded = load_sqlite(path, prints)
        store = sqlite_store.Store(path=path)
        report("SQLite", reject_all(store, prints, rejections, seed=2))
        store.close()
        print(
            f"  SQLite  file {os.path.getsize(path) / 2**20:,.0f} MiB "
            f"({os.path.getsize(path) / size:.0f} bytes a picture), loaded in {loaded:.0f} s"
        )
        os.remove(path)
    if "redis" in names:
        with RedisServer(work / "redis") as server:
            store = redis_store.Store(url=server.url, prefix="bench:", timeout=30.0)
            client = store._redis()
            # Loading the index, not durability, is measured here.
            client.config_set("appendonly", "no")
            before = int(client.info("memory")["used_memory"])
            loaded = load_redis(store, prints)
            used = int(client.info("memory")["used_memory"]) - before
            report("Redis", reject_all(store, prints, rejections, seed=2))
            print(
                f"  Redis   index {used / 2**20:,.0f} MiB ({used / size:.0f} bytes a picture, "
                f"Redis {client.info('server')['redis_version']}), loaded in {loaded:.0f} s"
            )
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pictures", type=int, default=10_000_000)
    parser.add_argument("--rejections", type=int, default=300)
    parser.add_argument("--stores", default="sqlite,redis")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        run(arguments.pictures, arguments.rejections, arguments.stores.split(","), Path(work))


if __name__ == "__main__":
    main()
