"""Print what a hash bank of a million PDQ hashes costs a process: reading it, the memory
each hash takes, and lookup latency.

    make bench SCRIPT=hash_banks ARGS='--hashes 1000000 --lookups 2000'

A bank file of --hashes random hashes (each with a short note) is written, read through
banks.HashBanks as a Thumbor process reads it, and looked up --lookups times with 8
variants a lookup (a picture's rotations and mirrors): half of them a copy of a listed
hash with 20 bits changed (a match), half new hashes (no match). Memory is measured with
tracemalloc (Python objects and numpy arrays alike).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hashes", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=2000)
    arguments = parser.parse_args()
    rng = random.Random(20261206)
    values = [rng.getrandbits(256) for _ in range(arguments.hashes)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bank.txt"
        path.write_text("".join(f"{pdq.hex_of(v)},case {i}\n" for i, v in enumerate(values)))
        config = banks.BankConfig("bench", str(path), banks.REJECT)
        tracemalloc.start()
        started = time.perf_counter()
        bank = banks.HashBanks([config], pdq.MATCH_DISTANCE, 3600.0)
        bank.refresh(force=True)
        read_seconds = time.perf_counter() - started
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    latencies: list[float] = []
    found = 0
    for lookup in range(arguments.lookups):
        if lookup % 2 == 0:
            query = values[rng.randrange(len(values))]
            for bit in rng.sample(range(256), 20):
                query ^= 1 << bit
        else:
            query = rng.getrandbits(256)
        variants = (query, *(rng.getrandbits(256) for _ in range(7)))
        hashed = pdq.Hash(query, 100, variants)
        started = time.perf_counter()
        match = bank.match([hashed])
        latencies.append((time.perf_counter() - started) * 1000)
        found += match is not None
    print(f"hash bank of {arguments.hashes:,} PDQ hashes, {arguments.lookups:,} lookups")
    print(f"read and indexed in {read_seconds:.1f} s")
    print(f"memory: {held / arguments.hashes:.0f} bytes a hash ({held / 2**20:.0f} MiB)")
    print(
        f"lookup (8 variants): p50 {percentile(latencies, 0.5):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms"
    )
    print(f"matched: {found} of {arguments.lookups} (expected {(arguments.lookups + 1) // 2})")


if __name__ == "__main__":
    main()
