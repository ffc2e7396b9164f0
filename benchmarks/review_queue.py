"""Print how fast the review queues answer with many decisions in the store.

    python benchmarks/review_queue.py [--decisions 100000] [--rounds 20]

Decisions are saved through the SQLite store's own save() (a quarter approved, a
quarter rejected, half pending, one pending in ten marked as a human's, to filter by),
then a real Thumbor answers GET /moderation/images over HTTP, as the review page asks:
the first page (100 cards) of each queue, the pending queue filtered by source and by
URL, and the counts the tabs show. Figures are the median and the worst of the rounds,
in milliseconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import ThumborServer, base_config  # noqa: E402
from thumbor_rekognition.decision import Decision, Event, Source, Status  # noqa: E402
from thumbor_rekognition.stores.sqlite import Store  # noqa: E402

TOKEN = "benchmark-token-0123456789"
QUERIES = {
    "pending, first page": "queue=pending",
    "rejected, first page": "queue=rejected",
    "rejected, oldest first": "queue=rejected&order=oldest",
    "approved, first page": "queue=approved",
    "duplicates (none), first page": "queue=duplicates",
    "pending, source=human": "queue=pending&source=human",
    "pending, URL search": "queue=pending&q=000123",
}


def fill(path: Path, decisions: int) -> float:
    """Save the decisions; the seconds it took."""
    store = Store(path=str(path))
    started = time.perf_counter()
    for index in range(decisions):
        key = f"cdn.example.com/photos/{index:08d}.jpg"
        status = [Status.PENDING, Status.APPROVED, Status.PENDING, Status.REJECTED][index % 4]
        source = Source.MANUAL if index % 20 == 2 else Source.AUTO
        decision = Decision(
            key=key,
            url=key,
            sha256=hashlib.sha256(key.encode()).hexdigest(),
            status=status,
            source=source,
        )
        store.save(decision, Event(status, source, "benchmark", ""))
    store.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "images").mkdir()
        seconds = fill(root / "decisions.sqlite3", arguments.decisions)
        print(f"{arguments.decisions:,} decisions saved through save() in {seconds:.1f} s")
        config = base_config(root, root / "images", None)
        config["MODERATION_ADMIN_TOKEN"] = TOKEN
        thumbor = ThumborServer(root, config).start()
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            for name, query in QUERIES.items():
                times = []
                for _ in range(arguments.rounds):
                    started = time.perf_counter()
                    response = thumbor.get(f"/moderation/images?{query}&limit=100", headers)
                    times.append((time.perf_counter() - started) * 1000)
                page = json.loads(response.body)
                print(
                    f"{name:32s} {len(page['images']):3d} cards, order {page['order']:6s} "
                    f"read {page['scanned']:5d}: median {statistics.median(times):6.1f} ms, "
                    f"worst {max(times):6.1f} ms"
                )
            print(f"counts: {json.dumps(page['counts'])}")
        finally:
            thumbor.stop()


if __name__ == "__main__":
    main()
