"""Print what one decision costs in the DynamoDB store: bytes of items, and requests.

    python benchmarks/dynamodb.py

Saves two typical decisions through the real store into moto's server (a picture
without labels, approved; a picture with two labels, rejected), reads back every item
the store wrote, and sizes each by DynamoDB's rules (attribute names and values: a
string or binary its bytes, a number one byte per two significant digits and one more).
Also counts the requests and item writes of one save, and the capacity units they take
on an on-demand table (a write unit per started kB of each item written, a
strongly consistent read unit per started 4 kB read); then, through a real Thumbor
node, the DynamoDB requests of a new picture's first request, of the same picture
asked again, and of the change feed each process polls. Last, the index of rejected
pictures: the requests and capacity units of one fingerprint put and of one lookup at
the default similarity, in a table holding some thousands of indexed pictures.
"""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import logging  # noqa: E402

from moto.dynamodb.responses import DynamoHandler  # noqa: E402

from tests.conftest import picture  # noqa: E402
from tests.fakes.rekognition import FakeRekognition  # noqa: E402
from tests.moto_server import aws_client, moto_server  # noqa: E402
from tests.servers import ThumborServer, base_config  # noqa: E402
from thumbor_rekognition import fingerprint, stores  # noqa: E402
from thumbor_rekognition.decision import Decision, Event, Label, Reason, Source, Status  # noqa: E402
from thumbor_rekognition.duplicates import probes  # noqa: E402
from thumbor_rekognition.fingerprint import Print  # noqa: E402
from thumbor_rekognition.stores import dynamodb, dynamodb_items  # noqa: E402

# DynamoDB bills this much storage on top of each item's own size.
ITEM_OVERHEAD = 100
KINDS = {
    "D": "decision",
    "H": "content-hash index",
    "S": "status index",
    "F": "change feed (expires after an hour)",
    "C": "counters (shared by all decisions)",
    "L": "lease",
}


def attribute_size(name: str, value: dict[str, Any]) -> int:
    """DynamoDB's size of one attribute: its name and its value."""
    ((kind, data),) = value.items()
    size = len(name.encode("utf-8"))
    if kind == "S":
        return size + len(data.encode("utf-8"))
    if kind == "B":
        return size + len(data)
    if kind == "N":
        digits = data.lstrip("-").replace(".", "").strip("0") or "0"
        return size + math.ceil(len(digits) / 2) + 1
    if kind in ("BOOL", "NULL"):
        return size + 1
    if kind == "BS":
        return size + sum(len(element) for element in data)
    if kind == "NS":
        return size + sum(attribute_size("", {"N": element}) for element in data)
    if kind == "M":
        # 3 bytes for the map, and 1 more for each of its elements.
        return size + 3 + sum(1 + attribute_size(k, v) for k, v in data.items())
    raise ValueError(f"attribute type {kind} not sized here")


def item_size(item: dict[str, Any]) -> int:
    return sum(attribute_size(name, value) for name, value in item.items())


def typical(key: str, labels: bool) -> Decision:
    now = time.time()
    base = Decision(
        key=key,
        url="https://" + key,
        sha256=os.urandom(32).hex(),
        status=Status.APPROVED,
        source=Source.AUTO,
        backend="rekognition",
        model_version="7.0",
        policy="5f0c3a9e1b7d2c46",
        min_confidence=50.0,
        width=1600,
        height=1067,
        created_at=now,
        updated_at=now,
    )
    if not labels:
        return base
    return base.replace(
        status=Status.REJECTED,
        labels=(
            Label("Explicit", "", 1, 98.7312469482422),
            Label("Explicit Nudity", "Explicit", 2, 98.7312469482422),
        ),
        reasons=(Reason("Explicit Nudity", "Explicit", 98.7312469482422, 0.5, "explicit"),),
    )


def event_for(decision: Decision) -> Event:
    note = (
        "rekognition 7.0: Explicit Nudity 98.7 > 0.5"
        if decision.labels
        else "rekognition 7.0: nothing above thresholds"
    )
    return Event(decision.status, decision.source, "thumbor-rekognition", note)


class Counting(dynamodb.Store):
    """The store, counting its requests and the items they write."""

    requests: Counter[str]
    written: list[int]

    def _do(self, operation: str, **arguments: Any) -> dict[str, Any]:
        self.requests[operation] += 1
        if operation == "put_item":
            self.written.append(item_size(arguments["Item"]))
        elif operation == "batch_write_item":
            for writes in arguments["RequestItems"].values():
                for write in writes:
                    put = write.get("PutRequest")
                    self.written.append(item_size(put["Item"]) if put else 1)
        elif operation == "update_item":
            self.written.append(100)  # A counter item: a few attributes, well under 1 kB.
        return super()._do(operation, **arguments)


SEEN: Counter[str] = Counter()


def count_requests() -> None:
    """Count every DynamoDB request moto's server answers, by operation."""
    answer = DynamoHandler.call_action

    def counted(self: DynamoHandler) -> Any:
        target = self.headers.get("X-Amz-Target") or ""
        SEEN[target.split(".")[-1]] += 1
        return answer(self)

    DynamoHandler.call_action = counted  # type: ignore[method-assign]


def through_thumbor(endpoint: str) -> None:
    """DynamoDB requests of one Thumbor node (one process) for a new picture."""
    with tempfile.TemporaryDirectory() as folder, FakeRekognition() as fake:
        root = Path(folder)
        images = root / "images"
        images.mkdir()
        (images / "new.png").write_bytes(picture((20, 40, 210)))
        config = base_config(root, images, fake.url)
        del config["MODERATION_SQLITE_PATH"]
        config.update(
            {
                "MODERATION_DECISION_STORE": "thumbor_rekognition.stores.dynamodb",
                "MODERATION_DYNAMODB_TABLE": f"bench-{uuid.uuid4().hex[:8]}",
                "MODERATION_DYNAMODB_ENDPOINT_URL": endpoint,
                "MODERATION_DYNAMODB_CREATE_TABLE": True,
                "MODERATION_STORE_TIMEOUT_SECONDS": 5.0,
            }
        )
        node = ThumborServer(root, config).start()
        try:
            node.get("/healthcheck")
            time.sleep(3)  # Start-up done: table made, change feed polling.
            steps = []
            for name, path in (
                ("first request of a new picture", "/unsafe/100x80/new.png"),
                ("same picture, another size, decision in memory", "/unsafe/90x70/new.png"),
                ("same request again (a result-storage hit)", "/unsafe/90x70/new.png"),
            ):
                SEEN.clear()
                node.get(path)
                time.sleep(0.2)
                steps.append((name, dict(SEEN)))
            SEEN.clear()
            time.sleep(10)
            idle = dict(SEEN)
        finally:
            node.stop()
    print("\nDynamoDB requests of one Thumbor process (MODERATION_CACHE_TTL_SECONDS 0.2)")
    for name, seen in steps:
        print(f"  {name}: {sum(seen.values())} ({_listed(seen)})")
    print(f"  idle, 10 s: {sum(idle.values())} ({_listed(idle)}): the change-feed polls")


def _listed(seen: dict[str, int]) -> str:
    return ", ".join(f"{count} {name}" for name, count in sorted(seen.items())) or "none"


INDEXED = 2_000


def index_costs(endpoint: str) -> None:
    """Requests and capacity units of the index of rejected pictures."""
    table = f"bench-{uuid.uuid4().hex[:8]}"
    store = Counting(table=table, endpoint_url=endpoint, create_table=True, timeout=5.0)
    store.requests, store.written = Counter(), []
    randomness = random.Random(7)

    def some_print() -> Print:
        return Print(randomness.getrandbits(256))

    def some_query() -> Print:
        variants = tuple(randomness.getrandbits(256) for _ in range(8))
        return Print(variants[0], variants)

    for _ in range(INDEXED):
        store.put_fingerprints(os.urandom(32).hex(), {0: some_print()}, rejecting={0})
    client = aws_client("dynamodb", endpoint)
    bands = []
    for page in client.get_paginator("scan").paginate(TableName=table):
        bands += [item_size(item) for item in page["Items"] if item["pk"]["S"].startswith("J#")]

    print(f"\nIndex of judged pictures ({INDEXED:,} indexed pictures, random fingerprints)")
    print(
        f"  slot items: {len(bands):,}, {min(bands)} to {max(bands)} bytes "
        f"(an entry adds {stores.ENTRY_BYTES} bytes)"
    )
    for title, rejecting in (("a rejecting frame", {0}), ("an approved picture", set())):
        store.requests, store.written = Counter(), []
        sha256 = os.urandom(32).hex()
        store.put_fingerprints(sha256, {0: some_query()}, rejecting=rejecting)
        record = client.get_item(TableName=table, Key=dynamodb_items._key("K#" + sha256, "p"))[
            "Item"
        ]
        updates = store.requests["update_item"]
        # An update is billed for the larger of the item before and after: under 1 kB here.
        write_units = math.ceil(item_size(record) / 1024) + updates * math.ceil(max(bands) / 1024)
        print(
            f"  put of a still picture's fingerprint, {title}: {sum(store.requests.values())} "
            f"requests ({_listed(store.requests)}); record {item_size(record)} bytes; "
            f"1 strongly consistent read unit, {write_units} write units"
        )
    for similarity in (0.9, 1 - 31 / 256):
        within = fingerprint.within(similarity)
        query = some_query()
        for title, asked, rejecting_only in (
            ("a first view (its own hash, rejecting frames)", [Print(query.value)], True),
            ("a rejection (its 8 variants, every frame)", [query], False),
        ):
            store.requests = Counter()
            wanted = probes(asked, within)
            store.indexed_near(wanted, lambda value: True, rejecting_only=rejecting_only)
            keys = sum(len(values) for values in wanted)
            # Eventually consistent: half a read unit per item of at most 4 kB, found or not.
            read_units = keys * math.ceil(max(bands) / 4096) / 2
            print(
                f"  lookup of {title} at similarity {similarity:.3f} (within {within} bits): "
                f"{keys} slot items in {sum(store.requests.values())} requests "
                f"({_listed(store.requests)}), {read_units:g} read units (eventually consistent)"
            )
    store.close()


def main() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with moto_server() as endpoint:
        print("DynamoDB store: bytes per decision (DynamoDB item size: names + values)")
        for labels in (False, True):
            table = f"bench-{uuid.uuid4().hex[:8]}"
            store = Counting(table=table, endpoint_url=endpoint, create_table=True, timeout=5.0)
            store.requests, store.written = Counter(), []
            store.get("warm.example/up.jpg")
            store.requests, store.written = Counter(), []
            decision = typical("images.example.com/photos/2024/06/a1b2c3d4e5.jpg", labels)
            store.save(decision, event_for(decision))
            requests, written = store.requests, store.written
            items = aws_client("dynamodb", endpoint).scan(TableName=table)["Items"]
            sizes: dict[str, list[int]] = {}
            for item in items:
                kind = item["pk"]["S"].split("#")[0]
                label = KINDS.get(kind, kind)
                if kind == "D":
                    label = "decision" if item["sk"]["S"] == "d" else "history entry"
                sizes.setdefault(label, []).append(item_size(item))
            kept = [
                size
                for label, found in sizes.items()
                if label in ("decision", "history entry", "content-hash index", "status index")
                for size in found
            ]
            title = "two labels, rejected" if labels else "no labels, approved"
            print(f"\n  picture with {title}:")
            for label, found in sizes.items():
                print(f"    {label:38s} {', '.join(str(size) for size in found)} bytes")
            print(
                f"    kept per decision: {sum(kept)} bytes in {len(kept)} items "
                f"({sum(kept) + ITEM_OVERHEAD * len(kept)} bytes of billed storage with "
                f"DynamoDB's {ITEM_OVERHEAD} bytes per item)"
            )
            write_units = sum(math.ceil(size / 1024) for size in written)
            print(
                f"    one save: {sum(requests.values())} requests "
                f"({', '.join(f'{n} {op}' for op, n in sorted(requests.items()))}), "
                f"{len(written)} item writes = {write_units} write units, "
                f"1 strongly consistent read = 1 read unit"
            )
            store.close()
        index_costs(endpoint)
        count_requests()
        through_thumbor(endpoint)


if __name__ == "__main__":
    main()
