"""Print what a hash bank of a million PDQ hashes costs a process: reading it, the memory
each hash takes, and lookup latency, of the index alone and of a whole bank lookup.

    make bench SCRIPT=hash_banks ARGS='--hashes 1000000 --lookups 2000'

A bank file of --hashes random hashes (each with a short note) is written, read through
banks.HashBanks as a Thumbor process reads it, and looked up --lookups times with 8
variants a lookup (a picture's rotations and mirrors): half of them a copy of a listed
hash with 20 bits changed (a match), half new hashes (no match). Timed twice: the
in-memory index alone (PdqIndex.nearest, the variants packed beforehand), then the whole
lookup a judgement makes (HashBanks.match: packing the variants, the index, reading the
entry found), in elapsed time and in the CPU time of the thread (which waiting for a CPU
on a busy machine does not count). Memory is measured with tracemalloc (Python objects
and numpy arrays alike) for the whole bank, and from the arrays for the index. The load
average of the machine is printed before and after: on a shared machine the p99 follows
it. Where the faiss package is installed (it is not a dependency), the same lookups go
through FAISS's binary multi-hash index too (16 tables of 16 bits, one bit flipped), for
comparison.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import percentile  # noqa: E402
from thumbor_rekognition import banks, pdq  # noqa: E402
from thumbor_rekognition.pdq_index import packed  # noqa: E402


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def _queries(values: list[int], count: int, rng: random.Random) -> list[pdq.Hash]:
    queries = []
    for lookup in range(count):
        if lookup % 2 == 0:
            query = values[rng.randrange(len(values))]
            for bit in rng.sample(range(256), 20):
                query ^= 1 << bit
        else:
            query = rng.getrandbits(256)
        variants = (query, *(rng.getrandbits(256) for _ in range(7)))
        queries.append(pdq.Hash(query, 100, variants))
    return queries


def _summary(name: str, latencies: list[float]) -> str:
    return (
        f"{name}: p50 {percentile(latencies, 0.5):.2f} ms, "
        f"p99 {percentile(latencies, 0.99):.2f} ms, max {max(latencies):.2f} ms"
    )


def _faiss(values: list[int], queries: list[pdq.Hash]) -> None:
    """The same lookups through faiss.IndexBinaryMultiHash, when faiss is installed."""
    try:
        import faiss  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print("faiss: not installed, not measured")
        return
    import numpy as np

    def rows(hashes: list[int]) -> np.ndarray:  # type: ignore[type-arg]
        data = b"".join(value.to_bytes(32, "big") for value in hashes)
        return np.frombuffer(data, dtype=np.uint8).reshape(len(hashes), 32)

    # One thread, as a lookup in a Thumbor process gets: its CPU time is then all of it.
    faiss.omp_set_num_threads(1)
    codes = rows(values)
    started = time.perf_counter()
    index = faiss.IndexBinaryMultiHash(256, 16, 16)
    index.nflip = 1
    index.add(codes)
    built = time.perf_counter() - started
    latencies: list[float] = []
    cpu: list[float] = []
    found = 0
    for query in queries:
        variants = rows(list(query.variants))
        started, started_cpu = time.perf_counter(), time.thread_time()
        distances, _ = index.search(variants, 1)
        cpu.append((time.thread_time() - started_cpu) * 1000)
        latencies.append((time.perf_counter() - started) * 1000)
        found += bool((distances[:, 0] <= pdq.MATCH_DISTANCE).any())
    print(f"faiss {faiss.__version__} IndexBinaryMultiHash(256, 16 tables, 16 bits, nflip 1)")
    # Its memory is allocated outside Python (tracemalloc does not see it): not measured.
    print(f"  built in {built:.1f} s")
    print(_summary("  lookup", latencies))
    print(_summary("  its CPU time", cpu))
    print(f"  matched: {found} of {len(queries)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hashes", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=2000)
    arguments = parser.parse_args()
    print(f"load average before: {_load()}")
    rng = random.Random(20261206)
    values = [rng.getrandbits(256) for _ in range(arguments.hashes)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bank.txt"
        path.write_text("".join(f"{pdq.hex_of(v)},case {i}\n" for i, v in enumerate(values)))
        config = banks.BankConfig("bench", str(path), banks.REJECT)
        gc.collect()
        tracemalloc.start()
        started = time.perf_counter()
        bank = banks.HashBanks([config], pdq.MATCH_DISTANCE, 3600.0)
        bank.refresh(force=True)
        read_seconds = time.perf_counter() - started
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    index = bank._banks[0].read.index
    queries = _queries(values, arguments.lookups, rng)
    packed_queries = [packed(list(query.variants)) for query in queries]
    for variants in packed_queries[:50]:
        index.nearest(variants, pdq.MATCH_DISTANCE)

    alone: list[float] = []
    alone_cpu: list[float] = []
    found_alone = 0
    for variants in packed_queries:
        started, started_cpu = time.perf_counter(), time.thread_time()
        nearest = index.nearest(variants, pdq.MATCH_DISTANCE)
        alone_cpu.append((time.thread_time() - started_cpu) * 1000)
        alone.append((time.perf_counter() - started) * 1000)
        found_alone += nearest is not None
    whole: list[float] = []
    whole_cpu: list[float] = []
    found = 0
    for query in queries:
        started, started_cpu = time.perf_counter(), time.thread_time()
        match = bank.match([query])
        whole_cpu.append((time.thread_time() - started_cpu) * 1000)
        whole.append((time.perf_counter() - started) * 1000)
        found += match is not None

    count = arguments.hashes
    print(f"hash bank of {count:,} PDQ hashes, {arguments.lookups:,} lookups of 8 variants")
    print(f"read and indexed in {read_seconds:.1f} s")
    print(
        f"memory: {held / count:.0f} bytes a hash for the whole bank ({held / 2**20:.0f} MiB), "
        f"of which the index {index.nbytes / count:.0f} ({index.nbytes / 2**20:.0f} MiB)"
    )
    print(_summary("lookup, index alone", alone))
    print(_summary("  its CPU time", alone_cpu))
    print(_summary("lookup, HashBanks.match", whole))
    print(_summary("  its CPU time", whole_cpu))
    expected = (arguments.lookups + 1) // 2
    print(f"matched: {found_alone} and {found} of {arguments.lookups} (expected {expected})")
    _faiss(values, queries)
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
